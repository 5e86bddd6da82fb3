//! trellis-agent: turns what the cluster wants for one node into kernel state.
//!
//! Pipeline: [`snapshot::Snapshot`] --[`plan`] (pure)--> [`desired::DesiredState`]
//! --[`diff`] (pure, against [`kernel`]'s read-back)--> ordered changes --[`kernel`] apply-->.
//! NAT-outgoing ([`nat`]) and the CNI conflist ([`cni`]) are rendered by the planner and
//! applied atomically. [`reconcile`] runs the loop (resync + netlink events).

pub mod cni;
pub mod desired;
pub mod diff;
pub mod k8s;
pub mod kernel;
pub mod nat;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod snapshot;
pub mod vtep;
