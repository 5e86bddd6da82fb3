//! The data plane on real kernels: the real `trellis-agent` binary programs each node of the
//! lab (see `trellis_e2e::topology`), pods are wired by the real CNI plugins from the
//! conflist the agent wrote, and real packets prove the result.
//!
//! Per encapsulation mode: pod→pod on the same subnet and across the router, host→remote
//! pod, and what the wire carries (UDP 4789 for VXLAN, IP protocol 4 for IPIP, plain ICMP
//! between pod addresses when unencapsulated), natOutgoing as the "internet" sees it, the
//! MTU limit with DF pings, drift correction by a running agent, and a pool the kernel
//! cannot serve. Tests named `vm_*` need ipip and run inside the kernel VM (`make test-vm`).
//!
//! Mode `None` is only tested between nodes of one subnet: across subnets it needs an
//! underlay fabric that routes pod CIDRs (BGP in Calico), and the lab's router deliberately
//! knows nothing about pods (the test asserts exactly that).

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use trellis_agent::model::{Capabilities, IPIP_OVERHEAD, MacAddr, ROUTE_PROTOCOL, VXLAN_OVERHEAD};
use trellis_agent::snapshot::Pool;
use trellis_agent::vtep::tunnel_address_for;
use trellis_api::EncapMode::{self, Always, CrossSubnet, Never};
use trellis_e2e::pod::PodInfo;
use trellis_e2e::probe::{self, WireSample};
use trellis_e2e::topology::{DEFAULT_POOL, INTERNET, Topology, UPLINK, pool, v4};

/// Upper bound for anything to converge (first ARP, agent passes); polls end as soon as it holds.
const WAIT: Duration = Duration::from_secs(20);
const VXLAN_DEV: &str = "vxlan.trellis";
const IPIP_DEV: &str = "tunl0";
const UDP_PORT: u16 = 7777;

fn default_pool(ipip: EncapMode, vxlan: EncapMode, nat: bool) -> Vec<Pool> {
    vec![pool("default-ipv4-ippool", DEFAULT_POOL, ipip, vxlan, nat).unwrap()]
}

/// Which encapsulation a packet between two pods should use on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Carried {
    Vxlan,
    Ipip,
    Plain,
}

/// Pings `to` from `from` while capturing on the sender node's uplink, then checks that the
/// traffic was carried exactly as `expected`.
fn check_path(topo: &Topology, from: &PodInfo, to: IpAddr, expected: Carried) -> Result<WireSample> {
    let node = topo.node(from.node);
    let tx = |dev: &str| probe::link_counters(node.netns(), dev).map(|c| c.map(|(tx, _)| tx).unwrap_or(0));
    let (vxlan_before, ipip_before) = (tx(VXLAN_DEV)?, tx(IPIP_DEV)?);
    let (_, wire) = probe::observe_wire(node.netns(), UPLINK, DEFAULT_POOL, || probe::wait_ping(&from.netns, to, WAIT))
        .with_context(|| format!("pod {} ({}) -> {to}\n{}", from.name, from.ip, topo.dump()))?;
    let (vxlan, ipip, plain) = (wire.vxlan.count(), wire.ipip.count(), wire.plain.count());
    let ok = match expected {
        Carried::Vxlan => vxlan > 0 && ipip == 0 && plain == 0,
        Carried::Ipip => ipip > 0 && vxlan == 0 && plain == 0,
        Carried::Plain => plain > 0 && vxlan == 0 && ipip == 0,
    };
    ensure!(ok, "pod {} -> {to}: expected {expected:?} on {}'s uplink, saw:\n{wire}", from.name, node.name);
    // Second witness: the tunnel device's own transmit counter.
    let (vxlan_sent, ipip_sent) =
        (tx(VXLAN_DEV)?.saturating_sub(vxlan_before), tx(IPIP_DEV)?.saturating_sub(ipip_before));
    let counters_ok = match expected {
        Carried::Vxlan => vxlan_sent > 0,
        Carried::Ipip => ipip_sent > 0,
        Carried::Plain => vxlan_sent == 0 && ipip_sent == 0,
    };
    ensure!(
        counters_ok,
        "pod {} -> {to}: expected {expected:?}, but {} sent {vxlan_sent} packets on {VXLAN_DEV} and {ipip_sent} on {IPIP_DEV}",
        from.name,
        node.name
    );
    Ok(wire)
}

