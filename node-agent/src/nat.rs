//! NAT-outgoing: one nftables table, `inet trellis`, owned by Trellis and nothing else.
//!
//! ```text
//! table inet trellis {
//!   set nat-sources-v4 { type ipv4_addr; flags interval; elements = { <NAT-enabled pools> } }
//!   set all-pools-v4   { type ipv4_addr; flags interval; elements = { <every pool> } }
//!   (the same two sets for IPv6 when an IPv6 pool has natOutgoing)
//!   chain postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr @nat-sources-v4 ip daddr != @all-pools-v4 masquerade
//!     ip6 saddr @nat-sources-v6 ip6 daddr != @all-pools-v6 masquerade
//!   }
//! }
//! ```
//! Pod traffic leaving the pools takes the node's address; pod-to-pod traffic (any pool, any
//! node) keeps its source. Overlapping pool CIDRs are merged first (an interval set rejects
//! overlapping elements).
//!
//! [`sync`] asks the kernel whether the table exists (one netlink request, see
//! [`crate::kernel::nft_table`]: no process when there is no table and no NAT); if it does, it
//! reads it back (`nft -j list table inet trellis`) and compares its content with [`render`]'s
//! in a normalized form (handles and element order ignored). Only when they differ is the table
//! replaced, in ONE nft transaction: `add table` (so the next command cannot fail), `delete
//! table` (drops whatever is there, also foreign additions), `add table` plus the new content.
//! The kernel applies the batch atomically: packets see either the old table or the new one,
//! never an empty or half-built one. An empty plan removes the table the
//! same way. Other tables are never read or written. Everything acts on the network namespace
//! of the calling thread (the `nft` child process inherits it).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};

use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::helper::{self, DEFAULT_NFT, NftablesError};
use nftables::schema::{Chain, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::kernel::nft_events::NFPROTO_INET;
use crate::kernel::nft_table;
use crate::model::NatPlan;

/// Name of the one nftables table Trellis owns.
pub const TABLE: &str = "trellis";

/// The NAT chain.
pub const CHAIN: &str = "postrouting";

/// `priority srcnat`.
const SRCNAT_PRIORITY: i32 = 100;

/// Reading or replacing the table failed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error("the nft program is not installed (needed for natOutgoing): {0}")]
    NftMissing(String),
    #[error("cannot read nftables table inet {TABLE}: {0}")]
    Read(String),
    #[error("cannot replace nftables table inet {TABLE}: {0}")]
    Apply(String),
}

/// The nft error with nft's own explanation (its stderr), which the crate's message omits;
/// `or` wraps everything but a missing `nft` program.
fn describe(e: NftablesError, or: fn(String) -> NatError) -> NatError {
    match e {
        NftablesError::NftExecution { inner, .. } if inner.kind() == std::io::ErrorKind::NotFound => {
            NatError::NftMissing(inner.to_string())
        }
        NftablesError::NftFailed { hint, stderr, .. } => or(format!("nft failed while {hint}: {}", stderr.trim())),
        other => or(other.to_string()),
    }
}

/// An IP family of the pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(net: &IpNet) -> Self {
        if net.addr().is_ipv4() { Family::V4 } else { Family::V6 }
    }
    fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
    fn protocol(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn set_type(self) -> SetType {
        match self {
            Family::V4 => SetType::Ipv4Addr,
            Family::V6 => SetType::Ipv6Addr,
        }
    }
}

fn table() -> Table<'static> {
    Table { family: NfFamily::INet, name: TABLE.into(), handle: None }
}

/// Canonical, merged CIDRs of one family.
fn merged(nets: &[IpNet], family: Family) -> Vec<IpNet> {
    let of_family: Vec<IpNet> = nets.iter().filter(|n| Family::of(n) == family).map(IpNet::trunc).collect();
    let mut out = IpNet::aggregate(&of_family);
    out.sort();
    out
}

fn element(net: &IpNet) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(Expression::String(net.addr().to_string().into())),
        len: u32::from(net.prefix_len()),
    }))
}

fn set(name: String, family: Family, nets: &[IpNet]) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        set_type: SetTypeValue::Single(family.set_type()),
        policy: None,
        flags: Some(HashSet::from([SetFlag::Interval])),
        elem: (!nets.is_empty()).then(|| Cow::Owned(nets.iter().map(element).collect())),
        timeout: None,
        gc_interval: None,
        size: None,
        comment: None,
    }))
}

fn payload_match(family: Family, field: &'static str, op: Operator, set: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
            protocol: family.protocol().into(),
            field: field.into(),
        }))),
        right: Expression::String(format!("@{set}").into()),
        op,
    })
}

