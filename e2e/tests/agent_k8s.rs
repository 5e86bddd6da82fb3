//! The node agent in Kubernetes mode (`trellis-agent run`) on the one-machine cluster.
//!
//! Every test brings up its own [`Cluster`]: private API server, the operator (pools, blocks,
//! the DaemonSet), node namespaces whose agents the kubelet stand-in starts from the operator's
//! DaemonSet. The agents detect their address, publish their NodeNetwork, program the kernel,
//! write the CNI conflist the real CNI plugins then use, and report per pool which IPPool
//! generation they applied. Pools change through the real `kubectl patch`. The cluster-level
//! scenarios (traffic measured across changes, outages, nodes joining) are in `cluster.rs`;
//! these look at the agent itself: its identity, health endpoints, metrics, restarts.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use trellis_agent::model::MacAddr;
use trellis_e2e::cluster::{Cluster, ClusterSpec, POD_CIDR, PodRef, scaled};
use trellis_e2e::cmd;
use trellis_e2e::probe;
use trellis_e2e::topology::UPLINK;

const WAIT: Duration = Duration::from_secs(30);
const POOL: &str = "default-ipv4-ippool";
const VXLAN_DEV: &str = "vxlan.trellis";
/// The agent's health address inside its node (the DaemonSet's `0.0.0.0:9099`).
const HEALTH: &str = "127.0.0.1:9099";

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `curl http://127.0.0.1:9099/PATH` inside `node`: (HTTP code, body).
fn http(c: &Cluster, node: &str, path: &str) -> Result<(u16, String)> {
    let url = format!("http://{HEALTH}{path}");
    let out = cmd::in_ns_output(&c.node(node)?.netns, "curl", &["-s", "-m", "5", "-w", "\n%{http_code}", &url])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((code.trim().parse().with_context(|| format!("curl {url}: {text}"))?, body.to_string()))
}

fn wait_route(c: &Cluster, node: &str, peer: &str, want: impl Fn(&str) -> bool) -> Result<String> {
    probe::wait_until(&format!("route on {node} to {peer}'s block"), scaled(WAIT), || {
        let route = c.route_to(node, peer).map_err(|e| e.to_string())?;
        if want(&route) { Ok(route) } else { Err(route) }
    })
    .map_err(|e| c.with_dump(e).into())
}

/// Pings `to` from `from` while capturing on the sender's uplink; the wire must carry VXLAN
/// (`vxlan`) or plain pod traffic.
fn check_carried(c: &Cluster, from: &PodRef, to: &PodRef, vxlan: bool) -> Result<()> {
    let netns = c.node(&from.node)?.netns.clone();
    let dst = IpAddr::V4(to.ip);
    let (_, wire) = probe::observe_wire(&netns, UPLINK, POD_CIDR, || probe::wait_ping(&from.netns, dst, scaled(WAIT)))
        .map_err(|e| c.with_dump(e))?;
    let ok = if vxlan {
        wire.vxlan.count() > 0 && wire.plain.count() == 0
    } else {
        wire.plain.count() > 0 && wire.vxlan.count() == 0
    };
    let want = if vxlan { "VXLAN" } else { "plain" };
    ensure!(ok, "pod {} -> {}: expected {want} on the wire, saw:\n{wire}", from.name, to.name);
    Ok(())
}

/// Trellis' kernel state of a node: routes (proto 84), VXLAN neighbours and FDB.
fn kernel_state(c: &Cluster, node: &str) -> Result<String> {
    let ns = c.node(node)?.netns.clone();
    let routes = cmd::ip(&ns, &["route", "show", "proto", "84"])?;
    let neigh = cmd::ip(&ns, &["neigh", "show", "dev", VXLAN_DEV, "nud", "permanent"]).unwrap_or_default();
    let fdb = cmd::in_ns(&ns, "bridge", &["fdb", "show", "dev", VXLAN_DEV]).unwrap_or_default();
    Ok(format!("{routes}--\n{neigh}--\n{fdb}"))
}