/// natOutgoing as observed from outside: the source address a UDP listener in the
/// "internet" namespace sees, and the source a pod of another node sees.
fn check_nat(topo: &Topology, from: &PodInfo, other_pod: &PodInfo, nat: bool) -> Result<()> {
    let node = topo.node(from.node);
    let seen = probe::udp_source_seen(&from.netns, topo.internet.name(), INTERNET, UDP_PORT, WAIT)
        .with_context(|| topo.dump())?;
    let expected = if nat { v4(node.ip()) } else { v4(from.ip) };
    ensure!(
        seen.ip() == expected,
        "natOutgoing={nat}: internet saw source {seen}, expected {expected} (pod {}, node {})",
        from.ip,
        node.ip()
    );
    // Pod-to-pod traffic is never masqueraded, whatever natOutgoing says.
    let seen = probe::udp_source_seen(&from.netns, &other_pod.netns, other_pod.ip, UDP_PORT + 1, WAIT)
        .with_context(|| topo.dump())?;
    ensure!(seen.ip() == v4(from.ip), "pod {} -> pod {}: source rewritten to {seen}", from.ip, other_pod.ip);
    Ok(())
}

/// The whole per-mode scenario on the standard lab (node1, node2 on subnet 1; node3 on 2).
fn pod_network(tag: &str, ipip: EncapMode, vxlan: EncapMode, nat: bool) -> Result<()> {
    let mut topo = Topology::standard(tag)?;
    let pools = default_pool(ipip, vxlan, nat);
    topo.apply_once_all(&pools)?;
    let a = topo.add_pod(0, "a")?;
    let b = topo.add_pod(1, "b")?;
    let c = topo.add_pod(2, "c")?;
    for (pod, node) in [(&a, 0), (&b, 1), (&c, 2)] {
        ensure!(topo.node(node).blocks[0].contains(&pod.ip), "pod {} got {} outside its block", pod.name, pod.ip);
    }
    let encap = |m: EncapMode, same_subnet: bool| match m {
        Always => true,
        CrossSubnet => !same_subnet,
        Never => false,
    };
    let carried = |same_subnet: bool| {
        if encap(vxlan, same_subnet) {
            Carried::Vxlan
        } else if encap(ipip, same_subnet) {
            Carried::Ipip
        } else {
            Carried::Plain
        }
    };
    // Same subnet, both directions, pod -> pod.
    check_path(&topo, &a, v4(b.ip), carried(true))?;
    check_path(&topo, &b, v4(a.ip), carried(true))?;
    // Host -> remote pod (same subnet).
    probe::wait_ping(topo.node(0).netns(), v4(b.ip), WAIT).with_context(|| topo.dump())?;
    if ipip == Never && vxlan == Never {
        // No encapsulation: the router has no route to pods, so node3's pods stay unreachable.
        let r = probe::ping(&a.netns, v4(c.ip), &[])?;
        ensure!(!r.ok, "mode None reached a pod across the router, which has no pod routes: {}", r.output);
    } else {
        check_path(&topo, &a, v4(c.ip), carried(false))?;
        check_path(&topo, &c, v4(b.ip), carried(false))?;
        probe::wait_ping(topo.node(0).netns(), v4(c.ip), WAIT).with_context(|| topo.dump())?;
    }
    check_nat(&topo, &a, &b, nat)?;
    topo.finish()?;
    Ok(())
}

#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn vxlan_always_pods_hosts_nat() -> Result<()> {
    pod_network("va", Never, Always, true)
}

#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn vxlan_cross_subnet_pods_hosts_no_nat() -> Result<()> {
    pod_network("vc", Never, CrossSubnet, false)
}

#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn none_same_subnet_pods_hosts_nat() -> Result<()> {
    pod_network("no", Never, Never, true)
}

#[test]
#[ignore = "root: VM with ipip module"]
fn vm_ipip_always_pods_hosts_nat() -> Result<()> {
    pod_network("ia", Always, Never, true)
}

#[test]
#[ignore = "root: VM with ipip module"]
fn vm_ipip_cross_subnet_pods_hosts_no_nat() -> Result<()> {
    pod_network("ic", CrossSubnet, Never, false)
}

