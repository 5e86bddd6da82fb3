//! `IPPool`: a range of pod addresses and how traffic between its blocks is carried.
//!
//! Calico's field names and semantics: `ipipMode` / `vxlanMode` (Never | Always | CrossSubnet, at
//! most one enabled), `natOutgoing`, `blockSize` (per-node allocation unit), `nodeSelector`,
//! `disabled` (no new allocations; existing blocks keep working), and the fields Calico added
//! later (`allowedUses`, `disableBGPExport`, `assignmentMode`), so Calico pool manifests apply
//! with only the apiVersion changed. Fields whose meaning Trellis does not implement yet are
//! accepted and reported by [`IPPoolSpec::unsupported_fields`]. Everything that can be decided
//! from the object alone is a schema or CEL rule, so `kubectl apply` fails at admission with a
//! message naming the field; checks that need other objects (overlaps) are the operator's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::EncapMode;

/// Spec of an IP pool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trellis.dev",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    singular = "ippool",
    shortname = "ipp",
    category = "trellis",
    status = "IPPoolStatus",
    printcolumn(name = "CIDR", type_ = "string", json_path = ".spec.cidr"),
    printcolumn(name = "IPIP", type_ = "string", json_path = ".spec.ipipMode"),
    printcolumn(name = "VXLAN", type_ = "string", json_path = ".spec.vxlanMode"),
    printcolumn(name = "NAT", type_ = "boolean", json_path = ".spec.natOutgoing"),
    printcolumn(name = "BLOCK", type_ = "integer", json_path = ".spec.blockSize"),
    printcolumn(
        name = "PHASE",
        type_ = "string",
        json_path = ".status.transition.phase",
        description = "phase of a live encapsulation/NAT change (Receive, Switch, Cleanup), empty when none runs"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.ready",
        description = "nodes converged / nodes selected"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp"),
    doc = "A pool of pod IP addresses, carved into per-node blocks, with its encapsulation and NAT policy."
)]
// Unknown fields: the API server rejects them under strict field validation (kubectl's
// default); `additionalProperties: false` is not allowed in a structural schema.
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(self.blockSize) || !isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))"
    ).message("spec.blockSize must be between 20 and 32 for an IPv4 pool, and between 116 and 128 for an IPv6 pool").field_path(".blockSize"),
    validation = Rule::new(
        "!has(self.blockSize) || !isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()"
    ).message("spec.blockSize must not be larger than the pool: the block prefix length must be at least the prefix length of spec.cidr").field_path(".blockSize"),
    validation = Rule::new(
        "!(has(self.ipipMode) && self.ipipMode != 'Never' && has(self.vxlanMode) && self.vxlanMode != 'Never')"
    ).message("spec.ipipMode and spec.vxlanMode cannot both be enabled: set one of them to Never (switch by setting the old one to Never in the same patch)").field_path(".vxlanMode"),
    validation = Rule::new(
        "!has(self.ipipMode) || self.ipipMode == 'Never' || !isCIDR(self.cidr) || cidr(self.cidr).ip().family() == 4"
    ).message("spec.ipipMode can only be enabled on an IPv4 pool: IP-in-IP carries IPv4 only; use vxlanMode for IPv6").field_path(".ipipMode"),
    validation = Rule::new(
        "!has(oldSelf.blockSize) || (has(self.blockSize) && self.blockSize == oldSelf.blockSize)"
    ).message("spec.blockSize is immutable: blocks are already carved out of the pool; create a new pool to change it").field_path(".blockSize").reason(Reason::FieldValueForbidden),
    validation = Rule::new(
        "!has(self.allowedUses) || !('LoadBalancer' in self.allowedUses) || self.allowedUses.all(u, u == 'LoadBalancer')"
    ).message("spec.allowedUses: LoadBalancer cannot be combined with Workload or Tunnel (as in Calico): use a separate pool for load-balancer addresses").field_path(".allowedUses"),
    validation = Rule::new(
        "!has(self.allowedUses) || !('LoadBalancer' in self.allowedUses) || ((!has(self.ipipMode) || self.ipipMode == 'Never') && (!has(self.vxlanMode) || self.vxlanMode == 'Never'))"
    ).message("spec.allowedUses: a LoadBalancer pool cannot use IP-in-IP or VXLAN (as in Calico): set ipipMode and vxlanMode to Never").field_path(".allowedUses"),
)]
pub struct IPPoolSpec {
    /// The pool's range in CIDR notation (IPv4 or IPv6), canonical (no host bits). Immutable.
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("spec.cidr must be a valid CIDR such as 10.244.0.0/16 or fd00:10:244::/56"),
        validation = Rule::new("!isCIDR(self) || string(cidr(self).masked()) == self").message("spec.cidr must be in canonical form with no host bits set (for example 10.244.0.0/16, not 10.244.1.0/16)"),
        validation = Rule::new("self == oldSelf").message("spec.cidr is immutable: create a new IPPool and migrate workloads to it").reason(Reason::FieldValueForbidden),
    )]
    #[schemars(length(max = 64))]
    pub cidr: String,

    /// Prefix length of the blocks handed to nodes (default 26 for IPv4, 122 for IPv6). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<i32>,

    /// When to encapsulate in IP-in-IP (IPv4 only). Default Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipip_mode: Option<EncapMode>,

    /// When to encapsulate in VXLAN. Default Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_mode: Option<EncapMode>,

    /// Masquerade traffic from this pool to destinations outside all pools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<bool>,

    /// Which nodes get blocks from this pool (Calico selector syntax, e.g. `all()`,
    /// `kubernetes.io/os == 'linux' && has(node-role.kubernetes.io/worker)`; default `all()`).
    /// Malformed selectors are rejected at admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(
        validation = crate::selector::cel::grammar("spec.nodeSelector"),
        validation = crate::selector::cel::parentheses("spec.nodeSelector"),
    )]
    pub node_selector: Option<String>,

    /// No new allocations from this pool; existing blocks stay routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,

    /// What the pool's addresses are for, as in Calico: Workload (pod addresses), Tunnel (node
    /// tunnel addresses), LoadBalancer (Service addresses, not allocated by Trellis yet, and not
    /// combinable with the others). Unset or empty means [Workload, Tunnel].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_uses: Option<Vec<AllowedUse>>,

    /// Calico: do not advertise this pool's routes over BGP. Trellis runs no BGP, so no pool
    /// route is advertised either way.
    #[serde(rename = "disableBGPExport", default, skip_serializing_if = "Option::is_none")]
    pub disable_bgp_export: Option<bool>,

    /// Automatic (default): addresses are handed out from the pool without being asked for.
    /// Manual (Calico): only explicit requests for the pool take addresses from it; Trellis has no
    /// explicit requests yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_mode: Option<AssignmentMode>,
}

