//! The one-machine cluster installed the way users install Trellis: `helm install` of
//! charts/trellis with real Helm v4, the chart's operator Deployment run as a podman container of
//! the operator image, and the agent DaemonSet the operator renders run as podman containers of
//! the agent image (only NET_ADMIN and NET_RAW, the node's network namespace, hostPath mounts).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use trellis_e2e::cluster::helm_operator::HelmOperator;
use trellis_e2e::cluster::podman_runtime::{NETNS_LABEL, PodmanRuntime};
use trellis_e2e::cluster::{Cluster, ClusterSpec};
use trellis_e2e::podman::{self, process_effective_caps};
use trellis_e2e::probe;

const WAIT: Duration = Duration::from_secs(30);

/// Names of running containers on the node namespaces whose names start with `prefix`.
fn agent_containers(prefix: &str) -> Result<Vec<String>> {
    let out = podman::podman(&["ps", "--filter", &format!("label={NETNS_LABEL}"), "--format", "{{.Names}}"])?;
    Ok(out.lines().filter(|n| n.starts_with(prefix)).map(str::to_string).collect())
}

#[test]
#[ignore = "root: podman, helm, private API server, network namespaces, CNI plugins"]
fn cluster_installed_from_the_chart_with_containers_converges_and_pods_ping_across_nodes() -> Result<()> {
    let runtime = PodmanRuntime::local_images()?;
    let spec = ClusterSpec::new("hc").runtime(Arc::new(runtime.clone())).operator(Box::new(HelmOperator::new(runtime)));
    let mut cluster = Cluster::up(spec)?;
    cluster.wait_ready()?;
    let prefix = cluster.topology().prefix.clone();
    // The release is Helm's: its Secret is in the release namespace.
    let secrets = cluster.kubectl(&["-n", "trellis-system", "get", "secrets", "-l", "owner=helm", "-o", "name"])?;
    ensure!(secrets.contains("sh.helm.release.v1.trellis.v1"), "no helm release: {secrets}");
    let agents = agent_containers(&prefix)?;
    ensure!(agents.len() == 3, "expected one agent container per node, got {agents:?}");
    // Every agent container holds exactly NET_ADMIN (bit 12) and NET_RAW (bit 13).
    for name in &agents {
        let pid: i32 = podman::podman(&["inspect", "--format", "{{.State.Pid}}", name])?.trim().parse()?;
        ensure!(process_effective_caps(pid)? == 0x3000, "{name}: capabilities {:#x}", process_effective_caps(pid)?);
    }
    let a = cluster.add_pod("node1", "default", "a", &[])?;
    let b = cluster.add_pod("node2", "default", "b", &[])?;
    let c = cluster.add_pod("node3", "default", "c", &[])?;
    // host-local's allocations are the node's own (the agent's hostPath, below the node's
    // root on this machine), not in the host's /var/lib/cni/networks shared by every node.
    for pod in [&a, &b, &c] {
        let root = &cluster.node(&pod.node)?.root;
        let lease = root.join("var/lib/cni/networks/trellis").join(pod.ip.to_string());
        ensure!(lease.exists(), "{}: no host-local allocation at {}", pod.name, lease.display());
    }
    for (from, to) in [(&a, &b), (&a, &c), (&c, &b)] {
        probe::wait_ping(&from.netns, IpAddr::V4(to.ip), WAIT).map_err(|e| cluster.with_dump(e))?;
    }
    cluster.down()?;
    let left = agent_containers(&prefix)?;
    ensure!(left.is_empty(), "containers left behind: {left:?}");
    Ok(())
}
