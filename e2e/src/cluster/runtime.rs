//! The container runtime the kubelet stand-in drives: a deliberately small interface.
//!
//! A [`PodRuntime`] starts one resolved container ([`ContainerSpec`]) on one node
//! ([`NodeHost`]) and returns a [`RunningContainer`] handle. Everything the spec says must be
//! honoured: the command line, the environment exactly as given, the mounts (the host side is
//! already this node's directory), the capability change, and the node's network namespace as
//! the pod's network (DaemonSet pods are hostNetwork). [`super::ProcessRuntime`] runs the
//! container as a process; a podman runtime can run the same spec as an OCI container.
//!
//! Contract for implementations:
//! * `start` returns once the container was created (not once it is ready: the kubelet
//!   probes readiness itself, through the spec's HTTP probe inside the node's namespace);
//! * the handle owns the container: dropping it kills the container (teardown must leave
//!   nothing behind even when a test panics);
//! * `logs` returns stdout and stderr as far as written, for failure messages.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::container::ContainerSpec;
use crate::error::Result;

/// A node as a container runtime sees it.
#[derive(Clone, Debug)]
pub struct NodeHost {
    /// Kubernetes Node name.
    pub name: String,
    /// The node's network namespace (`/run/netns/NAME`): the pods' host network.
    pub netns: String,
    pub ip: Ipv4Addr,
    /// This node's stand-in for `/` (hostPath volumes live below it).
    pub root: PathBuf,
    /// Where the runtime keeps container logs for this node.
    pub log_dir: PathBuf,
}

/// Starts containers.
pub trait PodRuntime: Send + Sync {
    /// A short name for messages (`process`, `podman`).
    fn name(&self) -> &str;
    /// Creates and starts `spec` on `node`.
    fn start(&self, node: &NodeHost, spec: &ContainerSpec) -> Result<Box<dyn RunningContainer>>;
}

/// A started container. Dropping the handle kills the container.
pub trait RunningContainer: Send {
    /// Human-readable identity (e.g. `node1/trellis-agent-node1/agent pid 1234`).
    fn describe(&self) -> String;
    /// SIGTERM, then SIGKILL once `grace` has passed; returns the exit code if known.
    fn stop(&mut self, grace: Duration) -> Option<i32>;
    /// SIGKILL at once (a crash).
    fn kill(&mut self);
    /// `None` while it runs; the exit code (128 + signal for a signal) once it has exited.
    fn exited(&mut self) -> Option<i32>;
    /// Everything the container wrote to stdout and stderr so far.
    fn logs(&self) -> String;
    /// Freezes every process of the container (a hung agent); [`RunningContainer::resume`] thaws it.
    fn pause(&mut self) -> Result<()>;
    fn resume(&mut self) -> Result<()>;
}
