//! Selector checks the API server runs at admission, as CEL (it cannot run [`Selector::parse`]).
//!
//! Two rules that together accept the same selectors as the parser (up to keyword spacing such
//! as `zonecontains "x"`, which only the parser rejects):
//! * [`grammar`]: one RE2 expression for the grammar with parentheses flattened: terms (`!` and
//!   `(` prefixes, an operation, `)` suffixes) joined by `&&` / `||`. It catches bad characters,
//!   unterminated or missing quotes, a lone `=`/`&`/`|`, missing operands and empty `has()`.
//! * [`parentheses`]: the grouping parentheses (outside strings and `all()`/`has()`) balance
//!   and nest at most [`MAX_DEPTH`] deep. RE2 cannot count, but balance up to a fixed depth is
//!   regular: level k is `rest ( "(" level k-1 ")" rest )*`, so the expression grows linearly
//!   with the depth.
//!
//! Both are plain `matches` on a string of bounded length, which the API server's cost estimate
//! accepts (`findAll`, `split` or repeated `replace` are estimated far above the budget). The
//! operator still parses every selector and reports `Selector::parse`'s precise error (position
//! and problem) in a condition.
//!
//! [`Selector::parse`]: super::Selector::parse

use kube::core::{Message, Rule};

use super::MAX_DEPTH;

/// Whitespace as the parser skips it (`char::is_ascii_whitespace`; RE2's `\s` is the same set,
/// spelled out so that Rust's Unicode-aware `regex` agrees in tests).
const WS: &str = r"[\t\n\f\r ]*";
/// A label key.
const LABEL: &str = r"[a-zA-Z0-9_./-]+";
/// A string literal; the quotes are hex escapes so the CEL rule needs no quoting inside.
const STRING: &str = r"(?:\x22[^\x22]*\x22|\x27[^\x27]*\x27)";

/// The RE2 pattern of the flattened grammar (anchored).
pub fn grammar_pattern() -> String {
    let w = WS;
    let set = format!(r"\{{{w}(?:{STRING}{w}(?:,{w}{STRING}{w})*(?:,{w})?)?\}}");
    let op = format!(
        r"(?:(?:==|!=|contains|starts[\t\n\f\r ]+with|ends[\t\n\f\r ]+with){w}{STRING}|(?:in|not[\t\n\f\r ]+in){w}{set})"
    );
    let atom = format!(r"(?:all{w}\({w}\)|has{w}\({w}{LABEL}{w}\)|{LABEL}{w}{op})");
    let term = format!(r"(?:(?:!|\(){w})*{atom}(?:{w}\))*");
    format!(r"^{w}(?:{term}(?:{w}(?:&&|\|\|){w}{term})*{w})?$")
}

/// The RE2 pattern (anchored) of balanced grouping parentheses nested at most [`MAX_DEPTH`]
/// deep, anything else in between.
pub fn parentheses_pattern() -> String {
    let rest = format!(r"(?:{STRING}|(?:all|has){WS}\([^()\x22\x27]*\)|[^()\x22\x27])*");
    let mut level = rest.clone();
    for _ in 0..MAX_DEPTH {
        level = format!(r"{rest}(?:\({level}\){rest})*");
    }
    format!("^{level}$")
}

/// The CEL expression of [`grammar`].
pub fn grammar_expression() -> String {
    format!("self.matches(r'{}')", grammar_pattern())
}

/// The CEL expression of [`parentheses`].
pub fn parentheses_expression() -> String {
    format!("self.matches(r'{}')", parentheses_pattern())
}

/// Rejects what is not a selector; `field` names the field in the message.
pub fn grammar(field: &str) -> Rule {
    Rule::new(grammar_expression()).message(Message::Message(format!(
        "{field} must be a Calico selector such as all(), has(label), label == \"value\", label in {{\"a\", \"b\"}}, \
         with !=, not in, contains, starts with, ends with, !, &&, || and parentheses; values in quotes"
    )))
}

