//! Live encapsulation and NAT changes under traffic: the three phases (operator + agents)
//! against every agent switching on its own, measured with sequence-numbered streams.
//!
//! A private API server, three node namespaces (node1 and node2 in one subnet, node3 in
//! another), a `trellis-agent run` per node and a `trellis-operator`. Pods a (node1), b
//! (node2) and c (node3); a UDP stream (1 000 datagrams/s) and a TCP stream run from a to b
//! (same subnet) and, when both the old and the new settings can cross subnets, from a to c.
//! Each change is a real `kubectl patch ippool`; it is done when the pool has no transition,
//! its `status.active` is the new generation, and every node reports that generation with the
//! new encapsulation and is Ready. The same changes run twice: with phases (the default) and
//! with `trellis.dev/live-change: direct` (every agent applies the patch on its own). With
//! phases, any lost datagram fails the test; the table of both runs is printed
//! (`cargo test -p trellis-e2e --test live_change -- --ignored --nocapture`), with a second
//! one saying what the TCP retransmissions were (the sender's `TCP_INFO`, pod a's namespace
//! counters). The IPIP changes run in the VM (`vm_…`); lowering the Installation's MTU under
//! traffic is measured the same way.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, PostParams};
use trellis_api::ip_pool::LIVE_CHANGE_ANNOTATION;
use trellis_api::ipam_block::block_name;
use trellis_api::{EncapMode, IPAMBlock, IPAMBlockSpec, IPPool, IPPoolSpec, NodeNetwork};
use trellis_e2e::agent::{AgentProcess, ClusterAgent};
use trellis_e2e::apiserver::{ApiServer, unique_name};
use trellis_e2e::forward::LoopbackForward;
use trellis_e2e::kapi::PrivateApiServer;
use trellis_e2e::netstat::Counters;
use trellis_e2e::operator::OperatorProcess;
use trellis_e2e::pod::PodInfo;
use trellis_e2e::probe;
use trellis_e2e::stream::{Endpoint, Stream, StreamReport};
use trellis_e2e::topology::{DEFAULT_POOL, Topology};

const WAIT: Duration = Duration::from_secs(60);
const RESYNC_SECS: u64 = 30;
/// Datagrams per second of the UDP stream (and KiB/s of the TCP stream).
const RATE: u32 = 1000;
/// Traffic before the patch and after the change is done, so both ends of it are measured.
const SETTLE: Duration = Duration::from_millis(700);

/// A cluster of node namespaces with one agent each and one operator. Field order is drop order.
struct Bed {
    operator: Option<OperatorProcess>,
    agents: BTreeMap<usize, AgentProcess>,
    forwards: Vec<LoopbackForward>,
    topo: Topology,
    api: ApiServer,
    kapi: PrivateApiServer,
    rt: tokio::runtime::Runtime,
    names: Vec<String>,
    pool: String,
}