/// DF pings at the computed maximum pass, one byte more is refused with "message too long",
/// from a pod (pod MTU) and from the node itself (tunnel device MTU).
fn mtu_limit(tag: &str, ipip: EncapMode, vxlan: EncapMode, device: &str, overhead: u32) -> Result<()> {
    let mut topo = Topology::standard(tag)?;
    topo.apply_once_all(&default_pool(ipip, vxlan, false))?;
    let a = topo.add_pod(0, "a")?;
    let c = topo.add_pod(2, "c")?;
    let uplink = probe::link_mtu(topo.node(0).netns(), UPLINK)?.context("node1 has no uplink")?;
    let mtu = uplink - overhead;
    let pod_mtu = probe::link_mtu(&a.netns, "eth0")?.context("pod a has no eth0")?;
    ensure!(pod_mtu == mtu, "pod eth0 MTU {pod_mtu}, expected uplink {uplink} - {overhead} = {mtu}");
    let dev_mtu = probe::link_mtu(topo.node(0).netns(), device)?.context(format!("node1 has no {device}"))?;
    ensure!(dev_mtu == mtu, "{device} MTU {dev_mtu}, expected {mtu}");
    let max = mtu - 28; // IPv4 header + ICMP header
    for (who, ns) in [("pod a", a.netns.as_str()), ("node1", topo.node(0).netns())] {
        probe::wait_until(&format!("{who}: DF ping -s {max} to {}", c.ip), WAIT, || {
            match probe::ping_df(ns, v4(c.ip), max) {
                Ok(r) if r.ok => Ok(()),
                Ok(r) => Err(r.output),
                Err(e) => Err(e.to_string()),
            }
        })
        .with_context(|| topo.dump())?;
        let over = probe::ping_df(ns, v4(c.ip), max + 1)?;
        if !over.too_big() {
            bail!(
                "{who}: DF ping -s {} to {} should fail with 'message too long', got:\n{}",
                max + 1,
                c.ip,
                over.output
            );
        }
    }
    topo.finish()?;
    Ok(())
}

#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn vxlan_mtu_df_ping_limit() -> Result<()> {
    mtu_limit("vm", Never, Always, VXLAN_DEV, VXLAN_OVERHEAD)
}

#[test]
#[ignore = "root: VM with ipip module"]
fn vm_ipip_mtu_df_ping_limit() -> Result<()> {
    mtu_limit("im", Always, Never, IPIP_DEV, IPIP_OVERHEAD)
}

fn route_present(ns: &str, dst: &str) -> Result<(), String> {
    let routes = probe::routes_with_proto(ns, ROUTE_PROTOCOL).map_err(|e| e.to_string())?;
    if routes.iter().any(|r| r.starts_with(&format!("{dst} "))) {
        Ok(())
    } else {
        Err(format!("no proto {ROUTE_PROTOCOL} route to {dst}; routes: {routes:#?}"))
    }
}

