//! [`PodRuntime`] that runs a resolved container as an OCI container of the project's own
//! images with podman (`e2e/testbed/podman`).
//!
//! The spec is honoured as a container runtime would: `argv` replaces the image's entrypoint,
//! the environment is exactly the spec's, every mount is a bind mount (the host side is already
//! the node's directory), the capability change is podman's (`--cap-drop all --cap-add …`), and
//! the pod's host network is the node's namespace (`--network ns:/run/netns/NODE`). The image
//! named in the spec is mapped to the locally built one ([`crate::podman::images`]): the test bed
//! has no registry, so `…/trellis/agent:TAG` runs `localhost/trellis/agent:VERSION`.
//! Containers carry the label [`crate::podman::TESTBED_LABEL`] and one naming their node's
//! namespace, so `make lab-down` finds whatever a killed run left.

use std::time::Duration;

use super::container::ContainerSpec;
use super::runtime::{NodeHost, PodRuntime, RunningContainer};
use crate::error::{Error, Result};
use crate::podman::{self, Images, Mount, Network, RunSpec, Started};

/// Label naming the node namespace a container runs in.
pub const NETNS_LABEL: &str = "dev.trellis.netns";

/// Runs containers with podman (see the module header).
#[derive(Clone, Debug)]
pub struct PodmanRuntime {
    images: Images,
}

impl PodmanRuntime {
    /// With the project's images, built (or found in podman's cache) first.
    pub fn local_images() -> Result<Self> {
        Ok(PodmanRuntime { images: podman::images()? })
    }

    /// The local image for a reference from a pod spec: the project's agent or operator image
    /// whatever registry and tag the spec names; anything else is an error (nothing is pulled).
    pub fn local_image(&self, reference: &str) -> Result<String> {
        let without_tag = match reference.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => reference,
        };
        if without_tag.ends_with("trellis/agent") {
            Ok(self.images.agent.clone())
        } else if without_tag.ends_with("trellis/operator") {
            Ok(self.images.operator.clone())
        } else {
            Err(Error::Setup(format!(
                "podman runtime: no local image for {reference} (the test bed runs only trellis/agent and trellis/operator)"
            )))
        }
    }

    /// The `podman run` spec for `spec` on `node` (its namespace is the pod's host network).
    pub fn run_spec(&self, node: &NodeHost, spec: &ContainerSpec) -> Result<RunSpec> {
        let mut run = self.run_spec_on(Network::Netns(node.netns.clone()), spec)?;
        run.name = format!("{}-{}-{}", node.netns, spec.pod, spec.name);
        run.labels.push(format!("{NETNS_LABEL}={}", node.netns));
        Ok(run)
    }

    /// The `podman run` spec for `spec` on `network`, named after the pod and container.
    pub fn run_spec_on(&self, network: Network, spec: &ContainerSpec) -> Result<RunSpec> {
        let caps = &spec.capabilities;
        let drops_all = caps.drop.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
        if !drops_all && !caps.drop.is_empty() {
            return Err(Error::Setup(format!(
                "podman runtime: {}/{}: dropping single capabilities ({:?}) is not supported, only ALL",
                spec.pod, spec.name, caps.drop
            )));
        }
        Ok(RunSpec {
            name: format!("{}-{}", spec.pod, spec.name),
            image: self.local_image(&spec.image)?,
            command: spec.argv.clone(),
            args: Vec::new(),
            env: spec.env.clone(),
            capabilities: drops_all.then(|| caps.add.clone()),
            mounts: spec
                .mounts
                .iter()
                .map(|m| Mount {
                    host: m.host_path.clone(),
                    container: m.container_path.clone(),
                    read_only: m.read_only,
                })
                .collect(),
            network: Some(network),
            user: None,
            read_only_root: false,
            labels: Vec::new(),
        })
    }
}

impl PodRuntime for PodmanRuntime {
    fn name(&self) -> &str {
        "podman"
    }

    fn start(&self, node: &NodeHost, spec: &ContainerSpec) -> Result<Box<dyn RunningContainer>> {
        let run = self.run_spec(node, spec)?;
        let started = run.start()?;
        let describe = format!("{}/{}/{} container {}", node.name, spec.pod, spec.name, started.name);
        let pid = started.pid().ok();
        Ok(Box::new(PodmanContainer { started: Some(started), describe, pid }))
    }
}

/// A container started by [`PodmanRuntime`]; removed when dropped.
struct PodmanContainer {
    started: Option<Started>,
    describe: String,
    /// The container's main process on the host: while it is in /proc the container runs, so
    /// the kubelet's 4 Hz status polls cost no `podman inspect` (each one is a podman process).
    pid: Option<i32>,
}

impl RunningContainer for PodmanContainer {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn stop(&mut self, grace: Duration) -> Option<i32> {
        let started = self.started.as_ref()?;
        // A paused container does not act on SIGTERM.
        let _ = podman::podman_output(&["unpause", &started.id]);
        let _ = started.stop(grace);
        started.exit_code()
    }

    fn kill(&mut self) {
        // Dropping removes it with `podman rm -f`.
        self.started = None;
    }

    fn exited(&mut self) -> Option<i32> {
        match &self.started {
            None => Some(128 + libc::SIGKILL),
            Some(_) if self.pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) => None,
            Some(s) => s.exit_code(),
        }
    }

    fn logs(&self) -> String {
        self.started.as_ref().map(Started::logs).unwrap_or_default()
    }

    fn pause(&mut self) -> Result<()> {
        let s = self.started.as_ref().ok_or_else(|| Error::Setup(format!("{} is gone", self.describe)))?;
        podman::podman(&["pause", &s.id]).map(|_| ())
    }

    fn resume(&mut self) -> Result<()> {
        let s = self.started.as_ref().ok_or_else(|| Error::Setup(format!("{} is gone", self.describe)))?;
        podman::podman(&["unpause", &s.id]).map(|_| ())
    }
}
