//! Data-plane goodput: iperf3 TCP pod → pod across nodes through what Trellis programmed,
//! against a hand-built kernel path (same topology, same encapsulation, same MTU, typed as an
//! administrator would with iproute2) in the same run.
//!
//! Both labs are [`Topology::standard`]: node1 and node2 share a subnet, node3 is behind the
//! router. With one VXLAN CrossSubnet pool, node1 → node3 is VXLAN and node1 → node2 a direct
//! route, so one lab carries both paths. Pods come from the real CNI plugins (Trellis: the
//! conflist the agent wrote; hand-built: the same plugins with the same MTU). The VXLAN devices
//! keep the kernel's default offloads on both sides. Before a number counts, a ping with DF
//! set and a full-MTU payload must pass, and no namespace on the path may count an IP
//! fragment (created or reassembled) during the transfer.

use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use trellis_api::EncapMode;
use trellis_e2e::cmd;
use trellis_e2e::pod::PodInfo;
use trellis_e2e::probe;
use trellis_e2e::topology::{self, DEFAULT_POOL, Topology, UPLINK};

use crate::report::{Report, Row};

const POD_MTU: u32 = 1450;
const HAND_DEV: &str = "vxlan.hand";

/// The Trellis lab: `apply --once` on every node, one pod per node.
fn trellis_lab(tag: &str) -> Result<(Topology, Vec<PodInfo>)> {
    let mut topo = Topology::standard(tag)?;
    let pools = [topology::pool("bench", DEFAULT_POOL, EncapMode::Never, EncapMode::CrossSubnet, false)?];
    topo.apply_once_all(&pools)?;
    let pods = (0..3).map(|i| topo.add_pod(i, "iperf")).collect::<Result<Vec<_>, _>>()?;
    Ok((topo, pods))
}

fn hand_mac(index: u8) -> String {
    format!("02:aa:00:00:00:{index:02x}")
}

/// The hand-built lab: the same kernel objects, typed with iproute2.
fn hand_lab(tag: &str) -> Result<(Topology, Vec<PodInfo>)> {
    let mut topo = Topology::standard(tag)?;
    for me in &topo.nodes {
        let ns = &me.ns;
        let tunnel = me.blocks[0].network();
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let (mac, mtu, local) = (hand_mac(me.index), POD_MTU.to_string(), me.ip().to_string());
        let vxlan = ["id", "4096", "dstport", "4789", "local", &local, "dev", UPLINK, "nolearning"];
        let mut args = vec!["link", "add", HAND_DEV, "address", &mac, "mtu", &mtu, "type", "vxlan"];
        args.extend(vxlan);
        ns.ip(&args)?;
        ns.ip(&["link", "set", HAND_DEV, "up"])?;
        ns.ip(&["addr", "add", &format!("{tunnel}/32"), "dev", HAND_DEV])?;
        ns.sysctl(&format!("net/ipv4/conf/{HAND_DEV}/rp_filter"), "2")?;
        ns.ip(&["route", "add", "blackhole", &me.blocks[0].to_string()])?;
        for peer in topo.nodes.iter().filter(|n| n.index != me.index) {
            let block = peer.blocks[0].to_string();
            if peer.address.network() == me.address.network() {
                ns.ip(&["route", "add", &block, "via", &peer.ip().to_string(), "dev", UPLINK])?;
            } else {
                let peer_tunnel = peer.blocks[0].network().to_string();
                let mac = hand_mac(peer.index);
                ns.ip(&["neigh", "add", &peer_tunnel, "lladdr", &mac, "dev", HAND_DEV, "nud", "permanent"])?;
                ns.exec(
                    "bridge",
                    &["fdb", "append", &mac, "dev", HAND_DEV, "dst", &peer.ip().to_string(), "self", "permanent"],
                )?;
                ns.ip(&["route", "add", &block, "via", &peer_tunnel, "dev", HAND_DEV, "onlink"])?;
            }
        }
    }
    let mut pods = Vec::new();
    for i in 0..3 {
        let node = topo.node(i);
        let conflist = trellis_e2e::cni::hand_conflist(&[node.blocks[0]], POD_MTU, &node.ipam_dir());
        pods.push(topo.add_pod_with(i, "iperf", conflist)?);
    }
    Ok((topo, pods))
}