impl Bed {
    /// The cluster with a running operator whose phases wait `timeout_secs` for a node.
    fn new(tag: &str, timeout_secs: u64) -> Result<Bed> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let kapi = PrivateApiServer::start()?;
        let api = rt.block_on(ApiServer::from_kubeconfig(kapi.kubeconfig()))?;
        rt.block_on(api.apply_crds())?;
        let topo = Topology::builder(tag).node("node1", 1).node("node2", 1).node("node3", 2).build()?;
        let port = kapi.port()?;
        let forwards =
            topo.nodes.iter().map(|n| LoopbackForward::start(n.netns(), port)).collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = topo.nodes.iter().map(|n| unique_name(&n.name)).collect();
        let pool = unique_name("pool");
        let client = api.client();
        let spec = IPPoolSpec {
            cidr: DEFAULT_POOL.into(),
            block_size: Some(i32::from(trellis_e2e::topology::BLOCK_SIZE)),
            vxlan_mode: Some(EncapMode::Never),
            ipip_mode: Some(EncapMode::Never),
            nat_outgoing: Some(false),
            ..Default::default()
        };
        rt.block_on(
            Api::<IPPool>::all(client.clone())
                .create(&PostParams::default(), &IPPool { metadata: meta(&pool), spec, status: None }),
        )?;
        // What kubelet and IPAM do, before the operator starts (so its IPAM finds every node
        // with its block already).
        for (i, name) in names.iter().enumerate() {
            rt.block_on(
                Api::<Node>::all(client.clone())
                    .create(&PostParams::default(), &Node { metadata: meta(name), ..Default::default() }),
            )?;
            let cidr = topo.node(i).blocks[0];
            let block = IPAMBlock {
                metadata: meta(&block_name(&cidr.into())),
                spec: IPAMBlockSpec { cidr: cidr.to_string(), pool: pool.clone(), node: name.clone() },
                status: None,
            };
            rt.block_on(Api::<IPAMBlock>::all(client.clone()).create(&PostParams::default(), &block))?;
        }
        let mut bed = Bed { operator: None, agents: BTreeMap::new(), forwards, topo, api, kapi, rt, names, pool };
        let timeout = timeout_secs.to_string();
        bed.operator = Some(OperatorProcess::start(
            bed.kapi.kubeconfig(),
            "live-operator",
            &["--no-leader-election", "--live-change-timeout", &timeout],
        )?);
        for i in 0..bed.names.len() {
            bed.start_agent(i)?;
        }
        Ok(bed)
    }

    fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = self.topo.node(i);
        let settings = ClusterAgent {
            kubeconfig: self.kapi.kubeconfig().to_path_buf(),
            cni_conf_dir: node.cni_conf_dir(),
            ipam_data_dir: node.ipam_dir(),
            health_addr: SocketAddr::from(([127, 0, 0, 1], 9150 + i as u16)),
            resync_secs: RESYNC_SECS,
        };
        let log = node.dir.join(format!("agent-{}.log", self.agents.len()));
        self.agents.insert(i, AgentProcess::start_in_cluster(node.netns(), &self.names[i], &settings, &log)?);
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.api.kubectl(args)?;
        ensure!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn ippool(&self) -> Result<IPPool> {
        Ok(self.rt.block_on(Api::<IPPool>::all(self.api.client()).get(&self.pool))?)
    }

    fn node_networks(&self) -> Result<BTreeMap<String, NodeNetwork>> {
        let list = self.rt.block_on(Api::<NodeNetwork>::all(self.api.client()).list(&Default::default()))?;
        Ok(list.items.into_iter().filter_map(|nn| Some((nn.metadata.name.clone()?, nn))).collect())
    }

    /// Whether the change to `encapsulation` is done everywhere (see the module comment).
    fn done(&self, encapsulation: &str, phased: bool) -> Result<(), String> {
        let pool = self.ippool().map_err(|e| e.to_string())?;
        let generation = pool.metadata.generation.unwrap_or_default();
        if phased {
            let status = pool.status.clone().unwrap_or_default();
            if status.transition.is_some() || status.active.as_ref().map(|a| a.generation) != Some(generation) {
                return Err(format!("pool status: active {:?}, transition {:?}", status.active, status.transition));
            }
        }
        let nns = self.node_networks().map_err(|e| e.to_string())?;
        for name in &self.names {
            let status = nns.get(name).and_then(|nn| nn.status.as_ref()).ok_or(format!("{name}: no status"))?;
            let p = status.pools.iter().find(|p| p.name == self.pool).ok_or(format!("{name}: pool missing"))?;
            let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if p.generation != generation || p.encapsulation != encapsulation || p.phase.is_some() || !ready {
                return Err(format!("{name}: {p:?}, ready {ready}"));
            }
        }
        Ok(())
    }

    fn wait_done(&self, encapsulation: &str, phased: bool) -> Result<()> {
        probe::wait_until(&format!("every node runs {encapsulation}"), probe::scaled(WAIT), || {
            self.done(encapsulation, phased)
        })
        .with_context(|| self.diagnostics())
    }

    fn diagnostics(&self) -> String {
        let mut out = self.topo.dump();
        if let Some(op) = &self.operator {
            let log = op.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let _ = writeln!(out, "--- operator log (last lines) ---");
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        for a in self.agents.values() {
            let log = a.log_text();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let _ = writeln!(out, "--- agent {} (last lines) ---", a.node);
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    fn set_phased(&self, phased: bool) -> Result<()> {
        let value = format!("{LIVE_CHANGE_ANNOTATION}={}", if phased { "phased" } else { "direct" });
        self.kubectl(&["annotate", "--overwrite", "ippool", &self.pool, &value])?;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.operator.take();
        for (_, mut agent) in std::mem::take(&mut self.agents) {
            agent.stop();
        }
        self.forwards.clear();
        let Bed { topo, .. } = self;
        topo.finish()?;
        Ok(())
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_string()), ..Default::default() }
}

/// One change of the sequence.
struct Change {
    name: &'static str,
    patch: &'static str,
    /// The encapsulation every node reports when it is done.
    to: &'static str,
    /// Whether pods in different subnets reach each other before and after.
    cross_subnet: bool,
}

const CHANGES: &[Change] = &[
    Change {
        name: "None -> VXLAN (pod MTU 1500 -> 1450)",
        patch: r#"{"spec":{"vxlanMode":"Always"}}"#,
        to: "VXLAN/Always",
        cross_subnet: false,
    },
    Change {
        name: "VXLAN -> VXLANCrossSubnet",
        patch: r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#,
        to: "VXLAN/CrossSubnet",
        cross_subnet: true,
    },
    Change {
        name: "natOutgoing off -> on",
        patch: r#"{"spec":{"natOutgoing":true}}"#,
        to: "VXLAN/CrossSubnet",
        cross_subnet: true,
    },
    Change {
        name: "natOutgoing on -> off",
        patch: r#"{"spec":{"natOutgoing":false}}"#,
        to: "VXLAN/CrossSubnet",
        cross_subnet: true,
    },
    Change {
        name: "VXLANCrossSubnet -> VXLAN",
        patch: r#"{"spec":{"vxlanMode":"Always"}}"#,
        to: "VXLAN/Always",
        cross_subnet: true,
    },
    Change {
        name: "VXLAN -> None (pod MTU 1450 -> 1500)",
        patch: r#"{"spec":{"vxlanMode":"Never"}}"#,
        to: "None",
        cross_subnet: false,
    },
    Change {
        name: "None -> VXLANCrossSubnet",
        patch: r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#,
        to: "VXLAN/CrossSubnet",
        cross_subnet: false,
    },
    Change {
        name: "VXLANCrossSubnet -> None",
        patch: r#"{"spec":{"vxlanMode":"Never"}}"#,
        to: "None",
        cross_subnet: false,
    },
];

/// One measured row.
struct Row {
    change: &'static str,
    /// With phases, without, or not a phased change (`None`).
    phased: Option<bool>,
    path: &'static str,
    report: StreamReport,
    done_after: Duration,
    /// Pod a's namespace counters over the change (both of its streams together).
    counters: Option<(Counters, Counters)>,
}

/// The counters of pod a's namespace that tell TCP retransmissions apart, with their labels.
const RETRANSMIT_COUNTERS: &[(&str, &str)] = &[
    ("TcpExt:TCPLossProbes", "tail loss probes"),
    ("TcpExt:TCPTimeouts", "timeouts"),
    ("TcpExt:TCPSpuriousRTOs", "spurious RTOs"),
    ("TcpExt:TCPFastRetrans", "fast retransmits"),
    ("TcpExt:TCPSACKReorder", "SACK reordering"),
    ("TcpExt:TCPDSACKRecv", "DSACKs received"),
    ("TcpExt:TCPLostRetransmit", "lost retransmits"),
    ("IcmpMsg:InType3", "ICMP unreachable in"),
];

/// The changes involving IPIP, for the full-kernel VM (this host's kernel has no ipip): into
/// IPIP, to IPIPCrossSubnet, from there to VXLAN (both modes in one patch), back to IPIP and
/// out to None — each encapsulation entered and left once, and every change between two
/// settings that cross subnets measured a→c too (the router forwards IPIP and VXLAN; None
/// cannot cross). The VM emulates its CPU and `make test-vm` runs every vm_ test in CI, so
/// the sequence is kept to these five.
const IPIP_CHANGES: &[Change] = &[
    Change {
        name: "None -> IPIP (pod MTU 1500 -> 1480)",
        patch: r#"{"spec":{"ipipMode":"Always"}}"#,
        to: "IPIP/Always",
        cross_subnet: false,
    },
    Change {
        name: "IPIP -> IPIPCrossSubnet",
        patch: r#"{"spec":{"ipipMode":"CrossSubnet"}}"#,
        to: "IPIP/CrossSubnet",
        cross_subnet: true,
    },
    Change {
        name: "IPIPCrossSubnet -> VXLAN (pod MTU 1480 -> 1450)",
        patch: r#"{"spec":{"ipipMode":"Never","vxlanMode":"Always"}}"#,
        to: "VXLAN/Always",
        cross_subnet: true,
    },
    Change {
        name: "VXLAN -> IPIP (pod MTU 1450 -> 1480)",
        patch: r#"{"spec":{"ipipMode":"Always","vxlanMode":"Never"}}"#,
        to: "IPIP/Always",
        cross_subnet: true,
    },
    Change {
        name: "IPIP -> None (pod MTU 1480 -> 1500)",
        patch: r#"{"spec":{"ipipMode":"Never"}}"#,
        to: "None",
        cross_subnet: false,
    },
];

/// Runs `changes` with streams a→b (and a→c when it can cross subnets) at `rate` and returns
/// the rows.
fn run_changes(bed: &Bed, pods: &[PodInfo; 3], changes: &[Change], rate: u32, phased: bool) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for change in changes {
        let mut streams = vec![("same subnet", Stream::start(&pods[0], &pods[1], rate)?)];
        if change.cross_subnet {
            streams.push(("cross subnet", Stream::start(&pods[0], &pods[2], rate)?));
        }
        for (path, s) in &streams {
            s.wait_flowing(probe::scaled(WAIT))
                .with_context(|| format!("{}: stream {path} does not flow", change.name))?;
        }
        let before = Counters::read(pods[0].netns()).ok();
        std::thread::sleep(SETTLE);
        let patched = Instant::now();
        bed.kubectl(&["patch", "ippool", &bed.pool, "--type", "merge", "-p", change.patch])?;
        bed.wait_done(change.to, phased).with_context(|| change.name)?;
        let done_after = patched.elapsed();
        std::thread::sleep(SETTLE);
        let reports: Vec<_> = streams.into_iter().map(|(path, s)| (path, s.stop())).collect();
        let counters = before.zip(Counters::read(pods[0].netns()).ok());
        for (path, report) in reports {
            rows.push(Row {
                change: change.name,
                phased: Some(phased),
                path,
                report,
                done_after,
                counters: counters.clone(),
            });
        }
    }
    Ok(rows)
}

