//! TEMPORARY stand-in for `trellis_api::selector` (being written by the api helper): the same
//! interface, a small subset of the syntax. Deleted once the real parser is in main.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector(Vec<Term>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    All,
    NotAll,
    Has(String),
    Eq(String, String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {0:?}")]
pub struct SelectorError(String);

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut terms = Vec::new();
        for part in text.split("&&").map(str::trim).filter(|p| !p.is_empty()) {
            let term = if part == "all()" {
                Term::All
            } else if part == "!all()" {
                Term::NotAll
            } else if let Some(label) = part.strip_prefix("has(").and_then(|r| r.strip_suffix(')')) {
                Term::Has(label.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                let v = v.trim();
                let v = v
                    .strip_prefix(['"', '\''])
                    .and_then(|v| v.strip_suffix(['"', '\'']))
                    .ok_or_else(|| SelectorError(text.into()))?;
                Term::Eq(k.trim().to_string(), v.to_string())
            } else {
                return Err(SelectorError(text.into()));
            };
            terms.push(term);
        }
        Ok(Selector(terms))
    }

    pub fn all() -> Selector {
        Selector(vec![Term::All])
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|t| match t {
            Term::All => true,
            Term::NotAll => false,
            Term::Has(k) => labels.contains_key(k),
            Term::Eq(k, v) => labels.get(k) == Some(v),
        })
    }
}
