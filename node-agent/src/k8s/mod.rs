//! Kubernetes mode (`trellis-agent run`): the snapshot comes from the cluster, and the agent
//! reports back through its NodeNetwork.
//!
//! * [`autodetect`] (pure) and [`host`] (netlink): the node address and uplink;
//! * [`stores`]: reflectors for IPPools, IPAMBlocks, NodeNetworks, the Installation, the Node;
//! * [`cluster_snapshot`] (pure): stores → [`crate::snapshot::Snapshot`];
//! * [`source`]: the reconcile loop's desired-state source (latest good snapshot);
//! * [`node_network`]: the NodeNetwork spec this node publishes;
//! * [`status`]: the NodeNetwork status (what the last pass applied);
//! * [`drift`]: Events for kernel state changed outside Trellis that a pass restored;
//! * [`metrics`] and [`health`]: `/healthz`, `/readyz`, `/metrics`;
//! * [`agent`]: the wiring.

pub mod agent;
pub mod autodetect;
pub mod cluster_snapshot;
pub mod drift;
pub mod health;
pub mod host;
pub mod metrics;
pub mod node_network;
pub mod source;
pub mod status;
pub mod stores;
