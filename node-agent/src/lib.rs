//! trellis-agent: turns what the cluster wants for one node into kernel state.
//!
//! Pipeline: [`snapshot::Snapshot`] --[`plan`] (pure)--> [`model::DesiredState`]
//! --[`diff`] (pure, against [`kernel`]'s read-back, a [`model::KernelState`])--> ordered
//! [`model::Change`]s --[`kernel`] apply-->. [`model`] is the shared vocabulary of all of them
//! and imports none of them.
//! NAT-outgoing ([`nat`]) and the CNI conflist ([`cni`]) are rendered by the planner and
//! applied atomically. [`reconcile`] runs the loop (resync + netlink events).

pub mod cni;
pub mod diff;
pub mod k8s;
pub mod kernel;
pub mod model;
pub mod nat;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod snapshot;
pub mod vtep;
