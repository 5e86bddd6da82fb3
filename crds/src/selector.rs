//! Calico selector expressions: `IPPool.spec.nodeSelector` (and, later, network policy).
//!
//! The grammar is Calico's, so users' selectors mean the same here:
//!
//! ```text
//! selector   := ""                       (empty: every object, like all())
//!             | or
//! or         := and ("||" and)*
//! and        := unary ("&&" unary)*
//! unary      := "!"* primary             (an even number of "!" cancels out)
//! primary    := "(" or ")" | "all()" | "has(" label ")" | label op
//! op         := "==" string | "!=" string | "contains" string | "starts with" string
//!             | "ends with" string | "in" set | "not in" set
//! set        := "{" (string ("," string)* ","?)? "}"
//! label      := [a-zA-Z0-9_./-]+         (e.g. node-role.kubernetes.io/worker)
//! string     := "..." | '...'            (no escapes; either quote)
//! ```
//!
//! Matching follows Calico too: `!=` and `not in` also match objects without the label; `==`,
//! `in`, `contains`, `starts with` and `ends with` need it. [`Selector`]'s `Display` prints a
//! canonical form that parses back to an equal selector.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// How deeply parentheses may nest. Bounds the parser's recursion (and every walk over the
/// tree) for any input; real selectors nest a few levels.
pub const MAX_DEPTH: usize = 16;

/// A parsed selector. Build one with [`Selector::parse`] (or `str::parse`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    root: Expr,
}

/// The expression tree. And/Or have at least two operands and a `Not` never wraps a `Not`:
/// the parser builds exactly these shapes, so `Display` can print them back unambiguously.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Expr {
    All,
    Has(String),
    Compare { label: String, op: Op, value: String },
    In { label: String, values: BTreeSet<String>, negated: bool },
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// A comparison of a label's value with one string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Op {
    Eq,
    Ne,
    Contains,
    StartsWith,
    EndsWith,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Contains => "contains",
            Op::StartsWith => "starts with",
            Op::EndsWith => "ends with",
        }
    }
}

/// A selector that could not be parsed: where (1-based character position in the selector)
/// and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?} at character {position}: {problem}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// 1-based character (not byte) position of the problem; one past the end for a selector
    /// that ends too early.
    pub position: usize,
    pub problem: SelectorProblem,
}

/// What is wrong with a selector.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorProblem {
    #[error("string is not terminated: no closing {0}")]
    UnterminatedString(char),
    #[error("unexpected character {0:?}")]
    UnexpectedChar(char),
    #[error("expected {expected}, found {found}")]
    Expected { expected: &'static str, found: String },
    #[error("unknown function {0}(): a selector knows all() and has(label)")]
    UnknownFunction(String),
    #[error("parentheses nest deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

impl Selector {
    /// Parses Calico selector syntax; the empty (or all-blank) selector selects everything.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let tokens = tokenize(text).map_err(|(offset, problem)| error(text, offset, problem))?;
        let mut parser = Parser { tokens, next: 0 };
        let root = parser.selector().map_err(|(offset, problem)| error(text, offset, problem))?;
        Ok(Selector { root })
    }

    /// The selector that matches everything (`all()`).
    pub fn all() -> Selector {
        Selector { root: Expr::All }
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.root.matches(labels)
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::all()
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl Expr {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Expr::All => true,
            Expr::Has(label) => labels.contains_key(label),
            Expr::Compare { label, op, value } => match (op, labels.get(label)) {
                (Op::Ne, None) => true,
                (_, None) => false,
                (Op::Eq, Some(v)) => v == value,
                (Op::Ne, Some(v)) => v != value,
                (Op::Contains, Some(v)) => v.contains(value.as_str()),
                (Op::StartsWith, Some(v)) => v.starts_with(value.as_str()),
                (Op::EndsWith, Some(v)) => v.ends_with(value.as_str()),
            },
            Expr::In { label, values, negated } => match labels.get(label) {
                Some(v) => values.contains(v) != *negated,
                None => *negated,
            },
            Expr::Not(inner) => !inner.matches(labels),
            Expr::And(all) => all.iter().all(|e| e.matches(labels)),
            Expr::Or(any) => any.iter().any(|e| e.matches(labels)),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Has(label) => write!(f, "has({label})"),
            Expr::Compare { label, op, value } => write!(f, "{label} {} {}", op.as_str(), Quoted(value)),
            Expr::In { label, values, negated } => {
                write!(f, "{label} {}in {{", if *negated { "not " } else { "" })?;
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", Quoted(v))?;
                }
                f.write_str("}")
            }
            // Parentheses around anything but a function call, for readability: `!(a == "b")`.
            Expr::Not(inner) => match **inner {
                Expr::All | Expr::Has(_) => write!(f, "!{inner}"),
                _ => write!(f, "!({inner})"),
            },
            // A nested And/Or came from parentheses (the parser flattens `a && b && c`); an Or
            // inside an And needs them for precedence.
            Expr::And(operands) => join(f, operands, " && ", |e| matches!(e, Expr::And(_) | Expr::Or(_))),
            Expr::Or(operands) => join(f, operands, " || ", |e| matches!(e, Expr::Or(_))),
        }
    }
}