fn nft_table_present(ns: &str) -> Result<(), String> {
    match trellis_e2e::cmd::in_ns(ns, "nft", &["list", "table", "inet", "trellis"]) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// A running agent puts back what someone removed: a peer route, the VXLAN device (and with
/// it every route/neighbour/FDB entry through it), a peer's neighbour and FDB entries, the
/// NAT table; and it follows a changed snapshot file.
#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn vxlan_drift_is_corrected_by_running_agent() -> Result<()> {
    let mut topo = Topology::standard("dr")?;
    let pools = default_pool(Never, Always, true);
    for i in 0..3 {
        topo.start_agent(i, &pools, 2)?;
    }
    let n1 = topo.node(0).netns().to_string();
    let peer_block = topo.node(2).blocks[0].to_string();
    probe::wait_until("agent on node1 programs node3's block", WAIT, || route_present(&n1, &peer_block))
        .with_context(|| topo.dump())?;
    let conflists: Vec<_> = topo.nodes.iter().map(|n| n.conflist_path()).collect();
    probe::wait_until("every agent wrote its conflist", WAIT, || match conflists.iter().find(|p| !p.exists()) {
        None => Ok(()),
        Some(p) => Err(format!("{} missing", p.display())),
    })?;
    let a = topo.add_pod(0, "a")?;
    let c = topo.add_pod(2, "c")?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;

    // 1. A peer route.
    trellis_e2e::cmd::ip(&n1, &["route", "del", &peer_block])?;
    probe::wait_until("node1's route to node3's block restored", WAIT, || route_present(&n1, &peer_block))
        .with_context(|| topo.dump())?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;

    // 2. The VXLAN device.
    trellis_e2e::cmd::ip(&n1, &["link", "del", VXLAN_DEV])?;
    probe::wait_until("node1's vxlan device and routes restored", WAIT, || {
        probe::link_mtu(&n1, VXLAN_DEV).map_err(|e| e.to_string())?.ok_or("no vxlan device")?;
        route_present(&n1, &peer_block)
    })
    .with_context(|| topo.dump())?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;

    // 3. node3's neighbour and FDB entries on the VXLAN device (without them node1 cannot
    //    resolve node3's tunnel address or find its VTEP).
    let mac = MacAddr::for_node(&topo.node(2).name).to_string();
    let tunnel = tunnel_address_for(&[ipnet::IpNet::V4(topo.node(2).blocks[0])]).context("no tunnel address")?;
    let tunnel = tunnel.to_string();
    let node3 = topo.node(2).ip().to_string();
    trellis_e2e::cmd::ip(&n1, &["neigh", "del", &tunnel, "dev", VXLAN_DEV])?;
    trellis_e2e::cmd::in_ns(&n1, "bridge", &["fdb", "del", &mac, "dev", VXLAN_DEV, "dst", &node3])?;
    probe::wait_until("node1's neighbour and FDB entries for node3 restored", WAIT, || {
        let neigh =
            trellis_e2e::cmd::ip(&n1, &["neigh", "show", "dev", VXLAN_DEV, &tunnel]).map_err(|e| e.to_string())?;
        let fdb =
            trellis_e2e::cmd::in_ns(&n1, "bridge", &["fdb", "show", "dev", VXLAN_DEV]).map_err(|e| e.to_string())?;
        let neigh_ok = neigh.contains(&mac) && neigh.contains("PERMANENT");
        let fdb_ok = fdb.lines().any(|l| l.starts_with(&mac) && l.contains(&format!("dst {node3}")));
        if neigh_ok && fdb_ok { Ok(()) } else { Err(format!("neigh: {neigh}\nfdb: {fdb}")) }
    })
    .with_context(|| topo.dump())?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;

    // 4. The NAT table.
    trellis_e2e::cmd::in_ns(&n1, "nft", &["delete", "table", "inet", "trellis"])?;
    probe::wait_until("node1's nft table restored", WAIT, || nft_table_present(&n1)).with_context(|| topo.dump())?;
    let seen = probe::udp_source_seen(&a.netns, topo.internet.name(), INTERNET, UDP_PORT, WAIT)?;
    ensure!(seen.ip() == v4(topo.node(0).ip()), "after NAT repair the internet saw {seen}");

    // 5. The snapshot changes: natOutgoing off -> the table goes, pod addresses leave as is.
    topo.write_snapshot(0, &topo.snapshot(0, &default_pool(Never, Always, false)))?;
    probe::wait_until("node1's nft table removed after natOutgoing=false", WAIT, || match nft_table_present(&n1) {
        Ok(()) => Err("table inet trellis still present".to_string()),
        Err(_) => Ok(()),
    })
    .with_context(|| topo.dump())?;
    let seen = probe::udp_source_seen(&a.netns, topo.internet.name(), INTERNET, UDP_PORT, WAIT)?;
    ensure!(seen.ip() == v4(a.ip), "natOutgoing=false: the internet saw {seen}, expected pod {}", a.ip);

    for i in 0..3 {
        if let Some(status) = topo.agent(i).exited() {
            bail!("agent {i} exited during the test ({status}):\n{}", topo.agent(i).log_text());
        }
    }
    topo.finish()?;
    Ok(())
}

/// `plan` prints the desired state and changes nothing.
#[test]
#[ignore = "root: network namespaces, agent"]
fn plan_is_read_only() -> Result<()> {
    let topo = Topology::standard("pl")?;
    let snapshot = topo.snapshot(0, &default_pool(Never, Always, true));
    topo.write_snapshot(0, &snapshot)?;
    let ns = topo.node(0).netns();
    let before = trellis_e2e::cmd::ip(ns, &["-d", "link"])?;
    let run = topo.plan(0)?;
    ensure!(run.status.success(), "plan failed:\n{run}");
    let peer_block = topo.node(2).blocks[0].to_string();
    ensure!(run.stdout.contains(&peer_block), "plan output does not mention node3's block {peer_block}:\n{run}");
    ensure!(trellis_e2e::cmd::ip(ns, &["-d", "link"])? == before, "plan changed links");
    let routes = probe::routes_with_proto(ns, ROUTE_PROTOCOL)?;
    ensure!(routes.is_empty(), "plan installed routes: {routes:?}");
    ensure!(nft_table_present(ns).is_err(), "plan created the nft table");
    ensure!(!topo.node(0).conflist_path().exists(), "plan wrote the conflist");
    topo.finish()?;
    Ok(())
}

