//! Which IPPools an Installation asks for, as a pure decision: create the missing ones, and
//! carry a later change of an Installation pool entry to its IPPool without ever reverting a
//! direct `kubectl patch ippool`.
//!
//! The rule that makes both possible: the operator remembers, in an annotation on the IPPool,
//! the Installation entry it last carried ([`MEMORY_ANNOTATION`]). On every reconcile it carries
//! only the Installation fields whose value differs from that memory, i.e. fields the user
//! changed in the Installation since. A field someone patched on the IPPool directly is not in
//! that set unless the Installation's value for it changes too, so the patch sticks (Tigera's
//! operator instead re-applies the whole pool and silently reverts such patches).
//!
//! Pools are matched to entries by CIDR (immutable on both sides). An IPPool with the entry's
//! CIDR that the operator did not create is the user's and is left alone; a removed entry
//! leaves its IPPool in place (its blocks may be in use).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{Map, Value, json};
use trellis_api::defaults;
use trellis_api::installation::{Encapsulation, InstallationPool, NatOutgoing};
use trellis_api::ip_pool::{IPPool, IPPoolSpec};
use trellis_api::ipam_block::block_name;

/// Label on IPPools the Installation created.
pub const CREATED_BY_LABEL: &str = "trellis.dev/created-by";
/// Value of [`CREATED_BY_LABEL`].
pub const CREATED_BY_INSTALLATION: &str = "installation";
/// Annotation holding the (defaulted) Installation entry last carried to the IPPool, as JSON.
pub const MEMORY_ANNOTATION: &str = "trellis.dev/installation-pool";
/// Field manager of the operator's writes to IPPool specs.
pub const FIELD_MANAGER: &str = "trellis-operator-installation";

/// An IPPool as the decision sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExistingPool {
    pub name: String,
    pub spec: IPPoolSpec,
    pub created_by_installation: bool,
    /// The Installation entry last carried, if the annotation is present and readable.
    pub memory: Option<InstallationPool>,
    pub resource_version: Option<String>,
}

impl ExistingPool {
    pub fn from_ippool(pool: &IPPool) -> Self {
        let meta = &pool.metadata;
        ExistingPool {
            name: meta.name.clone().unwrap_or_default(),
            spec: pool.spec.clone(),
            created_by_installation: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(CREATED_BY_LABEL))
                .is_some_and(|v| v == CREATED_BY_INSTALLATION),
            memory: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(MEMORY_ANNOTATION))
                .and_then(|m| serde_json::from_str(m).ok()),
            resource_version: meta.resource_version.clone(),
        }
    }
}

