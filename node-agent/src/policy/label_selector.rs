//! Kubernetes label selectors (`matchLabels` + `matchExpressions`) in a canonical, comparable
//! form: equal selectors share one nftables set.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::inputs::Labels;

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Requirement {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A selector that cannot be evaluated (the API server validates these, so only a broken
/// object gets here).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label selector requirement on {key:?}: unknown operator {operator:?}")]
pub struct LabelSelectorError {
    pub key: String,
    pub operator: String,
}

/// A parsed Kubernetes label selector; the empty one selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelSel {
    requirements: BTreeSet<Requirement>,
}

impl LabelSel {
    /// Parses a selector; `matchLabels` entries are `In` requirements with one value.
    pub fn parse(selector: &LabelSelector) -> Result<LabelSel, LabelSelectorError> {
        let mut requirements = BTreeSet::new();
        for (k, v) in selector.match_labels.iter().flatten() {
            requirements.insert(Requirement::In(k.clone(), BTreeSet::from([v.clone()])));
        }
        for e in selector.match_expressions.iter().flatten() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            requirements.insert(match e.operator.as_str() {
                "In" => Requirement::In(e.key.clone(), values),
                "NotIn" => Requirement::NotIn(e.key.clone(), values),
                "Exists" => Requirement::Exists(e.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(e.key.clone()),
                other => return Err(LabelSelectorError { key: e.key.clone(), operator: other.to_string() }),
            });
        }
        Ok(LabelSel { requirements })
    }

    /// Kubernetes' matching: every requirement holds; `NotIn` also holds without the label.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// Canonical text (for set names and logs): `app in (a,b),!tier,...`; `{}` selects everything.
impl fmt::Display for LabelSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let list = |v: &BTreeSet<String>| v.iter().cloned().collect::<Vec<_>>().join(",");
            match r {
                Requirement::In(k, v) => write!(f, "{k} in ({})", list(v))?,
                Requirement::NotIn(k, v) => write!(f, "{k} notin ({})", list(v))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn empty_selector_selects_everything() {
        let s = LabelSel::parse(&LabelSelector::default()).unwrap();
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("a", "b")])));
        assert_eq!(s.to_string(), "{}");
    }

    #[test]
    fn match_labels_and_expressions_all_hold() {
        let s = LabelSel::parse(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![
                req("tier", "In", &["a", "b"]),
                req("env", "NotIn", &["prod"]),
                req("team", "Exists", &[]),
                req("legacy", "DoesNotExist", &[]),
            ]),
        })
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "x")])), "NotIn holds without the label");
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "c"), ("team", "x")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "a"), ("team", "x"), ("legacy", "")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "a"), ("team", "x")])));
    }

    #[test]
    fn equal_selectors_written_differently_are_equal() {
        let a = LabelSel::parse(&LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: None,
        })
        .unwrap();
        let b = LabelSel::parse(&LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![req("app", "In", &["web"])]),
        })
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "app in (web)");
    }

    #[test]
    fn unknown_operator_is_an_error() {
        let e = LabelSel::parse(&LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![req("a", "Gt", &["1"])]),
        });
        assert_eq!(e, Err(LabelSelectorError { key: "a".into(), operator: "Gt".into() }));
    }
}