/// Pure: the objects of the table for `plan`, in creation order (the table itself excluded).
/// Empty when no pool has natOutgoing: then there is no table at all.
pub fn render(plan: &NatPlan) -> Vec<NfListObject<'static>> {
    let mut objects = Vec::new();
    let mut rules = Vec::new();
    for family in [Family::V4, Family::V6] {
        let sources = merged(&plan.nat_sources, family);
        if sources.is_empty() {
            continue;
        }
        let (src_set, dst_set) = (format!("nat-sources-{}", family.suffix()), format!("all-pools-{}", family.suffix()));
        // The sources are pools too, whatever the caller's all_pools says.
        let all: Vec<IpNet> = plan.all_pools.iter().chain(&plan.nat_sources).copied().collect();
        objects.push(set(src_set.clone(), family, &sources));
        objects.push(set(dst_set.clone(), family, &merged(&all, family)));
        rules.push(NfListObject::Rule(Rule {
            family: NfFamily::INet,
            table: TABLE.into(),
            chain: CHAIN.into(),
            expr: Cow::Owned(vec![
                payload_match(family, "saddr", Operator::EQ, &src_set),
                payload_match(family, "daddr", Operator::NEQ, &dst_set),
                Statement::Masquerade(None),
            ]),
            handle: None,
            index: None,
            comment: None,
        }));
    }
    if rules.is_empty() {
        return Vec::new();
    }
    objects.push(NfListObject::Chain(Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    objects.extend(rules);
    objects
}

/// The table's content in a form where equal tables compare equal: no handles, sets'
/// elements as sorted CIDR strings, rules as JSON per chain in order.
#[derive(Debug, Default, PartialEq, Eq)]
struct Content {
    sets: BTreeMap<String, (String, BTreeSet<String>)>,
    chains: BTreeMap<String, String>,
    rules: BTreeMap<String, Vec<serde_json::Value>>,
    /// Anything else found in the table (maps, counters, ...): never desired.
    other: usize,
}

fn element_key(e: &Expression) -> String {
    match e {
        Expression::String(s) => match s.parse::<std::net::IpAddr>() {
            Ok(addr) => IpNet::from(addr).to_string(),
            Err(_) => s.to_string(),
        },
        Expression::Named(NamedExpression::Prefix(Prefix { addr, len })) => match addr.as_ref() {
            Expression::String(a) => format!("{a}/{len}"),
            other => format!("{other:?}/{len}"),
        },
        other => serde_json::to_string(other).unwrap_or_else(|_| format!("{other:?}")),
    }
}

impl Content {
    fn of<'r, 'a: 'r>(objects: impl IntoIterator<Item = &'r NfListObject<'a>>) -> Self {
        let mut c = Content::default();
        for object in objects {
            match object {
                NfListObject::Table(_) | NfListObject::MetainfoObject(_) => {}
                NfListObject::Set(s) => {
                    let flags: BTreeSet<String> = s.flags.iter().flatten().map(|f| format!("{f:?}")).collect();
                    let kind = format!("{:?} {:?}", s.set_type, flags);
                    let elems = s.elem.iter().flat_map(|e| e.iter()).map(element_key).collect();
                    c.sets.insert(s.name.to_string(), (kind, elems));
                }
                NfListObject::Chain(ch) => {
                    let head = format!("{:?} {:?} {:?} {:?}", ch._type, ch.hook, ch.prio, ch.policy);
                    c.chains.insert(ch.name.to_string(), head);
                }
                NfListObject::Rule(r) => {
                    let expr = serde_json::to_value(&r.expr).unwrap_or(serde_json::Value::Null);
                    c.rules.entry(r.chain.to_string()).or_default().push(expr);
                }
                _ => c.other += 1,
            }
        }
        c
    }
}

/// Whether the calling thread's namespace has the table: one netlink request, no `nft` process
/// (a pass without NAT asks this every time).
fn table_exists() -> Result<bool, NatError> {
    nft_table::exists(NFPROTO_INET, TABLE).map_err(|e| NatError::Read(e.to_string()))
}

/// The current content, `None` when there is no table. A table nft lists in a form this crate
/// cannot parse (someone added something exotic) reads as "something else".
fn current() -> Result<Option<Content>, NatError> {
    if !table_exists()? {
        return Ok(None);
    }
    let raw = helper::get_current_ruleset_raw(DEFAULT_NFT, &["list", "table", "inet", TABLE])
        .map_err(|e| describe(e, NatError::Read))?;
    let parsed: Result<Nftables, _> = serde_json::from_str(&raw);
    Ok(Some(match parsed {
        Ok(n) => Content::of(n.objects.iter().filter_map(|o| match o {
            NfObject::ListObject(l) => Some(l),
            NfObject::CmdObject(_) => None,
        })),
        Err(e) => {
            tracing::warn!(error = %e, "cannot parse table inet {TABLE}; replacing it");
            Content { other: 1, ..Content::default() }
        }
    }))
}