/// An IPIP pool on nodes without IPIP support is reported as unusable, not fatal, while the
/// VXLAN pool next to it serves pods across subnets. The agent's reconcile code runs with
/// capabilities {ipip: false} (an input of the planner), so this holds on every kernel,
/// whether it has ipip (a normal distribution kernel, the VM) or not (this CI host); a tunl0
/// the kernel has stays as it was. Detection itself is tested in node-agent/tests.
#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn ipip_pool_without_ipip_support_is_reported_and_vxlan_pool_serves_pods() -> Result<()> {
    let vx = "10.244.0.0/16";
    let ip = "10.245.0.0/16";
    let mut topo =
        Topology::builder("ni").node("node1", 1).node("node2", 1).node("node3", 2).pools(&[vx, ip]).build()?;
    let pools = vec![pool("vxlan-pool", vx, Never, Always, true)?, pool("ipip-pool", ip, Always, Never, true)?];
    let no_ipip = Capabilities { ipip: false, vxlan: true };
    for i in 0..3 {
        let ns = topo.node(i).netns().to_string();
        let tunl0_before = trellis_e2e::cmd::ip(&ns, &["-d", "link", "show"])?
            .lines()
            .filter(|l| l.contains(IPIP_DEV))
            .collect::<Vec<_>>()
            .join("\n");
        let report = topo.apply_once_with_capabilities(i, &pools, no_ipip)?;
        ensure!(report.ok(), "pass on {} failed: {report:?}", topo.node(i).name);
        let errors: std::collections::BTreeMap<_, _> = report.pool_errors.iter().cloned().collect();
        ensure!(
            errors.get("ipip-pool").is_some_and(|e| e.to_lowercase().contains("ipip")),
            "the ipip pool is not reported as unusable: {errors:?}"
        );
        ensure!(!errors.contains_key("vxlan-pool"), "the vxlan pool is reported as unusable: {errors:?}");
        let routes = probe::routes_with_proto(&ns, ROUTE_PROTOCOL)?;
        ensure!(!routes.iter().any(|r| r.contains(IPIP_DEV)), "routes through {IPIP_DEV}: {routes:#?}");
        let tunl0_after = trellis_e2e::cmd::ip(&ns, &["-d", "link", "show"])?
            .lines()
            .filter(|l| l.contains(IPIP_DEV))
            .collect::<Vec<_>>()
            .join("\n");
        ensure!(tunl0_after == tunl0_before, "{IPIP_DEV} changed:\n{tunl0_before}\n->\n{tunl0_after}");
    }
    let vx_net: ipnet::Ipv4Net = vx.parse()?;
    let pick = |p: &PodInfo| p.ips.iter().copied().find(|a| vx_net.contains(a));
    let a = topo.add_pod(0, "a")?;
    let c = topo.add_pod(2, "c")?;
    let (Some(a_ip), Some(c_ip)) = (pick(&a), pick(&c)) else {
        bail!("pods got no address from the VXLAN pool: a {:?}, c {:?}", a.ips, c.ips);
    };
    probe::wait_ping(&a.netns, v4(c_ip), WAIT).with_context(|| format!("from {a_ip}\n{}", topo.dump()))?;
    topo.finish()?;
    Ok(())
}

