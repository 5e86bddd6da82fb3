//! What the compiler could not enforce as written, tied to the policy object it comes from,
//! so the agent can log it and put a Warning Event on that object ([`super::events`]).

use std::fmt;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use trellis_api::GlobalNetworkPolicy;

/// The kind of a policy object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    NetworkPolicy,
    GlobalNetworkPolicy,
}

impl PolicyKind {
    pub fn api_version(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
            PolicyKind::GlobalNetworkPolicy => "trellis.dev/v1",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::GlobalNetworkPolicy => "GlobalNetworkPolicy",
        }
    }
}

/// Which object (and which version of it) a problem belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    /// `None` for cluster-scoped GlobalNetworkPolicies.
    pub namespace: Option<String>,
    pub name: String,
    pub uid: Option<String>,
    pub generation: Option<i64>,
}

impl PolicyRef {
    pub fn kubernetes(p: &NetworkPolicy) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::NetworkPolicy,
            namespace: p.metadata.namespace.clone(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone(),
            generation: p.metadata.generation,
        }
    }

    pub fn global(p: &GlobalNetworkPolicy) -> PolicyRef {
        PolicyRef {
            kind: PolicyKind::GlobalNetworkPolicy,
            namespace: None,
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone(),
            generation: p.metadata.generation,
        }
    }
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind.name(), self.name),
            None => write!(f, "{} {}", self.kind.name(), self.name),
        }
    }
}

/// A part of a policy the compiler left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    pub policy: PolicyRef,
    /// What was left out and why (`destination.ports: port "90:80" is …; rule ignored`).
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.policy, self.message)
    }
}
