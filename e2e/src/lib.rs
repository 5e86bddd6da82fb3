//! Test bed helpers shared by the end-to-end tests.
//!
//! Data plane lab: [`topology`] builds nodes/router/internet namespaces ([`netns`] guards),
//! [`pod`]s are wired by the real CNI plugins ([`cni`]), [`agent`] runs the real agent binary
//! per node, and [`probe`] observes packets, captures and counters.
//!
//! Control plane: [`apiserver`] connects to the real API server `make test-root` starts, applies
//! the generated CRDs and drives objects from YAML (kube-rs and the real kubectl); [`kapi`] is a
//! test's own server (stoppable), [`forward`] makes it reachable inside a node's namespace.
//!
//! Containers: [`podman`] builds the project's images (`images/build`) and runs them with
//! podman the way a pod spec says.
//!
//! The lab (`make lab`): [`lab`] runs the classic experiments on a cluster, one chapter each.
//!
//! Whole cluster: [`cluster`] brings up API server, operator, Node objects, node namespaces and
//! a kubelet stand-in that runs the operator's DaemonSet; [`stream`] measures traffic between
//! pods (loss, reordering, gaps, TCP retransmits) while the cluster changes.
pub mod agent;
pub mod apiserver;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod error;
pub mod forward;
pub mod kapi;
pub mod lab;
pub mod netns;
pub mod netstat;
pub mod operator;
pub mod pod;
pub mod podman;
pub mod policy;
pub mod probe;
pub mod stream;
pub mod topology;