fn phases(phased: Option<bool>) -> &'static str {
    match phased {
        Some(true) => "on",
        Some(false) => "off",
        None => "n/a",
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| change | phases | path | sent | lost | reordered | duplicated | longest gap | patch→done | TCP retransmits |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let u = &r.report.udp;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} ms | {:.1} s | {} |",
            r.change,
            phases(r.phased),
            r.path,
            u.sent,
            u.lost,
            u.reordered,
            u.duplicated,
            u.longest_gap.as_millis(),
            r.done_after.as_secs_f64(),
            r.report.tcp.retransmits.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        );
    }
    out
}

/// What the TCP retransmissions were: per stream the sender's socket (`TCP_INFO`), per
/// change pod a's namespace counters (both of its streams).
fn retransmit_table(rows: &[Row]) -> String {
    let mut out = String::new();
    let labels: Vec<&str> = RETRANSMIT_COUNTERS.iter().map(|(_, l)| *l).collect();
    let _ = writeln!(
        out,
        "| change | phases | path | socket: retransmits: RTO, DSACK, reordering, pmtu | {} |",
        labels.join(" | ")
    );
    let _ = writeln!(out, "|---|---|---|---|{}", "---|".repeat(labels.len()));
    for r in rows {
        let socket = r.report.tcp.retransmit_kinds.map(|k| k.breakdown()).unwrap_or_else(|| "?".into());
        let counters: Vec<String> = RETRANSMIT_COUNTERS
            .iter()
            .map(|(name, _)| match &r.counters {
                Some((before, after)) if r.path == "same subnet" => after.since(before, name).to_string(),
                Some(_) => String::new(),
                None => "?".into(),
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.change,
            phases(r.phased),
            r.path,
            socket,
            counters.join(" | ")
        );
    }
    out
}

/// Runs `changes` with phases, then without, prints both side by side and fails on any
/// datagram lost with phases.
fn measure(tag: &str, changes: &[Change], rate: u32) -> Result<()> {
    let mut bed = Bed::new(tag, 30 * u64::from(probe::time_scale()))?;
    bed.wait_done("None", true)?;
    let pods = [bed.topo.add_pod(0, "a")?, bed.topo.add_pod(1, "b")?, bed.topo.add_pod(2, "c")?];

    let phased = run_changes(&bed, &pods, changes, rate, true)?;
    bed.set_phased(false)?;
    let direct = run_changes(&bed, &pods, changes, rate, false)?;

    // Side by side: each change with phases, then without.
    let mut rows = Vec::new();
    let mut direct = direct.into_iter().peekable();
    for row in phased {
        let key = (row.change, row.path);
        rows.push(row);
        while let Some(d) = direct.next_if(|d| (d.change, d.path) == key) {
            rows.push(d);
        }
    }
    let table = table(&rows);
    println!("\n{table}\n{}", retransmit_table(&rows));
    let lost: Vec<String> = rows
        .iter()
        .filter(|r| r.phased == Some(true) && r.report.udp.lost > 0)
        .map(|r| format!("{} ({}): {} lost", r.change, r.path, r.report.udp.lost))
        .collect();
    ensure!(lost.is_empty(), "datagrams lost with phases: {}\n{table}", lost.join("; "));
    bed.finish()
}

#[test]
#[ignore = "root: private API server, operator, agents in network namespaces, real packets"]
fn live_changes_lose_no_packet_with_phases() -> Result<()> {
    measure("live", CHANGES, RATE)
}

/// Datagrams per second in the VM, whose CPU is emulated.
const VM_RATE: u32 = 100;

#[test]
#[ignore = "vm: needs the ipip module (make test-vm VM_TESTS=vm_live_changes)"]
fn vm_live_changes_with_ipip_lose_no_packet_with_phases() -> Result<()> {
    measure("lvip", IPIP_CHANGES, VM_RATE)
}

#[test]
#[ignore = "root: private API server, operator, agents in network namespaces"]
fn a_node_that_does_not_report_pauses_the_change_and_is_named() -> Result<()> {
    let mut bed = Bed::new("stall", 3)?;
    bed.wait_done("None", true)?;
    // node3's agent is gone: its kernel keeps the old settings and it reports nothing new.
    let silent = bed.names[2].clone();
    bed.agents.remove(&2).context("agent of node3")?.stop();
    bed.kubectl(&["patch", "ippool", &bed.pool, "--type", "merge", "-p", r#"{"spec":{"vxlanMode":"Always"}}"#])?;

    let stalled = probe::wait_until("LiveChangeStalled names the silent node", WAIT, || {
        let pool = bed.ippool().map_err(|e| e.to_string())?;
        let status = pool.status.clone().unwrap_or_default();
        let c = status.conditions.iter().find(|c| c.type_ == "LiveChangeStalled").ok_or("no condition")?;
        if c.status == "True" { Ok((c.message.clone(), status)) } else { Err(format!("{c:?}")) }
    })
    .with_context(|| bed.diagnostics())?;
    let (message, status) = stalled;
    ensure!(message.contains(&silent) && message.contains("paused in phase Receive"), "{message}");
    ensure!(!message.contains(&bed.names[0]) && !message.contains(&bed.names[1]), "only the silent node: {message}");
    let phase = status.transition.as_ref().map(|t| t.phase.clone());
    ensure!(phase.as_deref() == Some("Receive"), "paused, not moved on: {phase:?}");
    // The nodes that did report kept sending the old way: still direct, no VXLAN route.
    let route = trellis_e2e::cmd::ip(bed.topo.node(0).netns(), &["route", "show", "proto", "84"])?;
    ensure!(!route.contains("vxlan.trellis"), "node1 switched senders while node3 could not receive:\n{route}");
    let columns = bed.kubectl(&["get", "ippool", &bed.pool, "--no-headers"])?;
    ensure!(columns.contains("Receive"), "kubectl get ippools shows the phase: {columns}");

    // The agent comes back: the change goes on and completes.
    bed.start_agent(2)?;
    bed.wait_done("VXLAN/Always", true)?;
    let pool = bed.ippool()?;
    let c = pool.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "LiveChangeStalled").cloned());
    ensure!(c.is_some_and(|c| c.status == "False"), "the stall cleared");
    bed.finish()
}

/// What one node runs with for MTU: its NodeNetwork `status.mtu`, the VXLAN device's MTU in
/// its kernel and the pod MTU in its conflist.
#[derive(Debug, PartialEq, Eq)]
struct NodeMtu {
    status: Option<i32>,
    device: Option<u32>,
    conflist: Option<u64>,
}

impl Bed {
    fn node_mtus(&self) -> Result<Vec<NodeMtu>> {
        let nns = self.node_networks()?;
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let node = self.topo.node(i);
            let status = nns.get(name).and_then(|nn| nn.status.as_ref()).and_then(|s| s.mtu);
            let link = trellis_e2e::cmd::ip(node.netns(), &["-o", "link", "show", "dev", "vxlan.trellis"]).ok();
            let device =
                link.as_deref().and_then(|l| l.split_whitespace().skip_while(|w| *w != "mtu").nth(1)?.parse().ok());
            let mut conflist = None;
            for entry in std::fs::read_dir(node.cni_conf_dir())? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "conflist") {
                    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
                    conflist = json["plugins"][0]["mtu"].as_u64();
                }
            }
            out.push(NodeMtu { status, device, conflist });
        }
        Ok(out)
    }

    /// Waits until every node reports `mtu` in its status, kernel and conflist.
    fn wait_mtu(&self, mtu: u32) -> Result<()> {
        let want = NodeMtu { status: Some(mtu as i32), device: Some(mtu), conflist: Some(u64::from(mtu)) };
        probe::wait_until(&format!("every node runs MTU {mtu}"), probe::scaled(WAIT), || {
            let mtus = self.node_mtus().map_err(|e| e.to_string())?;
            if mtus.iter().all(|m| *m == want) { Ok(()) } else { Err(format!("{mtus:?}")) }
        })
        .with_context(|| self.diagnostics())
    }

    /// The pod MTU of `pod`'s interface.
    fn pod_mtu(pod: &PodInfo) -> Result<String> {
        let link = trellis_e2e::cmd::ip(pod.netns(), &["-o", "link", "show", "dev", "eth0"])?;
        Ok(link.split_whitespace().skip_while(|w| *w != "mtu").nth(1).unwrap_or("?").to_string())
    }
}