/// The one-transaction replacement: add (cannot fail), delete, then the new content if any.
fn replace(objects: Vec<NfListObject<'static>>) -> Result<(), NatError> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    if !objects.is_empty() {
        batch.add(NfListObject::Table(table()));
        for object in objects {
            batch.add(object);
        }
    }
    helper::apply_ruleset(&batch.to_nftables()).map_err(|e| describe(e, NatError::Apply))
}

/// Makes the host's `inet trellis` table match `plan` (atomically replaced, deleted when the plan
/// is empty), in the calling thread's network namespace. Returns whether anything changed.
pub fn sync(plan: &NatPlan) -> Result<bool, NatError> {
    let desired = render(plan);
    let current = current()?;
    let changed = match (&current, desired.is_empty()) {
        (None, true) => false,
        (Some(_), true) => true,
        (None, false) => true,
        (Some(have), false) => *have != Content::of(&desired),
    };
    if changed {
        replace(desired)?;
        tracing::info!(
            nat_sources = ?plan.nat_sources,
            removed = plan.nat_sources.is_empty(),
            "replaced nftables table inet {TABLE}"
        );
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn plan(src: &[&str], all: &[&str]) -> NatPlan {
        NatPlan { nat_sources: nets(src), all_pools: nets(all) }
    }

    #[test]
    fn empty_plan_renders_nothing() {
        assert!(render(&NatPlan::default()).is_empty());
        assert!(render(&plan(&[], &["10.244.0.0/16"])).is_empty());
    }

    #[test]
    fn renders_sets_chain_and_one_rule_per_family() {
        let objects =
            render(&plan(&["10.244.0.0/16", "fd00:1::/48"], &["10.244.0.0/16", "10.245.0.0/16", "fd00:1::/48"]));
        let json = serde_json::to_value(&objects).unwrap();
        let text = json.to_string();
        for needle in [
            r#""name":"nat-sources-v4""#,
            r#""name":"all-pools-v4""#,
            r#""name":"nat-sources-v6""#,
            r#""name":"all-pools-v6""#,
            r#""type":"nat""#,
            r#""hook":"postrouting""#,
            r#""prio":100"#,
            r#""right":"@nat-sources-v6""#,
            r#""masquerade":null"#,
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        let c = Content::of(&objects);
        // Adjacent pools merge into one prefix.
        assert_eq!(c.sets["all-pools-v4"].1, BTreeSet::from(["10.244.0.0/15".to_string()]));
        assert_eq!(c.sets["nat-sources-v6"].1, BTreeSet::from(["fd00:1::/48".to_string()]));
        assert_eq!(c.rules[CHAIN].len(), 2);
        assert_eq!(c.other, 0);
    }

    #[test]
    fn only_families_with_nat_sources_get_rules() {
        let c = Content::of(&render(&plan(&["10.244.0.0/16"], &["10.244.0.0/16", "fd00:1::/48"])));
        assert_eq!(c.sets.keys().collect::<Vec<_>>(), ["all-pools-v4", "nat-sources-v4"]);
        assert_eq!(c.rules[CHAIN].len(), 1);
    }

    #[test]
    fn overlapping_pools_are_merged_for_interval_sets() {
        let c = Content::of(&render(&plan(
            &["10.244.0.0/16", "10.244.1.0/24"],
            &["10.244.0.0/16", "10.244.1.0/24", "10.245.0.0/16"],
        )));
        assert_eq!(c.sets["nat-sources-v4"].1, BTreeSet::from(["10.244.0.0/16".to_string()]));
        assert_eq!(c.sets["all-pools-v4"].1, BTreeSet::from(["10.244.0.0/15".to_string()]));
    }

    #[test]
    fn listing_forms_normalize_like_rendered_ones() {
        // What `nft -j list table` prints for a /32 element and a prefix.
        let listed: Nftables = serde_json::from_str(
            r#"{"nftables":[{"set":{"family":"inet","name":"s","table":"trellis","type":"ipv4_addr","handle":2,
               "flags":["interval"],"elem":["10.0.0.1",{"prefix":{"addr":"10.244.0.0","len":16}}]}}]}"#,
        )
        .unwrap();
        let listed = Content::of(listed.objects.iter().filter_map(|o| match o {
            NfObject::ListObject(l) => Some(l),
            NfObject::CmdObject(_) => None,
        }));
        let rendered = Content::of(&[set("s".into(), Family::V4, &nets(&["10.0.0.1/32", "10.244.0.0/16"]))]);
        assert_eq!(listed, rendered);
    }
}
