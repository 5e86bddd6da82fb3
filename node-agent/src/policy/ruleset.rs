//! The desired content of the policy table (`inet trellis-policy`) and the nft scripts that
//! get the kernel there: a full replacement, or only set and map element changes.
//!
//! ```text
//! table inet trellis-policy {
//!   set pods-<hash>-v4 { type ipv4_addr; elements = { <pod IPs a selector selects> } }
//!   set ports-<hash>-v4 { type ipv4_addr . inet_proto . inet_service; ... }   (named ports)
//!   map ingress-pods { type ifname : verdict; elements = { "veth…" : jump <chain> } }
//!   map egress-pods  { type ifname : verdict; ... }
//!   chain k8s-in-<hash> { <allow rules> return … ; drop }      (one per distinct rule list)
//!   chain gnp-eg-<hash> { <global policies in order> ; drop }
//!   chain forward { type filter hook forward priority filter; policy accept;
//!     ct state established ct direction reply accept; ct state related accept
//!     iifname vmap @egress-pods; oifname vmap @ingress-pods }
//!   chain input { type filter hook input priority filter; policy accept;
//!     ct state established ct direction reply accept; ct state related accept
//!     icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept
//!     iifname vmap @egress-pods }
//! }
//! ```
//! A pod's chain returns to the base chain when its traffic is allowed, so egress (the sending
//! pod's chain, by input interface) and then ingress (the receiving pod's chain, by output
//! interface) both get their say. Packets in the original direction are checked every time,
//! so a policy change also stops established connections it denies; replies of connections
//! that were allowed pass. The node's own traffic to its pods (output hook) is never checked.
//!
//! Chains are named by a hash of their rules and sets by a hash of what they select, so pods
//! with the same policies share a chain, and a pod appearing, going or changing labels changes
//! set and map elements only: [`Ruleset::update_from`] turns such a difference into element
//! adds and deletes; anything else replaces the table. Either is one nft transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::rule::{Family, Line};

/// The table's name (family `inet`).
pub const TABLE: &str = "trellis-policy";
/// Interface → chain for traffic to a pod.
pub const INGRESS_MAP: &str = "ingress-pods";
/// Interface → chain for traffic from a pod.
pub const EGRESS_MAP: &str = "egress-pods";

/// What a named set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SetKind {
    /// Pod addresses.
    Addresses(Family),
    /// (pod address, protocol, port) of named container ports.
    NamedPorts(Family),
}

impl SetKind {
    fn nft_type(self) -> &'static str {
        match self {
            SetKind::Addresses(Family::V4) => "ipv4_addr",
            SetKind::Addresses(Family::V6) => "ipv6_addr",
            SetKind::NamedPorts(Family::V4) => "ipv4_addr . inet_proto . inet_service",
            SetKind::NamedPorts(Family::V6) => "ipv6_addr . inet_proto . inet_service",
        }
    }
}

/// A named set and its elements (in nft syntax: `10.0.0.1`, `10.0.0.1 . tcp . 8080`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedSet {
    pub kind: SetKind,
    pub elements: BTreeSet<String>,
}

/// The whole desired table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, NamedSet>,
    /// Policy chains (not the base chains) and their rules.
    pub chains: BTreeMap<String, Vec<Line>>,
    /// Host-side interface → chain deciding traffic to the pod.
    pub ingress: BTreeMap<String, String>,
    /// Host-side interface → chain deciding traffic from the pod.
    pub egress: BTreeMap<String, String>,
}

/// How to get from one table content to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Nothing differs.
    None,
    /// Only set and map elements differ: the nft script, and how many elements it adds/deletes.
    Elements { script: String, added: usize, deleted: usize },
    /// Chains or set definitions differ: the replacing script.
    Replace(String),
}

fn quoted(interface: &str) -> String {
    format!("\"{}\"", interface.replace(['"', '\\'], ""))
}