/// IP fragments created or reassembled so far in `ns` (`/proc/net/snmp`).
fn fragments(ns: &str) -> Result<u64> {
    let snmp = cmd::in_ns(ns, "cat", &["/proc/net/snmp"])?;
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().context("no Ip: header")?, ip.next().context("no Ip: values")?);
    let mut total = 0;
    for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
        if matches!(name, "FragCreates" | "ReasmReqds" | "FragFails") {
            total += value.parse::<u64>().with_context(|| format!("{name} = {value}"))?;
        }
    }
    Ok(total)
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One measured transfer: (goodput in bit/s, TCP MSS iperf3 used).
fn iperf(from: &PodInfo, to: &PodInfo, seconds: u32) -> Result<(f64, u64)> {
    let server = Server(
        cmd::ns_command(&to.netns, "iperf3")
            .args(["-s", "-1", "-p", "5201"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s")?,
    );
    let dst = to.ip.to_string();
    let secs = seconds.to_string();
    let mut last = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        let out = cmd::in_ns_output(&from.netns, "iperf3", &["-c", &dst, "-p", "5201", "-t", &secs, "-J"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            last = text;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&text).context("iperf3 -J output")?;
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("no sum_received")?;
        let mss = v["start"]["tcp_mss_default"].as_u64().unwrap_or(0);
        drop(server);
        return Ok((bps, mss));
    }
    bail!("iperf3 never connected to {dst}: {last}")
}

/// Everything one path measured.
struct Path {
    bps: Vec<f64>,
    mss: u64,
    fragments: u64,
}

fn measure(topo: &Topology, pods: &[PodInfo], to: usize, seconds: u32) -> Result<Path> {
    let (from, to) = (&pods[0], &pods[to]);
    probe::wait_ping(&from.netns, topology::v4(to.ip), Duration::from_secs(10))?;
    // The largest packet the pod MTU allows must cross whole.
    let df = probe::ping_df(&from.netns, topology::v4(to.ip), POD_MTU - 28)?;
    ensure!(df.ok, "a {POD_MTU}-byte packet with DF set does not cross {} → {}: {}", from.name, to.ip, df.output);
    let mut spaces: Vec<String> = topo.nodes.iter().map(|n| n.netns().to_string()).collect();
    spaces.extend([topo.router.name().to_string(), from.netns.clone(), to.netns.clone()]);
    let before: u64 = spaces.iter().map(|s| fragments(s)).sum::<Result<u64>>()?;
    let (bps, mss) = iperf(from, to, seconds)?;
    let after: u64 = spaces.iter().map(|s| fragments(s)).sum::<Result<u64>>()?;
    Ok(Path { bps: vec![bps], mss, fragments: after - before })
}

fn gbit(bps: f64) -> String {
    format!("{:.2} Gbit/s", bps / 1e9)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run(report: &mut Report, seconds: u32, repetitions: usize, tag: &str) -> Result<()> {
    let (trellis, trellis_pods) = trellis_lab(&format!("{tag}gt"))?;
    let (hand, hand_pods) = hand_lab(&format!("{tag}gh"))?;
    ensure!(
        probe::link_mtu(trellis.node(0).netns(), "vxlan.trellis")? == Some(POD_MTU),
        "Trellis' VXLAN device does not have MTU {POD_MTU}"
    );
    let mut notes = String::new();
    for (to, what) in [(2usize, "across subnets, VXLAN"), (1, "same subnet, direct route")] {
        let (mut t, mut h): (Option<Path>, Option<Path>) = (None, None);
        for _ in 0..repetitions {
            // Alternating, so both paths see the same machine load.
            let m = measure(&hand, &hand_pods, to, seconds)?;
            match &mut h {
                Some(p) => {
                    p.bps.extend(m.bps);
                    p.fragments += m.fragments;
                }
                None => h = Some(m),
            }
            let m = measure(&trellis, &trellis_pods, to, seconds)?;
            match &mut t {
                Some(p) => {
                    p.bps.extend(m.bps);
                    p.fragments += m.fragments;
                }
                None => t = Some(m),
            }
        }
        let (mut t, mut h) = (t.context("no repetition")?, h.context("no repetition")?);
        let (tb, hb) = (median(&mut t.bps), median(&mut h.bps));
        report.row(Row {
            figure: format!("pod → pod TCP goodput, {what} (iperf3 {seconds} s, median of {repetitions})"),
            trellis: gbit(tb),
            reference: format!("{} (hand-built)", gbit(hb)),
            ratio: Some(tb / hb),
            goal: "ratio ≥ 0.95".into(),
            met: Some(tb / hb >= 0.95),
        });
        report.row(Row {
            figure: format!(
                "MTU end to end, {what}: DF ping of {} B payload, IP fragments during the transfers",
                POD_MTU - 28
            ),
            trellis: format!("passes, {} fragments, MSS {}", t.fragments, t.mss),
            reference: format!("passes, {} fragments, MSS {}", h.fragments, h.mss),
            ratio: None,
            goal: "0 fragments".into(),
            met: Some(t.fragments == 0),
        });
        notes.push_str(&format!(
            "* {what}: Trellis {:?} Gbit/s, hand-built {:?} Gbit/s (every repetition)\n",
            t.bps.iter().map(|b| (b / 1e7).round() / 100.0).collect::<Vec<_>>(),
            h.bps.iter().map(|b| (b / 1e7).round() / 100.0).collect::<Vec<_>>()
        ));
    }
    report.section(
        "Goodput: every repetition",
        format!(
            "Pod MTU {POD_MTU} on both sides (uplink 1500 − 50 for VXLAN); VXLAN devices with the kernel's default \
             offloads.\n\n{notes}"
        ),
    );
    drop(trellis_pods);
    trellis.finish()?;
    hand.finish()?;
    Ok(())
}
