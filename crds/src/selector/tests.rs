use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn parse(s: &str) -> Selector {
    Selector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

/// A worker node as kubelet labels it.
fn worker() -> BTreeMap<String, String> {
    labels(&[
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/hostname", "node-1"),
        ("node-role.kubernetes.io/worker", ""),
        ("location", "rack1"),
        ("zone", "eu-west-1a"),
    ])
}

#[test]
fn selectors_match_like_calico() {
    let node = worker();
    let bare = labels(&[]);
    // (selector, matches the worker, matches a node without labels)
    let table: &[(&str, bool, bool)] = &[
        ("", true, true),
        ("   ", true, true),
        ("all()", true, true),
        ("!all()", false, false),
        ("has(location)", true, false),
        ("!has(location)", false, true),
        ("has(node-role.kubernetes.io/worker)", true, false),
        ("has(node-role.kubernetes.io/control-plane)", false, false),
        ("location == \"rack1\"", true, false),
        ("location == 'rack1'", true, false),
        ("location == \"rack2\"", false, false),
        // `!=` and `not in` match objects without the label, as in Calico.
        ("location != \"rack2\"", true, true),
        ("location != \"rack1\"", false, true),
        ("location in {\"rack1\", \"rack2\"}", true, false),
        ("location in {}", false, false),
        ("location not in {\"rack1\"}", false, true),
        ("location not in {\"rack3\", 'rack4',}", true, true),
        ("zone contains \"west\"", true, false),
        ("zone starts with \"eu-\"", true, false),
        ("zone ends with \"1a\"", true, false),
        ("zone ends with \"1b\"", false, false),
        ("kubernetes.io/os == 'linux' && has(node-role.kubernetes.io/worker)", true, false),
        ("kubernetes.io/os == 'windows' || has(node-role.kubernetes.io/worker)", true, false),
        ("kubernetes.io/os == 'windows' || location == 'rack2'", false, false),
        ("!(kubernetes.io/os == 'windows' || location == 'rack2')", true, true),
        ("!!has(location)", true, false),
        ("!(!has(location))", true, false),
        // && binds tighter than ||.
        ("has(x) && has(y) || has(location)", true, false),
        ("has(x) && (has(y) || has(location))", false, false),
        ("!has(x) && !has(y)", true, true),
        // Empty values are values.
        ("node-role.kubernetes.io/worker == \"\"", true, false),
        // A label may be named like a keyword.
        ("has == \"x\" || in != \"y\"", true, true),
        ("\tlocation==\"rack1\"&&zone   starts    with'eu'\n", true, false),
    ];
    for (sel, on_worker, on_bare) in table {
        let s = parse(sel);
        assert_eq!(s.matches(&node), *on_worker, "{sel:?} on the worker node");
        assert_eq!(s.matches(&bare), *on_bare, "{sel:?} on a node without labels");
        assert_eq!(parse(&s.to_string()), s, "{sel:?} displays as {s}, which must parse back");
    }
}

#[test]
fn display_is_canonical() {
    let table: &[(&str, &str)] = &[
        ("", "all()"),
        ("all( )", "all()"),
        ("has( a )", "has(a)"),
        ("a=='x'", "a == \"x\""),
        ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
        ("a in {'y','x','x'}", "a in {\"x\", \"y\"}"),
        ("a not in {}", "a not in {}"),
        ("!a == 'x'", "!(a == \"x\")"),
        ("!!!has(a)", "!has(a)"),
        ("((has(a)))", "has(a)"),
        ("has(a) && has(b) && has(c)", "has(a) && has(b) && has(c)"),
        ("(has(a) && has(b)) && has(c)", "(has(a) && has(b)) && has(c)"),
        ("has(a) || has(b) && has(c)", "has(a) || has(b) && has(c)"),
        ("(has(a) || has(b)) && has(c)", "(has(a) || has(b)) && has(c)"),
        ("has(a) || (has(b) || has(c))", "has(a) || (has(b) || has(c))"),
        ("!(has(a) || has(b))", "!(has(a) || has(b))"),
        (
            "a starts with 'x' || a ends with 'y' || a contains 'z'",
            "a starts with \"x\" || a ends with \"y\" || a contains \"z\"",
        ),
    ];
    for (input, want) in table {
        assert_eq!(parse(input).to_string(), *want, "{input:?}");
    }
}

#[test]
fn errors_say_where_and_what() {
    use SelectorProblem::*;
    let expected = |expected: &'static str, found: &str| Expected { expected, found: found.to_string() };
    let operator = "an operator (`==`, `!=`, `in`, `not in`, `contains`, `starts with`, `ends with`)";
    let operand = "a label, `all()`, `has(label)`, `!` or `(`";
    let value = "a quoted value such as \"linux\" or 'linux'";
    // (selector, position, problem)
    let table: Vec<(&str, usize, SelectorProblem)> = vec![
        ("kubernetes.io/os == linux", 21, expected(value, "`linux`")),
        ("location = \"rack1\"", 10, expected("`==`", "`=`")),
        ("has(a) & has(b)", 8, expected("`&&`", "`&`")),
        ("has(a) | has(b)", 8, expected("`||`", "`|`")),
        ("location == \"rack1", 13, UnterminatedString('"')),
        ("location in {'a', 'b}", 19, UnterminatedString('\'')),
        ("(has(a) && has(b)", 18, expected("`)`, `&&` or `||`", "the end of the selector")),
        ("has(a))", 7, expected("`&&`, `||` or the end of the selector", "`)`")),
        ("has(a) has(b)", 8, expected("`&&`, `||` or the end of the selector", "`has`")),
        ("has()", 5, expected("a label inside `has()`", "`)`")),
        ("has(a", 6, expected("`)` after the label of `has(`", "the end of the selector")),
        ("all(x)", 5, expected("`)` after `all(`", "`x`")),
        ("global()", 1, UnknownFunction("global".into())),
        ("location", 9, expected(operator, "the end of the selector")),
        ("location is \"rack1\"", 10, expected(operator, "`is`")),
        ("zone starts \"eu\"", 13, expected("`with` after `starts`", "the string \"eu\"")),
        ("location not \"x\"", 14, expected("`in` after `not`", "the string \"x\"")),
        ("location in \"rack1\"", 13, expected("a set such as {\"a\", \"b\"}", "the string \"rack1\"")),
        ("location in {\"a\" \"b\"}", 18, expected("a quoted value, `,` or `}`", "the string \"b\"")),
        ("location in {a}", 14, expected("a quoted value, `,` or `}`", "`a`")),
        ("has(a) &&", 10, expected(operand, "the end of the selector")),
        ("&& has(a)", 1, expected(operand, "`&&`")),
        ("has(a) || || has(b)", 11, expected(operand, "`||`")),
        ("()", 2, expected(operand, "`)`")),
        ("!", 2, expected(operand, "the end of the selector")),
        ("\"rack1\" == location", 1, expected(operand, "the string \"rack1\"")),
        ("zone == 'a' @ 1", 13, UnexpectedChar('@')),
        ("zöne == 'a'", 2, UnexpectedChar('ö')),
        // Positions count characters, not bytes.
        ("a == 'é' &&", 12, expected(operand, "the end of the selector")),
    ];
    for (sel, position, problem) in table {
        let err = Selector::parse(sel).expect_err(sel);
        assert_eq!((err.position, &err.problem), (position, &problem), "{sel:?}: {err}");
        assert_eq!(err.selector, sel);
    }
    let err = Selector::parse("kubernetes.io/os == linux").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid selector \"kubernetes.io/os == linux\" at character 21: expected a quoted value such as \"linux\" or 'linux', found `linux`"
    );
}

