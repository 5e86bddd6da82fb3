//! Whole-cluster scenarios: the real operator, agents started by the kubelet stand-in from the
//! operator's own DaemonSet, pods wired by the real CNI plugins, driven by `kubectl`.
//!
//! Each test brings up its own cluster ([`Cluster::up`]: private API server, three node
//! namespaces, node1 + node2 on subnet 1 and node3 on subnet 2 behind a router) and takes it
//! down again checking that nothing is left behind. The IPIP scenarios are `vm_*` tests (the
//! host kernel has no ipip): `make test-vm VM_TESTS=vm_cluster`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use trellis_e2e::cluster::{Cluster, ClusterSpec, POD_CIDR, PodRef};
use trellis_e2e::probe;
use trellis_e2e::topology::UPLINK;

const POOL: &str = "default-ipv4-ippool";
const WAIT: Duration = Duration::from_secs(30);

fn ip(p: &PodRef) -> IpAddr {
    IpAddr::V4(p.ip)
}

/// Pings `to` from `from`'s namespace until it answers.
fn reach(c: &Cluster, from: &str, to: IpAddr) -> Result<()> {
    probe::wait_ping(from, to, WAIT).map(|_| ()).map_err(|e| c.with_dump(e).into())
}

/// What crossed `node`'s uplink while `from` pinged `to`: (VXLAN packets, plain pod packets).
fn carried(c: &Cluster, node: &str, from: &PodRef, to: IpAddr) -> Result<(usize, usize)> {
    let netns = c.node(node)?.netns.clone();
    let (_, wire) = probe::observe_wire(&netns, UPLINK, POD_CIDR, || probe::wait_ping(&from.netns, to, WAIT))
        .map_err(|e| c.with_dump(e))?;
    Ok((wire.vxlan.count(), wire.plain.count()))
}

/// The capability bounding set of the process named `comm` in network namespace `netns`.
fn bounding_set(netns: &str, comm: &str) -> Result<String> {
    let pids = trellis_e2e::cmd::run("ip", &["netns", "pids", netns])?;
    for pid in pids.split_whitespace() {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() == comm {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let line = status.lines().find(|l| l.starts_with("CapBnd:")).context("no CapBnd")?;
            return Ok(line.trim_start_matches("CapBnd:").trim().to_string());
        }
    }
    anyhow::bail!("no {comm} process in {netns}")
}

/// The READY column of `kubectl get ippool NAME`.
fn ready_column(c: &Cluster, pool: &str) -> Result<String> {
    let table = c.kubectl(&["get", "ippool", pool])?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().context("no header")?.split_whitespace().collect();
    let row: Vec<&str> = lines.next().context("no row")?.split_whitespace().collect();
    let col = header.iter().position(|h| *h == "READY").with_context(|| format!("no READY column:\n{table}"))?;
    Ok(row.get(col).with_context(|| format!("short row:\n{table}"))?.to_string())
}

#[test]
#[ignore = "root: private API server, operator, agents in network namespaces, CNI plugins"]
fn installation_gives_pods_on_three_nodes_in_two_subnets_a_working_network() -> Result<()> {
    let mut c = Cluster::up(ClusterSpec::new("cla"))?;
    c.wait_ready()?;

    // The agents run exactly as the operator's DaemonSet says.
    for n in ["node1", "node2", "node3"] {
        let spec = c.kubelet().spec(n).with_context(|| format!("no agent on {n}"))?;
        ensure!(spec.argv == ["trellis-agent", "run"], "{n}: argv {:?}", spec.argv);
        let env: std::collections::BTreeMap<_, _> = spec.env.iter().cloned().collect();
        ensure!(env.get("NODE_NAME").map(String::as_str) == Some(n), "{n}: env {env:?}");
        ensure!(env.get("TRELLIS_CNI_CONF_DIR").map(String::as_str) == Some("/etc/cni/net.d"), "{env:?}");
        // drop ALL, add NET_ADMIN + NET_RAW: bits 12 and 13.
        let caps = bounding_set(&c.node(n)?.netns, "trellis-agent")?;
        ensure!(caps == "0000000000003000", "{n}: agent capability bounding set {caps}");
        ensure!(c.blocks(n)?.len() == 1, "{n}: blocks {:?}", c.blocks(n)?);
    }
    ensure!(ready_column(&c, POOL)? == "3/3", "{}", c.kubectl(&["get", "ippools"])?);

    let a1 = c.add_pod("node1", "default", "a1", &[("app", "a")])?;
    let a2 = c.add_pod("node1", "default", "a2", &[("app", "a")])?;
    let b = c.add_pod("node2", "default", "b", &[("app", "b")])?;
    let d = c.add_pod("node3", "default", "d", &[("app", "d")])?;
    // Pod status as a kubelet writes it.
    let api: Api<Pod> = Api::namespaced(c.client(), "default");
    let status = c.block_on(api.get("b"))?.status.context("no pod status")?;
    ensure!(status.phase.as_deref() == Some("Running"), "{status:?}");
    ensure!(status.pod_ip.as_deref() == Some(b.ip.to_string().as_str()), "{status:?}");
    ensure!(c.blocks("node2")?[0].contains(&b.ip), "b's address {} is in node2's block", b.ip);

    // Same node, same subnet, across subnets, both directions; host to pod.
    for (from, to) in [(&a1, &a2), (&a1, &b), (&b, &a1), (&a1, &d), (&d, &b), (&b, &d)] {
        reach(&c, &from.netns, ip(to))?;
    }
    for (node, to) in [("node1", &a1), ("node1", &b), ("node3", &b), ("node2", &d)] {
        reach(&c, &c.node(node)?.netns.clone(), ip(to))?;
    }
    // VXLANCrossSubnet: direct within subnet 1, VXLAN from node1 to node3.
    let (vxlan, plain) = carried(&c, "node1", &a1, ip(&b))?;
    ensure!(plain > 0 && vxlan == 0, "node1 -> node2 within a subnet: {vxlan} VXLAN, {plain} plain");
    let (vxlan, plain) = carried(&c, "node1", &a1, ip(&d))?;
    ensure!(vxlan > 0 && plain == 0, "node1 -> node3 across subnets: {vxlan} VXLAN, {plain} plain");
    c.down()?;
    Ok(())
}