fn join(f: &mut fmt::Formatter<'_>, operands: &[Expr], sep: &str, parens: fn(&Expr) -> bool) -> fmt::Result {
    for (i, e) in operands.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        if parens(e) { write!(f, "({e})")? } else { write!(f, "{e}")? }
    }
    Ok(())
}

/// A string literal in the quote it does not contain (strings have no escapes; a parsed value
/// never contains both quotes).
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = if self.0.contains('"') { '\'' } else { '"' };
        write!(f, "{q}{}{q}", self.0)
    }
}

// ---- tokens ----------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    Not,
    And,
    Or,
    Str(String),
    /// A label, or a keyword (`in`, `not`, `contains`, `starts`, `ends`, `with`, `all`, `has`):
    /// which one depends on the position, as in Calico, so `has == "x"` compares label `has`.
    Word(String),
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Eq => "`==`".into(),
            Tok::Ne => "`!=`".into(),
            Tok::Not => "`!`".into(),
            Tok::And => "`&&`".into(),
            Tok::Or => "`||`".into(),
            Tok::Str(s) => format!("the string {}", Quoted(s)),
            Tok::Word(w) => format!("`{w}`"),
            Tok::End => "the end of the selector".into(),
        }
    }
}

type Failure = (usize, SelectorProblem);

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Splits a selector into tokens, each with its byte offset; the last one is `End`.
fn tokenize(text: &str) -> Result<Vec<(usize, Tok)>, Failure> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let tok = match c {
            c if c.is_ascii_whitespace() => continue,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '{' => Tok::LBrace,
            '}' => Tok::RBrace,
            ',' => Tok::Comma,
            '"' | '\'' => {
                let rest = &text[at + 1..];
                let len = rest.find(c).ok_or((at, SelectorProblem::UnterminatedString(c)))?;
                let value = rest[..len].to_string();
                // Skip the value and the closing quote.
                while chars.next_if(|&(i, _)| i <= at + len + 1).is_some() {}
                Tok::Str(value)
            }
            '=' | '!' | '&' | '|' => {
                let second = if c == '!' { '=' } else { c };
                match (c, chars.next_if(|&(_, n)| n == second)) {
                    ('=', Some(_)) => Tok::Eq,
                    ('!', Some(_)) => Tok::Ne,
                    ('!', None) => Tok::Not,
                    ('&', Some(_)) => Tok::And,
                    ('|', Some(_)) => Tok::Or,
                    _ => {
                        let expected = match c {
                            '=' => "`==`",
                            '&' => "`&&`",
                            _ => "`||`",
                        };
                        return Err((at, SelectorProblem::Expected { expected, found: format!("`{c}`") }));
                    }
                }
            }
            c if is_label_char(c) => {
                let mut end = at + c.len_utf8();
                while let Some((i, n)) = chars.next_if(|&(_, n)| is_label_char(n)) {
                    end = i + n.len_utf8();
                }
                Tok::Word(text[at..end].to_string())
            }
            c => return Err((at, SelectorProblem::UnexpectedChar(c))),
        };
        tokens.push((at, tok));
    }
    tokens.push((text.len(), Tok::End));
    Ok(tokens)
}

// ---- parser ----------------------------------------------------------------------------------