#[test]
fn nesting_is_bounded() {
    let ok = format!("{}has(a){}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert_eq!(parse(&ok), parse("has(a)"));
    let deep = format!("{}has(a){}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
    let err = Selector::parse(&deep).unwrap_err();
    assert_eq!((err.position, err.problem), (MAX_DEPTH + 1, SelectorProblem::TooDeep));
    // Negations do not nest: any number of them is fine.
    assert_eq!(parse(&format!("{}has(a)", "!".repeat(10_000))), parse("has(a)"));
}

// ---- property tests --------------------------------------------------------------------------

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_./-]{1,12}"
}

/// Any value a parser can produce: no string holds both quote characters.
fn value() -> impl Strategy<Value = String> {
    prop_oneof!["[^\"]{0,8}", "[^']{0,8}", "[a-z\" ]{0,4}"]
        .prop_filter("one quote kind", |v| !(v.contains('"') && v.contains('\'')))
}

pub(super) fn leaf() -> impl Strategy<Value = Expr> {
    let op = prop_oneof![Just(Op::Eq), Just(Op::Ne), Just(Op::Contains), Just(Op::StartsWith), Just(Op::EndsWith)];
    prop_oneof![
        Just(Expr::All),
        label().prop_map(Expr::Has),
        (label(), op, value()).prop_map(|(label, op, value)| Expr::Compare { label, op, value }),
        (label(), proptest::collection::btree_set(value(), 0..4), any::<bool>())
            .prop_map(|(label, values, negated)| Expr::In { label, values, negated }),
    ]
}

/// Trees of the shapes the parser builds (see [`Expr`]).
pub(super) fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| match e {
                Expr::Not(e) => *e,
                e => Expr::Not(Box::new(e)),
            }),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            proptest::collection::vec(inner, 2..4).prop_map(Expr::Or),
        ]
    })
}

/// Strings of selector fragments: mostly almost-selectors, many valid, many subtly broken.
pub(super) fn near_selector() -> impl Strategy<Value = String> {
    const FRAGMENTS: &[&str] = &[
        "has(",
        "all()",
        "a",
        "b.c/d-e",
        "==",
        " == ",
        "!=",
        "'x'",
        "\"y z\"",
        "\"\"",
        " in ",
        " not in ",
        "{",
        "}",
        ",",
        "(",
        ")",
        "!",
        " && ",
        " || ",
        " contains ",
        " starts with ",
        " ends with ",
        "=",
        "&",
        "|",
        "'",
        " ",
        "\t",
    ];
    proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..14).prop_map(|parts| parts.concat())
}

proptest! {
    #[test]
    fn display_parses_back_to_the_same_selector(root in expr()) {
        let sel = Selector { root };
        let text = sel.to_string();
        let back = Selector::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(back, sel, "{}", text);
    }

    #[test]
    fn any_input_parses_or_fails_cleanly(text in prop_oneof![near_selector(), "[ a-z()!=&|'\"{},.]{0,40}", any::<String>()]) {
        match Selector::parse(&text) {
            Ok(sel) => prop_assert_eq!(Selector::parse(&sel.to_string()), Ok(sel)),
            Err(e) => prop_assert!(e.position >= 1 && e.position <= text.chars().count() + 1, "{}", e),
        }
    }
}