/// One of Calico's `allowedUses` of a pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum AllowedUse {
    /// Pod addresses: the pool's node blocks become the CNI plugin's ranges on that node.
    Workload,
    /// Tunnel addresses: a node's IPIP/VXLAN device address may be taken from its block in this
    /// pool. (Intended semantics for the planner, which today takes the tunnel address from the
    /// node's lowest block whatever its pool: it must only consider blocks of pools that allow
    /// Tunnel.)
    Tunnel,
    /// Addresses for Services of type LoadBalancer. Trellis does not allocate them yet.
    LoadBalancer,
}

/// How addresses are handed out from a pool (Calico's `assignmentMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum AssignmentMode {
    /// Any allocation may take addresses from the pool.
    #[default]
    Automatic,
    /// Only explicit requests for this pool take addresses from it.
    Manual,
}

/// Observed state of an IP pool, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes selected by the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_selected: Option<i32>,
    /// Nodes that applied the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_converged: Option<i32>,
    /// `converged/selected`, for `kubectl get ippools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// The encapsulation and NAT every node runs (the result of the last completed change).
    /// Agents keep these settings while a newer spec waits for its live change to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<ActiveSettings>,
    /// A live encapsulation/NAT change in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Transition>,
    /// Ready, Progressing, Degraded, CIDROverlap ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The settings a live change is about (see docs/live-changes.md).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActiveSettings {
    /// The pool generation these settings come from.
    pub generation: i64,
    /// `None`, `IPIP/Always`, `IPIP/CrossSubnet`, `VXLAN/Always` or `VXLAN/CrossSubnet`.
    pub encapsulation: String,
    pub nat_outgoing: bool,
}

/// A live encapsulation/NAT change (see docs/live-changes.md): Receive (every node can receive
/// the new settings, senders use the old ones), Switch (senders use the new ones, the old
/// receive side stays), Cleanup (the old receive side is removed).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// Encapsulation being left, e.g. `IPIP/CrossSubnet`.
    pub from: String,
    /// Encapsulation being entered, e.g. `VXLAN/Always`.
    pub to: String,
    /// natOutgoing being left.
    #[serde(default)]
    pub from_nat_outgoing: bool,
    /// natOutgoing being entered.
    #[serde(default)]
    pub to_nat_outgoing: bool,
    /// The pool generation being entered.
    #[serde(default)]
    pub generation: i64,
    /// Receive, Switch or Cleanup.
    pub phase: String,
    /// When the change started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// When the current phase started (the timeout for nodes to report counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_started: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// IPPool annotation choosing how encapsulation/NAT changes are rolled out: `phased` (the