#[test]
#[ignore = "root: private API server, operator, agents in network namespaces, CNI plugins"]
fn agents_publish_node_networks_and_follow_kubectl_patch_none_vxlan_cross_subnet() -> Result<()> {
    let mut c = Cluster::up(ClusterSpec::new("k8sm").pool("None", false))?;
    c.wait_pool_mode(POOL, "None")?;
    // Identity: detected uplink address with its prefix (firstFound), MAC derived from the name,
    // tunnel address = the network address of the node's block.
    let nns = c.node_networks()?;
    for node in c.nodes() {
        let name = &node.name;
        let nn = nns.get(name).with_context(|| format!("no NodeNetwork {name}"))?;
        ensure!(nn.spec.address == node.address.to_string(), "{name}: address {}", nn.spec.address);
        ensure!(nn.spec.uplink.as_deref() == Some(UPLINK), "{name}: uplink {:?}", nn.spec.uplink);
        ensure!(nn.spec.vtep_mac == Some(MacAddr::for_node(name).to_string()), "{name}: MAC {:?}", nn.spec.vtep_mac);
        let block = *c.blocks(name)?.first().context("no block")?;
        ensure!(nn.spec.tunnel_address == Some(block.network().to_string()), "{name}: tunnel address");
        let owner = nn.metadata.owner_references.as_ref().and_then(|o| o.first()).context("no owner")?;
        ensure!(owner.kind == "Node" && &owner.name == name, "{name}: owner {owner:?}");
    }
    let a = c.add_pod("node1", "default", "a", &[])?;
    let b = c.add_pod("node2", "default", "b", &[])?;
    let p3 = c.add_pod("node3", "default", "c", &[])?;
    // None: same subnet goes direct.
    let direct =
        |peer: &str| format!("via {} dev {UPLINK}", c.node(peer).map(|n| n.ip().to_string()).unwrap_or_default());
    wait_route(&c, "node1", "node2", |r| r.contains(&direct("node2")))?;
    wait_route(&c, "node2", "node1", |r| r.contains(&direct("node1")))?;
    check_carried(&c, &a, &b, false)?;

    c.patch_pool(POOL, r#"{"spec":{"vxlanMode":"Always"}}"#)?;
    c.wait_pool_mode(POOL, "VXLAN/Always")?;
    for (n, peer) in
        [("node1", "node2"), ("node1", "node3"), ("node2", "node1"), ("node2", "node3"), ("node3", "node1")]
    {
        wait_route(&c, n, peer, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    }
    check_carried(&c, &a, &b, true)?;
    check_carried(&c, &a, &p3, true)?;
    check_carried(&c, &p3, &b, true)?;

    c.patch_pool(POOL, r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#)?;
    c.wait_pool_mode(POOL, "VXLAN/CrossSubnet")?;
    for (n, peer, vxlan) in
        [("node1", "node2", false), ("node2", "node1", false), ("node1", "node3", true), ("node3", "node2", true)]
    {
        wait_route(&c, n, peer, |r| !r.is_empty() && r.contains(&format!("dev {VXLAN_DEV}")) == vxlan)?;
    }
    check_carried(&c, &a, &b, false)?;
    check_carried(&c, &b, &p3, true)?;
    check_carried(&c, &p3, &a, true)?;

    // Health endpoints on every node.
    for n in ["node1", "node2", "node3"] {
        let (code, _) = http(&c, n, "/healthz")?;
        ensure!(code == 200, "{n} /healthz: {code}");
        let (code, body) = http(&c, n, "/readyz")?;
        ensure!(code == 200, "{n} /readyz: {code} {body}");
        let (code, metrics) = http(&c, n, "/metrics")?;
        ensure!(code == 200, "{n} /metrics: {code}");
        let cluster_passes = metric(&metrics, "trellis_agent_passes_total{trigger=\"cluster\"}").unwrap_or(0.0);
        ensure!(cluster_passes >= 2.0, "{n}: two pool patches, {cluster_passes} cluster passes:\n{metrics}");
        ensure!(metric(&metrics, "trellis_agent_changes_applied_total").unwrap_or(0.0) > 0.0, "{metrics}");
        ensure!(metric(&metrics, "trellis_agent_last_apply_duration_seconds").is_some(), "{metrics}");
    }
    c.down()?;
    Ok(())
}

#[test]
#[ignore = "root: private API server, operator, agents in network namespaces, CNI plugins"]
fn a_new_node_appears_in_every_peers_routes_without_restarting_agents() -> Result<()> {
    let mut c = Cluster::up(ClusterSpec::new("k8sn").nodes(&[("node1", 1), ("node2", 2)]).pool("VXLAN", false))?;
    c.wait_pool_mode(POOL, "VXLAN/Always")?;
    wait_route(&c, "node1", "node2", |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    let agents: Vec<Option<String>> = ["node1", "node2"].iter().map(|n| c.kubelet().container(n)).collect();
    let a = c.add_pod("node1", "default", "a", &[])?;

    c.add_node("node3", 2)?;
    c.wait_pool_mode(POOL, "VXLAN/Always")?;
    for peer in ["node1", "node2"] {
        wait_route(&c, peer, "node3", |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
        wait_route(&c, "node3", peer, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    }
    let p3 = c.add_pod("node3", "default", "c", &[])?;
    check_carried(&c, &a, &p3, true)?;
    check_carried(&c, &p3, &a, true)?;
    // The first two agents are the same processes that started before node3 existed.
    for (n, before) in ["node1", "node2"].iter().zip(agents) {
        ensure!(before.is_some() && c.kubelet().container(n) == before, "{n}'s agent was replaced");
        ensure!(c.kubelet().restarts(n) == 0, "{n}'s agent restarted");
    }
    c.down()?;
    Ok(())
}

#[test]
#[ignore = "root: private API server, operator, agents in network namespaces, CNI plugins"]
fn a_crashed_agent_restarts_and_adopts_the_kernel_as_it_is() -> Result<()> {
    let mut c = Cluster::up(ClusterSpec::new("k8sr").nodes(&[("node1", 1), ("node2", 2)]).pool("VXLAN", false))?;
    c.wait_pool_mode(POOL, "VXLAN/Always")?;
    wait_route(&c, "node1", "node2", |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    wait_route(&c, "node2", "node1", |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    let a = c.add_pod("node1", "default", "a", &[])?;
    let b = c.add_pod("node2", "default", "b", &[])?;
    check_carried(&c, &a, &b, true)?;
    let before = kernel_state(&c, "node1")?;
    let old = c.kubelet().container("node1");

    c.kubelet().kill("node1")?;
    probe::wait_until("the kubelet to restart node1's agent and it to be ready", scaled(WAIT), || {
        let now = c.kubelet().container("node1");
        let ready = c.kubelet().pods().get("node1").is_some_and(|(ready, _)| *ready);
        if now.is_some() && now != old && ready { Ok(()) } else { Err(format!("{now:?} ready={ready}")) }
    })
    .map_err(|e| c.with_dump(e))?;
    ensure!(c.kubelet().restarts("node1") == 1, "restarts: {}", c.kubelet().restarts("node1"));
    let (_, metrics) = http(&c, "node1", "/metrics")?;
    ensure!(metric(&metrics, "trellis_agent_passes_total{trigger=\"start\"}") == Some(1.0), "{metrics}");
    ensure!(
        metric(&metrics, "trellis_agent_changes_applied_total") == Some(0.0),
        "restart changed something:\n{metrics}"
    );
    ensure!(kernel_state(&c, "node1")? == before, "restart changed the kernel:\n{}", c.dump());
    check_carried(&c, &a, &b, true)?;
    c.down()?;
    Ok(())
}