struct Parser {
    tokens: Vec<(usize, Tok)>,
    next: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.tokens[self.next].1
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        let i = (self.next + ahead).min(self.tokens.len() - 1);
        &self.tokens[i].1
    }

    /// Takes the next token (`End` stays put).
    fn bump(&mut self) -> (usize, Tok) {
        let t = self.tokens[self.next].clone();
        if t.1 != Tok::End {
            self.next += 1;
        }
        t
    }

    fn unexpected(&self, expected: &'static str) -> Failure {
        let (at, tok) = &self.tokens[self.next];
        (*at, SelectorProblem::Expected { expected, found: tok.describe() })
    }

    fn expect(&mut self, tok: Tok, expected: &'static str) -> Result<(), Failure> {
        if *self.peek() == tok {
            self.bump();
            Ok(())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn selector(&mut self) -> Result<Expr, Failure> {
        if *self.peek() == Tok::End {
            return Ok(Expr::All);
        }
        let e = self.or(0)?;
        if *self.peek() != Tok::End {
            return Err(self.unexpected("`&&`, `||` or the end of the selector"));
        }
        Ok(e)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, Failure> {
        let mut operands = vec![self.and(depth)?];
        while *self.peek() == Tok::Or {
            self.bump();
            operands.push(self.and(depth)?);
        }
        Ok(if operands.len() == 1 { operands.remove(0) } else { Expr::Or(operands) })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, Failure> {
        let mut operands = vec![self.unary(depth)?];
        while *self.peek() == Tok::And {
            self.bump();
            operands.push(self.unary(depth)?);
        }
        Ok(if operands.len() == 1 { operands.remove(0) } else { Expr::And(operands) })
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, Failure> {
        let mut negated = false;
        while *self.peek() == Tok::Not {
            self.bump();
            negated = !negated;
        }
        let e = self.primary(depth)?;
        // `!!(!a)`: the parentheses may hold a negation already; keep at most one.
        Ok(match (negated, e) {
            (false, e) => e,
            (true, Expr::Not(inner)) => *inner,
            (true, e) => Expr::Not(Box::new(e)),
        })
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, Failure> {
        const OPERAND: &str = "a label, `all()`, `has(label)`, `!` or `(`";
        match self.peek().clone() {
            Tok::LParen => {
                let (at, _) = self.bump();
                if depth >= MAX_DEPTH {
                    return Err((at, SelectorProblem::TooDeep));
                }
                let e = self.or(depth + 1)?;
                self.expect(Tok::RParen, "`)`, `&&` or `||`")?;
                Ok(e)
            }
            Tok::Word(word) if *self.peek_at(1) == Tok::LParen => {
                let (at, _) = self.bump();
                self.bump();
                match word.as_str() {
                    "all" => {
                        self.expect(Tok::RParen, "`)` after `all(`")?;
                        Ok(Expr::All)
                    }
                    "has" => {
                        let label = self.label("a label inside `has()`")?;
                        self.expect(Tok::RParen, "`)` after the label of `has(`")?;
                        Ok(Expr::Has(label))
                    }
                    _ => Err((at, SelectorProblem::UnknownFunction(word))),
                }
            }
            Tok::Word(_) => {
                let label = self.label(OPERAND)?;
                self.comparison(label)
            }
            _ => Err(self.unexpected(OPERAND)),
        }
    }

    fn label(&mut self, expected: &'static str) -> Result<String, Failure> {
        match self.peek().clone() {
            Tok::Word(w) => {
                self.bump();
                Ok(w)
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    /// What follows a label: an operator and its operand.
    fn comparison(&mut self, label: String) -> Result<Expr, Failure> {
        const OPERATOR: &str = "an operator (`==`, `!=`, `in`, `not in`, `contains`, `starts with`, `ends with`)";
        let op = match self.peek() {
            Tok::Eq => Op::Eq,
            Tok::Ne => Op::Ne,
            Tok::Word(w) => match w.as_str() {
                "in" => {
                    self.bump();
                    return self.set(label, false);
                }
                "not" => {
                    self.bump();
                    self.keyword("in", "`in` after `not`")?;
                    return self.set(label, true);
                }
                "contains" => Op::Contains,
                "starts" => {
                    self.bump();
                    self.keyword("with", "`with` after `starts`")?;
                    return self.operand(label, Op::StartsWith);
                }
                "ends" => {
                    self.bump();
                    self.keyword("with", "`with` after `ends`")?;
                    return self.operand(label, Op::EndsWith);
                }
                _ => return Err(self.unexpected(OPERATOR)),
            },
            _ => return Err(self.unexpected(OPERATOR)),
        };
        self.bump();
        self.operand(label, op)
    }

    fn operand(&mut self, label: String, op: Op) -> Result<Expr, Failure> {
        let value = self.string("a quoted value such as \"linux\" or 'linux'")?;
        Ok(Expr::Compare { label, op, value })
    }

    /// The second word of `not in`, `starts with`, `ends with`.
    fn keyword(&mut self, word: &str, expected: &'static str) -> Result<(), Failure> {
        match self.peek() {
            Tok::Word(w) if w == word => {
                self.bump();
                Ok(())
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    fn string(&mut self, expected: &'static str) -> Result<String, Failure> {
        match self.peek().clone() {
            Tok::Str(s) => {
                self.bump();
                Ok(s)
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    /// `{"a", "b"}` after `in` / `not in`; Calico allows `{}` and a trailing comma.
    fn set(&mut self, label: String, negated: bool) -> Result<Expr, Failure> {
        self.expect(Tok::LBrace, "a set such as {\"a\", \"b\"}")?;
        let mut values = BTreeSet::new();
        while let Tok::Str(_) = self.peek() {
            values.insert(self.string("a quoted value")?);
            if *self.peek() != Tok::Comma {
                break;
            }
            self.bump();
        }
        self.expect(Tok::RBrace, "a quoted value, `,` or `}`")?;
        Ok(Expr::In { label, values, negated })
    }
}

fn error(text: &str, offset: usize, problem: SelectorProblem) -> SelectorError {
    let position = text[..offset].chars().count() + 1;
    SelectorError { selector: text.to_string(), position, problem }
}

pub mod cel;

#[cfg(test)]
mod tests;