impl Ruleset {
    /// Sets and chains without elements: what cannot change by element updates.
    fn same_structure(&self, other: &Ruleset) -> bool {
        self.chains == other.chains
            && self.sets.len() == other.sets.len()
            && self.sets.iter().zip(&other.sets).all(|((a, sa), (b, sb))| a == b && sa.kind == sb.kind)
    }

    /// The script that replaces whatever table is there with this one, atomically: `add table`
    /// (cannot fail), `delete table`, then the content.
    pub fn replace_script(&self) -> String {
        let t = format!("inet {TABLE}");
        let mut s = format!("add table {t}\ndelete table {t}\nadd table {t}\n");
        for (name, set) in &self.sets {
            let _ = writeln!(s, "add set {t} {name} {{ type {}; }}", set.kind.nft_type());
            if !set.elements.is_empty() {
                let _ = writeln!(s, "add element {t} {name} {{ {} }}", join(&set.elements));
            }
        }
        for map in [INGRESS_MAP, EGRESS_MAP] {
            let _ = writeln!(s, "add map {t} {map} {{ type ifname : verdict; }}");
        }
        // Every chain exists before any rule can jump to it.
        for name in self.chains.keys() {
            let _ = writeln!(s, "add chain {t} {name}");
        }
        for (name, lines) in &self.chains {
            for line in lines {
                let _ = writeln!(s, "add rule {t} {name} {line}");
            }
        }
        for (base, hook) in [("forward", "forward"), ("input", "input")] {
            let _ = writeln!(s, "add chain {t} {base} {{ type filter hook {hook} priority filter; policy accept; }}");
            let _ = writeln!(s, "add rule {t} {base} ct state established ct direction reply accept");
            let _ = writeln!(s, "add rule {t} {base} ct state related accept");
            if base == "input" {
                // Neighbour discovery towards the node is what makes IPv6 work at all.
                let _ = writeln!(
                    s,
                    "add rule {t} {base} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept"
                );
            }
            let _ = writeln!(s, "add rule {t} {base} iifname vmap @{EGRESS_MAP}");
            if base == "forward" {
                let _ = writeln!(s, "add rule {t} {base} oifname vmap @{INGRESS_MAP}");
            }
        }
        for (map, entries) in [(INGRESS_MAP, &self.ingress), (EGRESS_MAP, &self.egress)] {
            if !entries.is_empty() {
                let elements: BTreeSet<String> =
                    entries.iter().map(|(i, c)| format!("{} : jump {c}", quoted(i))).collect();
                let _ = writeln!(s, "add element {t} {map} {{ {} }}", join(&elements));
            }
        }
        s
    }

    /// How to get from `current` (what the kernel has) to `self`.
    pub fn update_from(&self, current: &Ruleset) -> Update {
        if !self.same_structure(current) {
            return Update::Replace(self.replace_script());
        }
        let t = format!("inet {TABLE}");
        let (mut deletes, mut adds) = (String::new(), String::new());
        let (mut added, mut deleted) = (0, 0);
        for (name, set) in &self.sets {
            let old = &current.sets[name].elements;
            let gone: BTreeSet<String> = old.difference(&set.elements).cloned().collect();
            let new: BTreeSet<String> = set.elements.difference(old).cloned().collect();
            if !gone.is_empty() {
                deleted += gone.len();
                let _ = writeln!(deletes, "delete element {t} {name} {{ {} }}", join(&gone));
            }
            if !new.is_empty() {
                added += new.len();
                let _ = writeln!(adds, "add element {t} {name} {{ {} }}", join(&new));
            }
        }
        for (map, want, have) in
            [(INGRESS_MAP, &self.ingress, &current.ingress), (EGRESS_MAP, &self.egress, &current.egress)]
        {
            // A changed entry is deleted and added again.
            let gone: BTreeSet<String> =
                have.iter().filter(|(i, c)| want.get(*i) != Some(c)).map(|(i, _)| quoted(i)).collect();
            let new: BTreeSet<String> = want
                .iter()
                .filter(|(i, c)| have.get(*i) != Some(c))
                .map(|(i, c)| format!("{} : jump {c}", quoted(i)))
                .collect();
            if !gone.is_empty() {
                deleted += gone.len();
                let _ = writeln!(deletes, "delete element {t} {map} {{ {} }}", join(&gone));
            }
            if !new.is_empty() {
                added += new.len();
                let _ = writeln!(adds, "add element {t} {map} {{ {} }}", join(&new));
            }
        }
        if added + deleted == 0 { Update::None } else { Update::Elements { script: deletes + &adds, added, deleted } }
    }
}