/// Rejects unbalanced or too deeply nested parentheses; `field` names the field in the message.
pub fn parentheses(field: &str) -> Rule {
    Rule::new(parentheses_expression())
        .message(Message::Message(format!("{field}: parentheses must balance and nest at most {MAX_DEPTH} deep")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use regex::Regex;

    use super::*;
    use crate::selector::Selector;

    /// What the two rules decide, evaluated with Rust's `regex` (RE2 syntax and semantics for
    /// every construct used).
    fn admitted(selector: &str) -> bool {
        let grammar = Regex::new(&grammar_pattern()).unwrap();
        let parentheses = Regex::new(&parentheses_pattern()).unwrap();
        grammar.is_match(selector) && parentheses.is_match(selector)
    }

    #[test]
    fn admission_agrees_with_the_parser() {
        let table = [
            "",
            " ",
            "all()",
            "!all()",
            "all( )",
            "has(node-role.kubernetes.io/worker)",
            "!has(a)",
            "location == \"rack1\"",
            "kubernetes.io/os == 'linux' && has(node-role.kubernetes.io/worker)",
            "a in {}",
            "a in {'x',}",
            "a not in {\"x\", 'y'}",
            "a contains \"(\" && b starts with ')' || c ends with \"has(\"",
            "!(a == \"b\" || (has(c) && !has(d)))",
            "((has(a)))",
            "(a == \")\") && (b in {'(', \"((\"})",
            "(has(a) || has(b)) && !(c == 'x' || (d != 'y'))",
            "\tlocation==\"rack1\"&&zone   starts    with'eu'\n",
            "has == \"x\" || in != \"y\"",
            // Malformed.
            "kubernetes.io/os == linux",
            "location = \"rack1\"",
            "has(a) & has(b)",
            "location == \"rack1",
            "(has(a) && has(b)",
            "has(a))",
            "has(a)) && (has(b)",
            ")has(a)(",
            "(a == ')'",
            "((has(a)) || has(b)",
            "has(a) has(b)",
            "has()",
            "has(a",
            "all(x)",
            "global()",
            "location",
            "location in \"x\"",
            "location in {\"a\" \"b\"}",
            "has(a) &&",
            "|| has(a)",
            "()",
            "!",
            "\"x\" == a",
            "zone == 'a' @",
            "zöne == 'a'",
        ];
        for s in table {
            assert_eq!(admitted(s), Selector::parse(s).is_ok(), "{s:?}");
        }
        let deep = |n: usize| format!("{}has(a){}", "(".repeat(n), ")".repeat(n));
        assert!(admitted(&deep(MAX_DEPTH)));
        assert!(!admitted(&deep(MAX_DEPTH + 1)));
    }

    /// A word of label characters that ends in an operator keyword: `zonecontains "x"`.
    fn glued_keyword(text: &str) -> bool {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c))).any(|word| {
            ["contains", "starts", "ends", "in", "not"].iter().any(|k| word.len() > k.len() && word.ends_with(k))
        })
    }

    proptest! {
        #[test]
        fn displayed_selectors_are_admitted(root in crate::selector::tests::expr()) {
            let text = Selector { root }.to_string();
            prop_assert!(admitted(&text), "{:?} is not admitted", text);
        }

        #[test]
        fn every_parsed_selector_is_admitted(text in crate::selector::tests::near_selector()) {
            if let Ok(sel) = Selector::parse(&text) {
                prop_assert!(admitted(&text), "{:?} parses but is not admitted", text);
                let canonical = sel.to_string();
                prop_assert!(admitted(&canonical), "{:?} parses but is not admitted", canonical);
            }
        }

        #[test]
        fn every_admitted_selector_parses(text in crate::selector::tests::near_selector()) {
            // The one known difference: keywords glued to the label before them.
            prop_assume!(!glued_keyword(&text));
            if admitted(&text) {
                prop_assert!(Selector::parse(&text).is_ok(), "{:?} is admitted but does not parse: {}", text, Selector::parse(&text).unwrap_err());
            }
        }
    }
}
