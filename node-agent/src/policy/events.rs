//! Warning Events on policies the agent cannot enforce as written ([`Problem`]s), instead of
//! only a log line on each node.
//!
//! Every agent compiles the same policies, so every agent meets the same problems. An Event's
//! name is derived from the policy's uid, its generation and the problem, and it is *created*
//! (never updated): the first agent to meet a problem creates it, every other agent (and every
//! later pass) gets 409 and counts it as reported. So there is one Event per problem per policy
//! generation in the whole cluster; a changed policy that still has the problem gets a new one.
//! A failed create is tried again at the next pass that still has the problem.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use sha2::{Digest, Sha256};

use super::problem::Problem;

/// The Event's reason.
pub const REASON: &str = "PolicyNotEnforced";
/// The Event's action.
pub const ACTION: &str = "Compile";
/// The Event's reporting controller.
pub const CONTROLLER: &str = "trellis.dev/agent";
/// Where Events about cluster-scoped policies go (as kubectl and the kubelet do for Nodes).
pub const CLUSTER_SCOPED_NAMESPACE: &str = "default";

/// The Event for `problem`, reported by node `node` (pure; its name is the same on every node).
pub fn event(problem: &Problem, node: &str, now: MicroTime) -> Event {
    let p = &problem.policy;
    let key = format!(
        "{:?}/{:?}/{}/{}/{}",
        p.kind,
        p.namespace,
        p.name,
        p.uid.as_deref().unwrap_or(""),
        p.generation.unwrap_or(0)
    );
    let digest = Sha256::digest(format!("{key}\n{}", problem.message).as_bytes());
    let id: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut base: String = p.name.chars().take(200).collect();
    base = base.trim_end_matches(['.', '-']).to_string();
    let mut note = format!("{} (generation {}): {}", p, p.generation.unwrap_or(0), problem.message);
    if note.len() > 1024 {
        let mut end = 1021;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{base}.policy-{id}")),
            namespace: Some(p.namespace.clone().unwrap_or_else(|| CLUSTER_SCOPED_NAMESPACE.to_string())),
            ..Default::default()
        },
        event_time: Some(now),
        type_: Some("Warning".into()),
        reason: Some(REASON.into()),
        action: Some(ACTION.into()),
        note: Some(note),
        reporting_controller: Some(CONTROLLER.into()),
        reporting_instance: Some(node.chars().take(128).collect()),
        regarding: Some(ObjectReference {
            api_version: Some(p.kind.api_version().into()),
            kind: Some(p.kind.name().into()),
            namespace: p.namespace.clone(),
            name: Some(p.name.clone()),
            uid: p.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates the Events of one node's problems, each once.
pub struct Reporter {
    client: Client,
    node: String,
    /// Event names created (by this agent or, per 409, another) for problems still present.
    reported: BTreeSet<String>,
}

impl Reporter {
    pub fn new(client: Client, node: String) -> Reporter {
        Reporter { client, node, reported: BTreeSet::new() }
    }

    /// Reports the problems of this pass not reported yet; forgets those gone.
    pub async fn report(&mut self, problems: &[Problem]) {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let current: BTreeMap<String, Event> = problems
            .iter()
            .map(|p| event(p, &self.node, now.clone()))
            .filter_map(|e| e.metadata.name.clone().map(|n| (n, e)))
            .collect();
        self.reported.retain(|name| current.contains_key(name));
        for (name, e) in current {
            if self.reported.contains(&name) {
                continue;
            }
            let namespace = e.metadata.namespace.clone().unwrap_or_default();
            let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
            match api.create(&PostParams::default(), &e).await {
                Ok(_) => {
                    self.reported.insert(name);
                }
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    self.reported.insert(name);
                }
                Err(err) => tracing::warn!(event = %name, error = %err, "network policy: cannot create Event"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::problem::{PolicyKind, PolicyRef};

    fn problem(generation: i64, message: &str) -> Problem {
        Problem {
            policy: PolicyRef {
                kind: PolicyKind::GlobalNetworkPolicy,
                namespace: None,
                name: "allow-dns".into(),
                uid: Some("1234".into()),
                generation: Some(generation),
            },
            message: message.into(),
        }
    }

    fn now() -> MicroTime {
        MicroTime(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    #[test]
    fn one_event_name_per_problem_and_generation_whatever_the_node() {
        let a = event(&problem(1, "spec.ingress[0]: bad; rule ignored"), "node1", now());
        let b = event(&problem(1, "spec.ingress[0]: bad; rule ignored"), "node2", now());
        assert_eq!(a.metadata.name, b.metadata.name, "every node names the Event alike");
        assert_ne!(a.reporting_instance, b.reporting_instance);
        let newer = event(&problem(2, "spec.ingress[0]: bad; rule ignored"), "node1", now());
        assert_ne!(a.metadata.name, newer.metadata.name, "a new generation gets a new Event");
        let other = event(&problem(1, "spec.egress[0]: bad; rule ignored"), "node1", now());
        assert_ne!(a.metadata.name, other.metadata.name, "another problem gets its own Event");
        assert!(a.metadata.name.as_deref().unwrap().starts_with("allow-dns.policy-"));
    }

    #[test]
    fn the_event_names_the_policy_and_the_problem() {
        let e = event(&problem(3, "spec.ingress[0]: port \"90:80\" is bad; rule ignored"), "node1", now());
        assert_eq!(e.metadata.namespace.as_deref(), Some(CLUSTER_SCOPED_NAMESPACE));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some(REASON));
        let regarding = e.regarding.unwrap();
        assert_eq!(regarding.kind.as_deref(), Some("GlobalNetworkPolicy"));
        assert_eq!(regarding.api_version.as_deref(), Some("trellis.dev/v1"));
        assert_eq!(regarding.name.as_deref(), Some("allow-dns"));
        assert_eq!(regarding.uid.as_deref(), Some("1234"));
        assert_eq!(
            e.note.as_deref(),
            Some("GlobalNetworkPolicy allow-dns (generation 3): spec.ingress[0]: port \"90:80\" is bad; rule ignored")
        );
        let long = event(&problem(1, &"é".repeat(2000)), "node1", now());
        assert!(long.note.unwrap().len() <= 1024);
    }
}