/// default: the three phases, driven by the operator) or `direct` (every agent applies the new
/// spec on its own, as soon as it sees it; for comparison and as an escape hatch).
pub const LIVE_CHANGE_ANNOTATION: &str = "trellis.dev/live-change";

impl IPPool {
    /// Whether changes of this pool go through the three phases (see [`LIVE_CHANGE_ANNOTATION`]).
    pub fn phased(&self) -> bool {
        self.metadata.annotations.as_ref().and_then(|a| a.get(LIVE_CHANGE_ANNOTATION)).map(String::as_str)
            != Some("direct")
    }
}

impl IPPoolSpec {
    /// The effective IP-in-IP mode.
    pub fn ipip(&self) -> EncapMode {
        self.ipip_mode.unwrap_or_default()
    }
    /// The effective VXLAN mode.
    pub fn vxlan(&self) -> EncapMode {
        self.vxlan_mode.unwrap_or_default()
    }

    /// The encapsulation as one word, as statuses write it: `None`, `IPIP/<mode>`,
    /// `VXLAN/<mode>` (IP-in-IP first if both are enabled, which admission forbids).
    pub fn encapsulation(&self) -> String {
        match (self.ipip(), self.vxlan()) {
            (EncapMode::Never, EncapMode::Never) => "None".to_string(),
            (EncapMode::Never, vxlan) => format!("VXLAN/{vxlan}"),
            (ipip, _) => format!("IPIP/{ipip}"),
        }
    }

    /// The settings a live change is about, as [`ActiveSettings`] of `generation`.
    pub fn live_settings(&self, generation: i64) -> ActiveSettings {
        ActiveSettings {
            generation,
            encapsulation: self.encapsulation(),
            nat_outgoing: self.nat_outgoing.unwrap_or(false),
        }
    }

    /// The effective allowed uses, sorted and without duplicates: `allowedUses`, or Calico's
    /// default `[Workload, Tunnel]` when it is unset or empty.
    pub fn uses(&self) -> Vec<AllowedUse> {
        match self.allowed_uses.as_deref() {
            None | Some([]) => DEFAULT_ALLOWED_USES.to_vec(),
            Some(uses) => {
                let mut uses = uses.to_vec();
                uses.sort();
                uses.dedup();
                uses
            }
        }
    }

    /// The pool's node blocks give pod addresses (the CNI ranges).
    pub fn allows_workload(&self) -> bool {
        self.uses().contains(&AllowedUse::Workload)
    }

    /// A node's tunnel address may come from its block in this pool.
    pub fn allows_tunnel(&self) -> bool {
        self.uses().contains(&AllowedUse::Tunnel)
    }

    /// The pool is for Service LoadBalancer addresses (exclusive of the other uses).
    pub fn allows_load_balancer(&self) -> bool {
        self.uses().contains(&AllowedUse::LoadBalancer)
    }

    /// The effective assignment mode.
    pub fn assignment(&self) -> AssignmentMode {
        self.assignment_mode.unwrap_or_default()
    }

    /// Addresses may be handed out without an explicit request for this pool (Automatic). A
    /// Manual pool gets no blocks and no CNI ranges until Trellis supports explicit requests.
    pub fn assigns_automatically(&self) -> bool {
        self.assignment() == AssignmentMode::Automatic
    }

    /// Settings Trellis accepts but does not act on (yet), as messages for the pool's status
    /// condition and Event (empty when there are none).
    pub fn unsupported_fields(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.allows_load_balancer() {
            out.push(
                "spec.allowedUses LoadBalancer: Trellis does not allocate Service LoadBalancer addresses yet; this pool gives none"
                    .to_string(),
            );
        }
        if let Some(disable) = self.disable_bgp_export {
            out.push(format!(
                "spec.disableBGPExport: {disable} has no effect: Trellis runs no BGP, so no pool route is advertised either way"
            ));
        }
        if self.assignment() == AssignmentMode::Manual {
            out.push(
                "spec.assignmentMode Manual: Trellis has no explicit per-pod or per-service pool requests yet, so this pool hands out no addresses"
                    .to_string(),
            );
        }
        out
    }
}

/// Calico's default `allowedUses`.
pub const DEFAULT_ALLOWED_USES: [AllowedUse; 2] = [AllowedUse::Workload, AllowedUse::Tunnel];

#[cfg(test)]
mod tests {
    use super::AllowedUse::{LoadBalancer, Tunnel, Workload};
    use super::*;

    fn pool(f: impl FnOnce(&mut IPPoolSpec)) -> IPPoolSpec {
        let mut spec = IPPoolSpec { cidr: "10.0.0.0/16".into(), ..Default::default() };
        f(&mut spec);
        spec
    }

