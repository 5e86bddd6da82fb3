//! The compiler: [`PolicyInputs`] → [`Ruleset`] (pure).
//!
//! For every pod of this node and each direction: the Kubernetes NetworkPolicies selecting it
//! ([`super::kubernetes`]) become one chain of allow rules ending in `drop` (only when at least
//! one policy isolates the pod in that direction); the GlobalNetworkPolicies selecting it
//! ([`super::global`]) become a chain in front of it whose Pass continues in the Kubernetes
//! chain. The pod's host-side interface is mapped to the first of the two. Peers are named
//! sets keyed by what selects them ([`Group`]), filled with the selected pods' addresses.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use trellis_api::Selector;

use super::inputs::{Labels, Pod, PolicyInputs, Protocol};
use super::label_selector::LabelSel;
use super::problem::{PolicyRef, Problem};
use super::rule::{Alternatives, Cond, End, Family, Line, Verdict};
use super::ruleset::{NamedSet, Ruleset, SetKind};

/// The label Kubernetes puts on every namespace (added here too when missing).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Calico's label for a pod's namespace, which Calico selectors can use.
pub const CALICO_NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Calico's orchestrator label (`k8s` for every pod).
pub const CALICO_ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";

/// A traffic direction relative to a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The spec field of its rules (`ingress` / `egress`).
    pub fn field(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
    pub fn short(self) -> &'static str {
        match self {
            Direction::Ingress => "in",
            Direction::Egress => "eg",
        }
    }
    /// The end of a packet where the other party is.
    pub fn remote(self) -> End {
        match self {
            Direction::Ingress => End::Source,
            Direction::Egress => End::Destination,
        }
    }
    /// The end of a packet where the policed pod is.
    pub fn local(self) -> End {
        match self {
            Direction::Ingress => End::Destination,
            Direction::Egress => End::Source,
        }
    }
}

/// The namespaces a Kubernetes peer's pods may be in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespaces {
    /// The policy's own namespace.
    Named(String),
    /// Namespaces whose labels match.
    Selected(LabelSel),
}

/// A group of pods a set holds the addresses of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Group {
    /// Every pod.
    All,
    /// Kubernetes: pods matching `pods` in `namespaces`.
    Kubernetes { namespaces: Namespaces, pods: LabelSel },
    /// Calico: pods whose labels (plus the Calico namespace labels) match `pods`, in
    /// namespaces matching `namespaces`.
    Calico { pods: Option<Selector>, namespaces: Option<Selector> },
}

/// The compiler's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub ruleset: Ruleset,
    /// Policies or parts of them that could not be used (with why), one per problem.
    pub warnings: Vec<Problem>,
}

/// State while compiling: the inputs, the sets made so far, warnings.
pub struct Ctx<'a> {
    inputs: &'a PolicyInputs,
    namespaces: BTreeMap<String, Labels>,
    sets: BTreeMap<String, NamedSet>,
    warnings: Vec<Problem>,
}

fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(6).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl<'a> Ctx<'a> {
    fn new(inputs: &'a PolicyInputs) -> Ctx<'a> {
        let mut namespaces = inputs.namespaces.clone();
        for (name, labels) in &mut namespaces {
            labels.entry(NAMESPACE_NAME_LABEL.to_string()).or_insert_with(|| name.clone());
        }
        Ctx { inputs, namespaces, sets: BTreeMap::new(), warnings: Vec::new() }
    }

    /// Records that part of `policy` cannot be enforced as written.
    pub fn warn(&mut self, policy: &PolicyRef, message: String) {
        self.warnings.push(Problem { policy: policy.clone(), message });
    }

    pub fn inputs(&self) -> &'a PolicyInputs {
        self.inputs
    }

    /// A namespace's labels (a namespace not (yet) known has only its name label).
    pub fn namespace_labels(&self, namespace: &str) -> Labels {
        self.namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| Labels::from([(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())]))
    }

    /// A pod's labels as Calico selectors see them.
    pub fn calico_labels(pod: &Pod) -> Labels {
        let mut labels = pod.labels.clone();
        labels.insert(CALICO_NAMESPACE_LABEL.to_string(), pod.namespace.clone());
        labels.insert(CALICO_ORCHESTRATOR_LABEL.to_string(), "k8s".to_string());
        labels
    }

    fn in_group(&self, group: &Group, pod: &Pod) -> bool {
        match group {
            Group::All => true,
            Group::Kubernetes { namespaces, pods } => {
                let ns_ok = match namespaces {
                    Namespaces::Named(n) => *n == pod.namespace,
                    Namespaces::Selected(sel) => sel.matches(&self.namespace_labels(&pod.namespace)),
                };
                ns_ok && pods.matches(&pod.labels)
            }
            Group::Calico { pods, namespaces } => {
                pods.as_ref().is_none_or(|s| s.matches(&Self::calico_labels(pod)))
                    && namespaces.as_ref().is_none_or(|s| s.matches(&self.namespace_labels(&pod.namespace)))
            }
        }
    }

    fn add_set(&mut self, name: String, kind: SetKind, elements: impl Iterator<Item = String>) {
        self.sets.entry(name).or_insert_with(|| NamedSet { kind, elements: elements.collect() });
    }

    /// Conditions "the address at `end` belongs to a pod of `group`" (one alternative per family).
    pub fn group_addresses(&mut self, end: End, group: &Group) -> Alternatives {
        self.group_set(end, group, false)
    }

    /// Conditions "the address at `end` belongs to no pod of `group`" (one alternative per
    /// family; addresses of no pod at all hold too).
    pub fn not_group_addresses(&mut self, end: End, group: &Group) -> Alternatives {
        self.group_set(end, group, true)
    }

    fn group_set(&mut self, end: End, group: &Group, negated: bool) -> Alternatives {
        let id = hash(&format!("{group:?}"));
        let mut out = Vec::new();
        for family in Family::BOTH {
            let name = format!("pods-{id}-{}", family.suffix());
            out.push(vec![Cond::InSet { end, family, set: name.clone(), negated }]);
            // Filled once per compile: many pods' rules name the same group.
            if self.sets.contains_key(&name) {
                continue;
            }
            let members: Vec<String> = self
                .inputs
                .pods
                .iter()
                .filter(|p| self.in_group(group, p))
                .flat_map(|p| p.ips.iter().filter(|ip| Family::of_addr(ip) == family).map(ToString::to_string))
                .collect();
            self.add_set(name, SetKind::Addresses(family), members.into_iter());
        }
        Alternatives(out)
    }

    /// Conditions "the address at `end` is a pod of `group` and the port at `end` is its
    /// container port named `port` with `protocol`" (`negated`: not so; one alternative per
    /// family).
    pub fn group_named_port(
        &mut self,
        end: End,
        group: &Group,
        port: &str,
        protocol: Protocol,
        negated: bool,
    ) -> Alternatives {
        let id = hash(&format!("{group:?} {port} {protocol:?}"));
        let mut out = Vec::new();
        for family in Family::BOTH {
            let name = format!("ports-{id}-{}", family.suffix());
            out.push(vec![Cond::AddrProtoPort { end, family, set: name.clone(), negated }]);
            if self.sets.contains_key(&name) {
                continue;
            }
            let members: Vec<String> = self
                .inputs
                .pods
                .iter()
                .filter(|p| self.in_group(group, p))
                .flat_map(|p| {
                    let number = p.ports.iter().find(|np| np.name == port && np.protocol == protocol).map(|np| np.port);
                    p.ips
                        .iter()
                        .filter(|ip| Family::of_addr(ip) == family)
                        .filter_map(move |ip| number.map(|n| format!("{ip} . {} . {n}", protocol.nft())))
                })
                .collect();
            self.add_set(name, SetKind::NamedPorts(family), members.into_iter());
        }
        Alternatives(out)
    }
}

/// A chain named after its rules (so equal rule lists share one chain).
fn chain(prefix: &str, lines: Vec<Line>, chains: &mut BTreeMap<String, Vec<Line>>) -> String {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let name = format!("{prefix}-{}", hash(&text));
    chains.entry(name.clone()).or_insert(lines);
    name
}

/// Compiles the inputs into the desired table. Pure.
pub fn compile(inputs: &PolicyInputs) -> Compiled {
    let mut ctx = Ctx::new(inputs);
    let mut ruleset = Ruleset::default();
    let globals = super::global::prepare(&mut ctx);
    for local in &inputs.local {
        let Some(pod) = inputs.pods.iter().find(|p| p.namespace == local.namespace && p.name == local.name) else {
            continue;
        };
        for direction in [Direction::Ingress, Direction::Egress] {
            let kubernetes = super::kubernetes::lines(&mut ctx, pod, direction).map(|mut lines| {
                lines.push(Line::new(vec![], Verdict::Drop));
                chain(&format!("k8s-{}", direction.short()), lines, &mut ruleset.chains)
            });
            let global =
                super::global::lines(&mut ctx, &globals, pod, direction, kubernetes.as_deref()).map(|mut lines| {
                    lines.push(Line::new(vec![], Verdict::Drop));
                    chain(&format!("gnp-{}", direction.short()), lines, &mut ruleset.chains)
                });
            if let Some(entry) = global.or(kubernetes) {
                let map = match direction {
                    Direction::Ingress => &mut ruleset.ingress,
                    Direction::Egress => &mut ruleset.egress,
                };
                map.insert(local.interface.clone(), entry);
            }
        }
    }
    ruleset.sets = std::mem::take(&mut ctx.sets);
    // One warning per problem, not per pod it was met for.
    let mut seen = std::collections::BTreeSet::new();
    let warnings = ctx.warnings.into_iter().filter(|w| seen.insert(w.clone())).collect();
    Compiled { ruleset, warnings }
}