/// Disabling the only pool a node has blocks in (Calico semantics): the agents remove the CNI
/// config, so no new pod gets an address from the disabled pool, and say why; running pods
/// keep their addresses and reach each other across subnets; re-enabling brings the config
/// back. Pods are wired by the real ptp and host-local plugins.
#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn disabled_pool_gives_no_new_addresses_and_running_pods_keep_working() -> Result<()> {
    let mut topo = Topology::standard("dp")?;
    let enabled = default_pool(Never, CrossSubnet, true);
    for i in 0..3 {
        topo.start_agent(i, &enabled, 300)?;
    }
    let conflists: Vec<_> = topo.nodes.iter().map(|n| n.conflist_path()).collect();
    probe::wait_until("every agent wrote its conflist", WAIT, || match conflists.iter().find(|p| !p.exists()) {
        None => Ok(()),
        Some(p) => Err(format!("{} missing", p.display())),
    })?;
    let a = topo.add_pod(0, "a")?;
    let c = topo.add_pod(2, "c")?;
    let old_conflist = trellis_e2e::cni::read_conflist(&conflists[0])?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;

    let mut disabled = enabled.clone();
    disabled[0].disabled = true;
    for i in 0..3 {
        topo.write_snapshot(i, &topo.snapshot(i, &disabled))?;
    }
    probe::wait_until("every agent removed its conflist", WAIT, || match conflists.iter().find(|p| p.exists()) {
        None => Ok(()),
        Some(p) => Err(format!("{} still present", p.display())),
    })
    .with_context(|| topo.dump())?;
    // What a runtime does without a config: no ADD at all. The harness reads the (missing) file.
    let refused = topo.add_pod(0, "late");
    ensure!(refused.is_err(), "a new pod got an address from the disabled pool: {refused:?}");
    // The agents say why: `plan` shows the reason, the running agent logs it.
    for i in 0..3 {
        let run = topo.plan(i)?;
        ensure!(run.status.success(), "{run}");
        ensure!(run.stdout.contains("is disabled"), "plan on {} does not say why:\n{run}", topo.node(i).name);
    }
    let log = topo.agent(0).log_text();
    ensure!(log.contains("removed CNI config") && log.contains("is disabled"), "agent log:\n{log}");
    // Running pods keep their addresses and their paths (routes, blackholes, NAT stay).
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;
    probe::wait_ping(&c.netns, v4(a.ip), WAIT).with_context(|| topo.dump())?;
    let seen = probe::udp_source_seen(&a.netns, topo.internet.name(), INTERNET, UDP_PORT, WAIT)?;
    ensure!(seen.ip() == v4(topo.node(0).ip()), "a disabled pool keeps NAT: the internet saw {seen}");

    // Re-enabled: the config is back and new pods get addresses again (not a's).
    for i in 0..3 {
        topo.write_snapshot(i, &topo.snapshot(i, &enabled))?;
    }
    probe::wait_until("node1's conflist is back", WAIT, || {
        if conflists[0].exists() { Ok(()) } else { Err("missing".to_string()) }
    })?;
    ensure!(trellis_e2e::cni::read_conflist(&conflists[0])? == old_conflist, "a different config came back");
    let b = topo.add_pod(0, "b")?;
    ensure!(b.ip != a.ip && topo.node(0).blocks[0].contains(&b.ip), "new pod {} (a has {})", b.ip, a.ip);
    for i in 0..3 {
        if let Some(status) = topo.agent(i).exited() {
            bail!("agent {i} exited during the test ({status}):\n{}", topo.agent(i).log_text());
        }
    }
    topo.finish()?;
    Ok(())
}

/// How node `i` must route node `j`'s blocks when the default pool uses VXLAN in `mode`:
/// the start of its `ip route` line, or `None` for no route (no encapsulation across subnets).
fn expected_route(topo: &Topology, i: usize, j: usize, mode: EncapMode) -> Option<String> {
    let (me, peer) = (topo.node(i), topo.node(j));
    let block = peer.blocks[0];
    let same_subnet = me.address.trunc().contains(&peer.ip());
    let direct = format!("{block} via {} dev {UPLINK}", peer.ip());
    let tunnelled = format!("{block} via {} dev {VXLAN_DEV}", block.network());
    match mode {
        Always => Some(tunnelled),
        CrossSubnet if same_subnet => Some(direct),
        CrossSubnet => Some(tunnelled),
        Never if same_subnet => Some(direct),
        Never => None,
    }
}