/// The Installation's MTU lowered while pods stream through VXLAN: every agent lowers the
/// VXLAN device and the conflist at once (an MTU is not a phased change), running pods keep
/// theirs, and no datagram is lost.
#[test]
#[ignore = "root: private API server, operator, agents in network namespaces, real packets"]
fn lowering_the_installation_mtu_loses_no_packet() -> Result<()> {
    let mut bed = Bed::new("lmtu", 30)?;
    bed.wait_done("None", true)?;
    let pods = [bed.topo.add_pod(0, "a")?, bed.topo.add_pod(1, "b")?, bed.topo.add_pod(2, "c")?];
    bed.kubectl(&["patch", "ippool", &bed.pool, "--type", "merge", "-p", r#"{"spec":{"vxlanMode":"Always"}}"#])?;
    bed.wait_done("VXLAN/Always", true)?;
    bed.wait_mtu(1450)?;
    // The Installation first states what the agents derive for VXLAN (1500 - 50), so only the
    // patch below changes anything. Its pool entry names the test's pool's CIDR: the operator
    // leaves an IPPool it did not create alone and creates no default pool.
    let installation: trellis_api::Installation = serde_json::from_value(serde_json::json!({
        "apiVersion": "trellis.dev/v1",
        "kind": "Installation",
        "metadata": { "name": "default" },
        "spec": { "network": { "mtu": 1450, "ipPools": [{ "cidr": DEFAULT_POOL }] } },
    }))?;
    bed.rt.block_on(
        Api::<trellis_api::Installation>::all(bed.api.client()).create(&PostParams::default(), &installation),
    )?;
    bed.wait_mtu(1450)?;
    let pod_mtus_before: Vec<String> = pods.iter().map(Bed::pod_mtu).collect::<Result<_>>()?;

    let streams = [
        ("same subnet", Stream::start(&pods[0], &pods[1], RATE)?),
        ("cross subnet", Stream::start(&pods[0], &pods[2], RATE)?),
    ];
    for (path, s) in &streams {
        s.wait_flowing(probe::scaled(WAIT)).with_context(|| format!("stream {path} does not flow"))?;
    }
    let before = Counters::read(pods[0].netns()).ok();
    std::thread::sleep(SETTLE);
    let patched = Instant::now();
    bed.kubectl(&[
        "patch",
        "installation",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"network":{"mtu":1400}}}"#,
    ])?;
    bed.wait_mtu(1400)?;
    let done_after = patched.elapsed();
    std::thread::sleep(SETTLE);
    let reports: Vec<_> = streams.into_iter().map(|(path, s)| (path, s.stop())).collect();
    let counters = before.zip(Counters::read(pods[0].netns()).ok());
    let pod_mtus_after: Vec<String> = pods.iter().map(Bed::pod_mtu).collect::<Result<_>>()?;
    ensure!(
        pod_mtus_after == pod_mtus_before,
        "running pods keep their MTU: {pod_mtus_before:?} -> {pod_mtus_after:?}"
    );

    let rows: Vec<Row> = reports
        .into_iter()
        .map(|(path, report)| Row {
            change: "Installation MTU 1450 -> 1400 (VXLAN)",
            phased: None,
            path,
            report,
            done_after,
            counters: counters.clone(),
        })
        .collect();
    let table = table(&rows);
    println!("\n{table}\n{}\npod MTUs (a, b, c): {pod_mtus_after:?}", retransmit_table(&rows));
    let lost: Vec<String> = rows
        .iter()
        .filter(|r| r.report.udp.lost > 0)
        .map(|r| format!("{}: {} lost", r.path, r.report.udp.lost))
        .collect();
    ensure!(lost.is_empty(), "datagrams lost: {}\n{table}", lost.join("; "));
    bed.finish()
}