/// What to do for one Installation pool entry.
#[derive(Clone, Debug, PartialEq)]
pub enum PoolStep {
    /// No IPPool has the entry's CIDR: create one.
    Create { name: String, spec: IPPoolSpec, memory: InstallationPool },
    /// The entry changed since it was last carried: merge-patch exactly these spec fields.
    Carry {
        name: String,
        /// The `spec` part of the merge patch (only the fields to carry).
        spec_patch: Map<String, Value>,
        /// Installation fields carried, for the Event (`encapsulation`, `natOutgoing`, ...).
        fields: Vec<&'static str>,
        memory: InstallationPool,
        resource_version: Option<String>,
    },
    /// Nothing to carry; remember the entry if the memory was missing (adopts the pool as is).
    Unchanged { name: String, remember: Option<InstallationPool>, resource_version: Option<String> },
    /// An IPPool with this CIDR exists but the Installation did not create it: the user's.
    NotOurs { name: String, cidr: String },
    /// The entry changes something that cannot change on an existing pool.
    Immutable { name: String, field: &'static str, message: String },
}

/// The merge patch body for a Carry or for remembering: annotation + spec fields, guarded by
/// the resourceVersion read (the server refuses it if the pool changed in between).
pub fn merge_patch(
    spec_patch: &Map<String, Value>,
    memory: &InstallationPool,
    resource_version: Option<&str>,
) -> Value {
    let mut metadata = json!({
        "annotations": { MEMORY_ANNOTATION: serde_json::to_string(memory).unwrap_or_default() },
    });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    let mut patch = json!({ "metadata": metadata });
    if !spec_patch.is_empty() {
        patch["spec"] = Value::Object(spec_patch.clone());
    }
    patch
}

/// Name of a new IPPool: Calico's `default-ipv4-ippool` / `default-ipv6-ippool` for the first
/// entry of a family (unless that name is taken), else derived from the CIDR
/// (`ipv4-ippool-10-245-0-0-16`), which is stable however the entries are reordered.
pub fn new_pool_name(cidr: &IpNet, first_of_family: bool, taken: &dyn Fn(&str) -> bool) -> String {
    let calico = defaults::ip_pool_name(cidr, 0);
    if first_of_family && !taken(&calico) {
        return calico;
    }
    let family = match cidr {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    };
    format!("{family}-ippool-{}", block_name(cidr))
}

/// The steps for every entry of the defaulted Installation pools, in entry order.
pub fn plan(entries: &[InstallationPool], existing: &[ExistingPool]) -> Vec<PoolStep> {
    let mut names: Vec<String> = existing.iter().map(|p| p.name.clone()).collect();
    let mut seen_family: BTreeMap<&'static str, ()> = BTreeMap::new();
    let mut steps = Vec::new();
    for entry in entries {
        let entry = defaults::installation_pool(entry);
        let Ok(cidr) = entry.cidr.parse::<IpNet>() else { continue };
        let family = if cidr.addr().is_ipv4() { "v4" } else { "v6" };
        let first_of_family = seen_family.insert(family, ()).is_none();
        let found = existing.iter().find(|p| p.spec.cidr.parse::<IpNet>().ok() == Some(cidr));
        let step = match found {
            None => {
                let name = new_pool_name(&cidr, first_of_family, &|n| names.iter().any(|x| x == n));
                names.push(name.clone());
                PoolStep::Create { name, spec: defaults::ip_pool_from_installation(&entry), memory: entry }
            }
            Some(pool) if !pool.created_by_installation => {
                PoolStep::NotOurs { name: pool.name.clone(), cidr: entry.cidr.clone() }
            }
            Some(pool) => carry(pool, entry),
        };
        steps.push(step);
    }
    steps
}

/// The decision for an IPPool the Installation created: carry only what changed since the last
/// carry.
pub fn carry(pool: &ExistingPool, entry: InstallationPool) -> PoolStep {
    let name = pool.name.clone();
    let resource_version = pool.resource_version.clone();
    let Some(memory) = pool.memory.as_ref().map(defaults::installation_pool) else {
        // No memory (annotation removed): carrying anything could revert a patch; adopt as is.
        return PoolStep::Unchanged { name, remember: Some(entry), resource_version };
    };
    if entry.block_size != memory.block_size && entry.block_size != pool.spec.block_size {
        return PoolStep::Immutable {
            name: name.clone(),
            field: "blockSize",
            message: format!(
                "the Installation asks for blockSize {} on IPPool {name}, which has {}; blockSize cannot change on an existing pool: create a new pool instead",
                entry.block_size.unwrap_or_default(),
                pool.spec.block_size.map(|b| b.to_string()).unwrap_or_else(|| "none".into()),
            ),
        };
    }
    let mut spec_patch = Map::new();
    let mut fields = Vec::new();
    if entry.encapsulation != memory.encapsulation {
        // One Installation field sets both modes: carry them together, or the pool could end
        // up with IPIP and VXLAN both enabled.
        let (ipip, vxlan) = defaults::modes(entry.encapsulation.unwrap_or(Encapsulation::None));
        spec_patch.insert("ipipMode".into(), json!(ipip));
        spec_patch.insert("vxlanMode".into(), json!(vxlan));
        fields.push("encapsulation");
    }
    if entry.nat_outgoing != memory.nat_outgoing {
        spec_patch.insert("natOutgoing".into(), json!(entry.nat_outgoing == Some(NatOutgoing::Enabled)));
        fields.push("natOutgoing");
    }
    if entry.node_selector != memory.node_selector {
        spec_patch.insert("nodeSelector".into(), json!(entry.node_selector));
        fields.push("nodeSelector");
    }
    if fields.is_empty() {
        let remember = (memory != entry).then_some(entry);
        return PoolStep::Unchanged { name, remember, resource_version };
    }
    PoolStep::Carry { name, spec_patch, fields, memory: entry, resource_version }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::EncapMode;

    fn entry(cidr: &str, encapsulation: Encapsulation) -> InstallationPool {
        defaults::installation_pool(&InstallationPool {
            cidr: cidr.into(),
            encapsulation: Some(encapsulation),
            ..Default::default()
        })
    }

    /// The pool as the operator created it from `e`, then patched by the user with `patch`.
    fn created(name: &str, e: &InstallationPool, patch: impl FnOnce(&mut IPPoolSpec)) -> ExistingPool {
        let mut spec = defaults::ip_pool_from_installation(e);
        patch(&mut spec);
        ExistingPool {
            name: name.into(),
            spec,
            created_by_installation: true,
            memory: Some(e.clone()),
            resource_version: Some("7".into()),
        }
    }

    #[test]
    fn missing_pools_are_created_with_calico_names() {
        let entries = [
            entry("10.244.0.0/16", Encapsulation::Vxlan),
            entry("10.245.0.0/16", Encapsulation::Ipip),
            entry("fd00:10:244::/56", Encapsulation::None),
        ];
        let steps = plan(&entries, &[]);
        let names: Vec<&str> = steps
            .iter()
            .map(|s| match s {
                PoolStep::Create { name, .. } => name.as_str(),
                other => panic!("expected Create, got {other:?}"),
            })
            .collect();
        assert_eq!(names, ["default-ipv4-ippool", "ipv4-ippool-10-245-0-0-16", "default-ipv6-ippool"]);
        let PoolStep::Create { spec, memory, .. } = &steps[0] else { unreachable!() };
        assert_eq!((spec.ipip_mode, spec.vxlan_mode), (Some(EncapMode::Never), Some(EncapMode::Always)));
        assert_eq!(spec.block_size, Some(26));
        assert_eq!(memory, &entries[0]);
    }

    #[test]
    fn taken_calico_name_falls_back_to_the_cidr_name() {
        let other = ExistingPool {
            name: "default-ipv4-ippool".into(),
            spec: IPPoolSpec { cidr: "10.9.0.0/16".into(), ..Default::default() },
            created_by_installation: false,
            memory: None,
            resource_version: None,
        };
        let steps = plan(&[entry("10.244.0.0/16", Encapsulation::Vxlan)], &[other]);
        assert!(matches!(&steps[0], PoolStep::Create { name, .. } if name == "ipv4-ippool-10-244-0-0-16"), "{steps:?}");
    }

    #[test]
    fn user_patch_of_a_pool_is_never_reverted() {
        let e = entry("10.244.0.0/16", Encapsulation::Ipip);
        // kubectl patch ippool: IPIP -> VXLAN, NAT off.
        let pool = created("default-ipv4-ippool", &e, |s| {
            s.ipip_mode = Some(EncapMode::Never);
            s.vxlan_mode = Some(EncapMode::Always);
            s.nat_outgoing = Some(false);
        });
        let steps = plan(std::slice::from_ref(&e), std::slice::from_ref(&pool));
        assert!(matches!(&steps[0], PoolStep::Unchanged { remember: None, .. }), "{steps:?}");

        // The Installation changes another field of the entry: only that one is carried.
        let mut e2 = e.clone();
        e2.node_selector = Some("zone == 'a'".into());
        let steps = plan(&[e2.clone()], &[pool]);
        let PoolStep::Carry { spec_patch, fields, memory, resource_version, .. } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(fields, &["nodeSelector"]);
        assert_eq!(Value::Object(spec_patch.clone()), json!({"nodeSelector": "zone == 'a'"}));
        assert_eq!(memory, &e2);
        assert_eq!(resource_version.as_deref(), Some("7"));
    }

    #[test]
    fn installation_change_is_carried_field_by_field() {
        let e = entry("10.244.0.0/16", Encapsulation::Ipip);
        let pool = created("default-ipv4-ippool", &e, |_| {});
        let mut e2 = entry("10.244.0.0/16", Encapsulation::VxlanCrossSubnet);
        e2.nat_outgoing = Some(NatOutgoing::Disabled);
        let PoolStep::Carry { spec_patch, fields, .. } = carry(&pool, e2) else { panic!() };
        assert_eq!(fields, &["encapsulation", "natOutgoing"]);
        assert_eq!(
            Value::Object(spec_patch),
            json!({"ipipMode": "Never", "vxlanMode": "CrossSubnet", "natOutgoing": false})
        );
    }

    #[test]
    fn encapsulation_is_carried_as_both_modes_even_when_one_equals_the_memory() {
        // Memory IPIP (Always/Never), user patched to VXLAN (Never/Always), the Installation
        // moves to IPIPCrossSubnet (CrossSubnet/Never): carrying only ipipMode would leave both
        // enabled, which admission rejects.
        let e = entry("10.244.0.0/16", Encapsulation::Ipip);
        let pool = created("p", &e, |s| {
            s.ipip_mode = Some(EncapMode::Never);
            s.vxlan_mode = Some(EncapMode::Always);
        });
        let PoolStep::Carry { spec_patch, .. } = carry(&pool, entry("10.244.0.0/16", Encapsulation::IpipCrossSubnet))
        else {
            panic!()
        };
        assert_eq!(Value::Object(spec_patch), json!({"ipipMode": "CrossSubnet", "vxlanMode": "Never"}));
    }

    #[test]
    fn pool_without_memory_is_adopted_not_overwritten() {
        let e = entry("10.244.0.0/16", Encapsulation::Ipip);
        let mut pool = created("p", &e, |s| s.nat_outgoing = Some(false));
        pool.memory = None;
        let e2 = entry("10.244.0.0/16", Encapsulation::Vxlan);
        assert_eq!(
            carry(&pool, e2.clone()),
            PoolStep::Unchanged { name: "p".into(), remember: Some(e2), resource_version: Some("7".into()) }
        );
    }

    #[test]
    fn foreign_pool_with_the_same_cidr_is_left_alone() {
        let e = entry("10.244.0.0/16", Encapsulation::Ipip);
        let mut pool = created("mine", &e, |_| {});
        pool.created_by_installation = false;
        assert_eq!(plan(&[e], &[pool]), [PoolStep::NotOurs { name: "mine".into(), cidr: "10.244.0.0/16".into() }]);
    }

    #[test]
    fn block_size_change_is_refused_with_a_reason() {
        let e = entry("10.244.0.0/16", Encapsulation::Ipip);
        let pool = created("p", &e, |_| {});
        let mut e2 = e.clone();
        e2.block_size = Some(24);
        let PoolStep::Immutable { field, message, .. } = carry(&pool, e2) else { panic!() };
        assert_eq!(field, "blockSize");
        assert!(message.contains("blockSize 24") && message.contains("has 26"), "{message}");
    }

    #[test]
    fn merge_patch_guards_with_the_resource_version_and_remembers() {
        let e = entry("10.244.0.0/16", Encapsulation::Ipip);
        let mut spec = Map::new();
        spec.insert("natOutgoing".into(), json!(false));
        let p = merge_patch(&spec, &e, Some("42"));
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["spec"], json!({"natOutgoing": false}));
        let remembered: InstallationPool =
            serde_json::from_str(p["metadata"]["annotations"][MEMORY_ANNOTATION].as_str().unwrap()).unwrap();
        assert_eq!(remembered, e);
        assert!(merge_patch(&Map::new(), &e, None).get("spec").is_none());
    }
}