/// Waits until EVERY node routes every other node's block as `mode` says (and, for `Never`,
/// has removed its VXLAN device): a packet's path depends on both ends, so checking one node
/// would let a test look at a half-converged cluster.
fn wait_every_node_routes(topo: &Topology, mode: EncapMode) -> Result<()> {
    let n = topo.nodes.len();
    probe::wait_until(&format!("every node routes every peer for VXLAN {mode}"), WAIT, || {
        let mut wrong = Vec::new();
        for i in 0..n {
            let ns = topo.node(i).netns();
            let routes = probe::routes_with_proto(ns, ROUTE_PROTOCOL).map_err(|e| e.to_string())?;
            for j in (0..n).filter(|j| *j != i) {
                let block = format!("{} ", topo.node(j).blocks[0]);
                let found = routes.iter().find(|r| r.starts_with(&block));
                let ok = match (expected_route(topo, i, j, mode), found) {
                    (Some(want), Some(r)) => r.starts_with(&want),
                    (None, None) => true,
                    _ => false,
                };
                if !ok {
                    wrong.push(format!("{} -> {}: {found:?}", topo.node(i).name, topo.node(j).name));
                }
            }
            if mode == Never && probe::link_mtu(ns, VXLAN_DEV).map_err(|e| e.to_string())?.is_some() {
                wrong.push(format!("{} still has {VXLAN_DEV}", topo.node(i).name));
            }
        }
        if wrong.is_empty() { Ok(()) } else { Err(wrong.join("\n")) }
    })
    .with_context(|| topo.dump())?;
    Ok(())
}

/// Running agents follow a mode change in the snapshot files: VXLAN Always -> CrossSubnet
/// turns same-subnet pod traffic into plain routed packets, cross-subnet stays encapsulated;
/// then VXLAN -> None removes the VXLAN device. Pods keep their addresses throughout. Each
/// step waits until every node has converged before it looks at packets.
#[test]
#[ignore = "root: network namespaces, agent, CNI plugins"]
fn vxlan_mode_change_followed_by_running_agents() -> Result<()> {
    let mut topo = Topology::standard("mc")?;
    let always = default_pool(Never, Always, false);
    topo.apply_once_all(&always)?;
    let a = topo.add_pod(0, "a")?;
    let b = topo.add_pod(1, "b")?;
    let c = topo.add_pod(2, "c")?;
    for i in 0..3 {
        topo.start_agent(i, &always, 2)?;
    }
    wait_every_node_routes(&topo, Always)?;
    check_path(&topo, &a, v4(b.ip), Carried::Vxlan)?;

    let cross = default_pool(Never, CrossSubnet, false);
    for i in 0..3 {
        topo.write_snapshot(i, &topo.snapshot(i, &cross))?;
    }
    wait_every_node_routes(&topo, CrossSubnet)?;
    check_path(&topo, &a, v4(b.ip), Carried::Plain)?;
    check_path(&topo, &b, v4(a.ip), Carried::Plain)?;
    check_path(&topo, &a, v4(c.ip), Carried::Vxlan)?;

    let none = default_pool(Never, Never, false);
    for i in 0..3 {
        topo.write_snapshot(i, &topo.snapshot(i, &none))?;
    }
    wait_every_node_routes(&topo, Never)?;
    check_path(&topo, &b, v4(a.ip), Carried::Plain)?;
    topo.finish()?;
    Ok(())
}

/// IPIP drift inside the VM: a running agent restores a removed peer route through tunl0,
/// brings tunl0 back up and resets its MTU.
#[test]
#[ignore = "root: VM with ipip module"]
fn vm_ipip_drift_is_corrected_by_running_agent() -> Result<()> {
    let mut topo = Topology::standard("id")?;
    let pools = default_pool(Always, Never, false);
    topo.apply_once_all(&pools)?;
    let a = topo.add_pod(0, "a")?;
    let c = topo.add_pod(2, "c")?;
    for i in 0..3 {
        topo.start_agent(i, &pools, 2)?;
    }
    let n1 = topo.node(0).netns().to_string();
    let peer_block = topo.node(2).blocks[0].to_string();
    let mtu = probe::link_mtu(&n1, UPLINK)?.context("no uplink")? - IPIP_OVERHEAD;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;

    trellis_e2e::cmd::ip(&n1, &["route", "del", &peer_block])?;
    probe::wait_until("node1's route to node3's block restored", WAIT, || route_present(&n1, &peer_block))
        .with_context(|| topo.dump())?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;

    trellis_e2e::cmd::ip(&n1, &["link", "set", IPIP_DEV, "down", "mtu", "1300"])?;
    probe::wait_until("tunl0 up with MTU restored, routes back", WAIT, || {
        let link = trellis_e2e::cmd::ip(&n1, &["link", "show", IPIP_DEV]).map_err(|e| e.to_string())?;
        let up = link.contains(",UP");
        let mtu_ok = link.contains(&format!("mtu {mtu} "));
        if up && mtu_ok { route_present(&n1, &peer_block) } else { Err(link) }
    })
    .with_context(|| topo.dump())?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;
    topo.finish()?;
    Ok(())
}