    #[test]
    fn allowed_uses_default_to_workload_and_tunnel() {
        /// allowedUses, uses(), and whether workload, tunnel, load balancer are allowed.
        type Row = (Option<Vec<AllowedUse>>, &'static [AllowedUse], bool, bool, bool);
        let table: &[Row] = &[
            (None, &[Workload, Tunnel], true, true, false),
            (Some(vec![]), &[Workload, Tunnel], true, true, false),
            (Some(vec![Workload]), &[Workload], true, false, false),
            (Some(vec![Tunnel]), &[Tunnel], false, true, false),
            (Some(vec![Tunnel, Workload, Tunnel]), &[Workload, Tunnel], true, true, false),
            (Some(vec![LoadBalancer]), &[LoadBalancer], false, false, true),
        ];
        for (given, uses, workload, tunnel, lb) in table {
            let spec = pool(|p| p.allowed_uses = given.clone());
            assert_eq!(spec.uses(), *uses, "{given:?}");
            assert_eq!(
                (spec.allows_workload(), spec.allows_tunnel(), spec.allows_load_balancer()),
                (*workload, *tunnel, *lb),
                "{given:?}"
            );
        }
    }

    #[test]
    fn encapsulation_is_one_word() {
        assert_eq!(pool(|_| {}).encapsulation(), "None");
        assert_eq!(pool(|p| p.vxlan_mode = Some(EncapMode::CrossSubnet)).encapsulation(), "VXLAN/CrossSubnet");
        assert_eq!(pool(|p| p.ipip_mode = Some(EncapMode::Always)).encapsulation(), "IPIP/Always");
        let s = pool(|p| {
            p.vxlan_mode = Some(EncapMode::Never);
            p.nat_outgoing = Some(true);
        });
        assert_eq!(
            s.live_settings(4),
            ActiveSettings { generation: 4, encapsulation: "None".into(), nat_outgoing: true }
        );
    }

    #[test]
    fn changes_are_phased_unless_the_pool_says_direct() {
        let mut p = IPPool::new("p", pool(|_| {}));
        assert!(p.phased());
        p.metadata.annotations = Some([(LIVE_CHANGE_ANNOTATION.to_string(), "direct".to_string())].into());
        assert!(!p.phased());
        p.metadata.annotations = Some([(LIVE_CHANGE_ANNOTATION.to_string(), "phased".to_string())].into());
        assert!(p.phased());
    }

    #[test]
    fn assignment_defaults_to_automatic() {
        assert!(pool(|_| {}).assigns_automatically());
        assert!(pool(|p| p.assignment_mode = Some(AssignmentMode::Automatic)).assigns_automatically());
        assert!(!pool(|p| p.assignment_mode = Some(AssignmentMode::Manual)).assigns_automatically());
    }

    #[test]
    fn what_trellis_does_not_do_is_reported() {
        assert!(pool(|_| {}).unsupported_fields().is_empty());
        assert!(pool(|p| p.allowed_uses = Some(vec![Workload])).unsupported_fields().is_empty());
        assert!(pool(|p| p.assignment_mode = Some(AssignmentMode::Automatic)).unsupported_fields().is_empty());
        let table: &[(IPPoolSpec, &str)] = &[
            (pool(|p| p.allowed_uses = Some(vec![LoadBalancer])), "spec.allowedUses LoadBalancer: "),
            (pool(|p| p.disable_bgp_export = Some(true)), "spec.disableBGPExport: true has no effect"),
            (pool(|p| p.disable_bgp_export = Some(false)), "spec.disableBGPExport: false has no effect"),
            (pool(|p| p.assignment_mode = Some(AssignmentMode::Manual)), "spec.assignmentMode Manual: "),
        ];
        for (spec, want) in table {
            let got = spec.unsupported_fields();
            assert!(got.len() == 1 && got[0].starts_with(want), "{spec:?}: {got:?}");
        }
        let all = pool(|p| {
            p.allowed_uses = Some(vec![LoadBalancer]);
            p.disable_bgp_export = Some(true);
            p.assignment_mode = Some(AssignmentMode::Manual);
        });
        assert_eq!(all.unsupported_fields().len(), 3);
    }

    #[test]
    fn calico_field_names_on_the_wire() {
        let spec = pool(|p| {
            p.allowed_uses = Some(vec![Workload, Tunnel, LoadBalancer]);
            p.disable_bgp_export = Some(true);
            p.assignment_mode = Some(AssignmentMode::Manual);
        });
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["allowedUses"], serde_json::json!(["Workload", "Tunnel", "LoadBalancer"]));
        assert_eq!(json["disableBGPExport"], true);
        assert_eq!(json["assignmentMode"], "Manual");
    }
}