fn join(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::rule::{Cond, End, Verdict};

    fn ruleset(pods: &[&str], ingress: &[(&str, &str)]) -> Ruleset {
        let mut r = Ruleset::default();
        r.sets.insert(
            "pods-a-v4".into(),
            NamedSet { kind: SetKind::Addresses(Family::V4), elements: pods.iter().map(|p| p.to_string()).collect() },
        );
        r.chains.insert(
            "k8s-in-x".into(),
            vec![
                Line::new(
                    vec![Cond::InSet { end: End::Source, family: Family::V4, set: "pods-a-v4".into(), negated: false }],
                    Verdict::Allow,
                ),
                Line::new(vec![], Verdict::Drop),
            ],
        );
        r.ingress = ingress.iter().map(|(i, c)| (i.to_string(), c.to_string())).collect();
        r
    }

    #[test]
    fn full_script_declares_before_use() {
        let s = ruleset(&["10.0.0.2", "10.0.0.3"], &[("veth1", "k8s-in-x")]).replace_script();
        let pos = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle} missing in\n{s}"));
        assert!(s.starts_with("add table inet trellis-policy\ndelete table inet trellis-policy\n"));
        assert!(
            pos("add set inet trellis-policy pods-a-v4 { type ipv4_addr; }")
                < pos("add rule inet trellis-policy k8s-in-x ip saddr @pods-a-v4 return")
        );
        assert!(pos("add element inet trellis-policy pods-a-v4 { 10.0.0.2, 10.0.0.3 }") > 0);
        assert!(
            pos("add chain inet trellis-policy k8s-in-x\n")
                < pos("add element inet trellis-policy ingress-pods { \"veth1\" : jump k8s-in-x }")
        );
        assert!(pos("oifname vmap @ingress-pods") > pos("ct state established ct direction reply accept"));
    }

    #[test]
    fn pods_coming_and_going_are_element_updates() {
        let old = ruleset(&["10.0.0.2", "10.0.0.3"], &[("veth1", "k8s-in-x")]);
        let new = ruleset(&["10.0.0.3", "10.0.0.4"], &[("veth2", "k8s-in-x")]);
        match new.update_from(&old) {
            Update::Elements { script, added, deleted } => {
                assert_eq!((added, deleted), (2, 2));
                assert_eq!(
                    script,
                    "delete element inet trellis-policy pods-a-v4 { 10.0.0.2 }\n\
                     delete element inet trellis-policy ingress-pods { \"veth1\" }\n\
                     add element inet trellis-policy pods-a-v4 { 10.0.0.4 }\n\
                     add element inet trellis-policy ingress-pods { \"veth2\" : jump k8s-in-x }\n"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(new.update_from(&new.clone()), Update::None);
    }

    #[test]
    fn changed_chains_replace_the_table() {
        let old = ruleset(&["10.0.0.2"], &[]);
        let mut new = old.clone();
        new.chains.get_mut("k8s-in-x").unwrap().pop();
        assert!(matches!(new.update_from(&old), Update::Replace(s) if s.starts_with("add table")));
        let mut other_kind = old.clone();
        other_kind.sets.get_mut("pods-a-v4").unwrap().kind = SetKind::NamedPorts(Family::V4);
        assert!(matches!(other_kind.update_from(&old), Update::Replace(_)));
    }
}
