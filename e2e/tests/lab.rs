//! The lab itself, before any agent: underlay reachability across the router, pods wired by
//! the real CNI plugins with routes added by hand, and teardown leaving nothing behind.
//! These pin down the test bed so that data-plane test failures point at the agent.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use trellis_e2e::cni;
use trellis_e2e::probe::{self, Capture};
use trellis_e2e::topology::{INTERNET, Topology, v4};

const WAIT: Duration = Duration::from_secs(10);

#[test]
#[ignore = "root: network namespaces"]
fn lab_underlay_routes_between_subnets_and_to_internet() -> Result<()> {
    let topo = Topology::standard("lu")?;
    let (n1, n2, n3) = (topo.node(0), topo.node(1), topo.node(2));
    probe::wait_ping(n1.netns(), v4(n2.ip()), WAIT).with_context(|| topo.dump())?;
    // Across the router: the capture on the router's subnet-2 bridge proves the path.
    let cap = Capture::start(topo.router.name(), "br2", "icmp")?;
    probe::wait_ping(n1.netns(), v4(n3.ip()), WAIT).with_context(|| topo.dump())?;
    let seen = cap.stop();
    ensure!(seen.matching(&format!("{} > {}", n1.ip(), n3.ip())) > 0, "ping did not cross the router: {seen}");
    let src = probe::udp_source_seen(n3.netns(), topo.internet.name(), INTERNET, 9000, WAIT)?;
    ensure!(src.ip() == v4(n3.ip()), "internet saw {src}, expected node3's address {}", n3.ip());
    topo.finish()?;
    Ok(())
}

#[test]
#[ignore = "root: network namespaces, CNI plugins"]
fn lab_pods_via_cni_with_hand_routes() -> Result<()> {
    let mut topo = Topology::standard("lp")?;
    // Unencapsulated routing between the two same-subnet nodes, done by hand.
    for (me, peer) in [(0, 1), (1, 0)] {
        let (node, peer) = (topo.node(me), topo.node(peer));
        node.ns.sysctl("net.ipv4.ip_forward", "1")?;
        node.ns.ip(&["route", "add", &peer.blocks[0].to_string(), "via", &peer.ip().to_string()])?;
    }
    let conf = |i: usize| cni::hand_conflist(&topo.node(i).blocks, 1500, &topo.node(i).ipam_dir());
    let (c0, c1) = (conf(0), conf(1));
    let a = topo.add_pod_with(0, "a", c0.clone())?;
    let b = topo.add_pod_with(1, "b", c1)?;
    let a2 = topo.add_pod_with(0, "a2", c0)?;
    ensure!(topo.node(0).blocks[0].contains(&a.ip), "pod a got {} outside node1's block", a.ip);
    ensure!(a.ip != a2.ip, "host-local handed out {} twice", a.ip);
    probe::wait_ping(&a.netns, v4(b.ip), WAIT).with_context(|| topo.dump())?;
    probe::wait_ping(&a.netns, v4(a2.ip), WAIT).with_context(|| topo.dump())?;
    probe::wait_ping(topo.node(1).netns(), v4(a.ip), WAIT).with_context(|| topo.dump())?;
    // Without a route for node3's block nothing reaches it: the router does not know pods.
    let c2 = cni::hand_conflist(&topo.node(2).blocks, 1500, &topo.node(2).ipam_dir());
    let c = topo.add_pod_with(2, "c", c2)?;
    let r = probe::ping(&a.netns, v4(c.ip), &[])?;
    ensure!(!r.ok, "pod a reached pod c on another subnet without any route: {}", r.output);
    topo.finish()?;
    Ok(())
}

#[test]
#[ignore = "root: network namespaces, CNI plugins"]
fn lab_teardown_after_panic_leaves_nothing() -> Result<()> {
    // Build a lab with a pod and a stray background process, then panic inside it.
    let outcome = std::panic::catch_unwind(|| {
        let mut topo = Topology::standard("lt").unwrap();
        let conf = cni::hand_conflist(&topo.node(0).blocks, 1500, &topo.node(0).ipam_dir());
        topo.add_pod_with(0, "a", conf).unwrap();
        let pid = trellis_e2e::cmd::in_ns(topo.node(1).netns(), "sh", &["-c", "sleep 300 >/dev/null 2>&1 & echo $!"])
            .unwrap()
            .trim()
            .to_string();
        let facts = (format!("{}-", topo.prefix), topo.dir().to_path_buf(), pid);
        std::panic::panic_any(facts)
    });
    let payload = outcome.err().context("the lab closure should have panicked")?;
    let Some((prefix, dir, pid)) = payload.downcast_ref::<(String, std::path::PathBuf, String)>() else {
        anyhow::bail!("lab setup failed before the deliberate panic");
    };
    let left = trellis_e2e::netns::list_with_prefix(prefix);
    ensure!(left.is_empty(), "namespaces left after panic: {left:?}");
    ensure!(!dir.exists(), "temp dir {} left after panic", dir.display());
    // The stray process was reparented to init; it must be gone (or at most a zombie).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    ensure!(state.is_empty() || state.contains(") Z "), "process {pid} survived teardown: {state}");
    Ok(())
}
