//! Faults under traffic (issue 10, part 3): what a crashed agent, a dead operator, an API
//! server outage, a deleted node or a hand-edited kernel does to pods' traffic.
//!
//! Each test brings up its own one-machine cluster ([`Cluster::up`]: private API server, the
//! real operator, agents started by the kubelet stand-in from the operator's DaemonSet, node1
//! and node2 on subnet 1, node3 on subnet 2), pods a (node1), b (node2) and d (node3), and for
//! every fault runs a UDP stream with sequence numbers (1 000 datagrams/s) and a TCP stream
//! from a to b (same subnet) and, where the fault leaves node3 in place, from a to d (across
//! subnets, VXLAN). Each prints a table row per fault and path: lost, reordered, duplicated,
//! longest gap, TCP retransmits and when the system was back (see [`Row`]).
//!
//! `cargo test -p trellis-e2e --test faults -- --ignored --nocapture` (as root).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use trellis_e2e::cluster::{
    Cluster, ClusterSpec, InstalledOperator, NAMESPACE, OperatorEnv, OperatorInstall, PodRef, scaled,
};
use trellis_e2e::operator::OperatorProcess;
use trellis_e2e::probe;
use trellis_e2e::stream::{REPORT_COLUMNS, Stream, StreamReport};

const POOL: &str = "default-ipv4-ippool";
const VXLAN_DEV: &str = "vxlan.trellis";
const WAIT: Duration = Duration::from_secs(30);
/// Datagrams per second of the UDP streams (and KiB/s of their TCP halves).
const RATE: u32 = 1000;
/// What issue 10 allows for a hand-deleted object to come back.
const RESTORE_WITHIN: Duration = Duration::from_secs(10);
/// The operators' Lease (seconds): a standby leads within it after the leader died.
const LEASE_SECONDS: &str = "4";
/// How long the API server stays away in the outage scenario.
const OUTAGE: Duration = Duration::from_secs(60);
/// After an outage the agents' watches retry with kube-runtime's backoff (up to 30 s).
const RECONNECT_WAIT: Duration = Duration::from_secs(90);
const PATCH_ALWAYS: &str = r#"{"spec":{"vxlanMode":"Always"}}"#;
const PATCH_CROSS_SUBNET: &str = r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#;

/// One measured row: a fault, a stream's path, what the stream saw, and how long after the
/// fault the system was back (agent ready, state restored, or the change completed).
struct Row {
    fault: String,
    path: &'static str,
    report: StreamReport,
    recovered: Duration,
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| fault | path | {REPORT_COLUMNS} | back after | TCP retransmits |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} s | {} |",
            r.fault,
            r.path,
            r.report.cells(),
            r.recovered.as_secs_f64(),
            r.report.retransmits_cell(),
        );
    }
    out
}

/// Streams over `pairs` with their path names, flowing before the fault.
fn streams(c: &Cluster, pairs: &[(&'static str, &PodRef, &PodRef)]) -> Result<Vec<(&'static str, Stream)>> {
    let mut out = Vec::new();
    for (path, from, to) in pairs {
        let s = Stream::start(*from, *to, RATE)?;
        s.wait_flowing(scaled(WAIT)).map_err(|e| c.with_dump(e))?;
        out.push((*path, s));
    }
    // Some traffic before the fault, so its start is measured.
    std::thread::sleep(Duration::from_millis(500));
    Ok(out)
}

/// Stops the streams (after some traffic past the recovery) into rows.
fn rows(fault: &str, streams: Vec<(&'static str, Stream)>, recovered: Duration) -> Vec<Row> {
    std::thread::sleep(Duration::from_millis(500));
    streams.into_iter().map(|(path, s)| Row { fault: fault.to_string(), path, report: s.stop(), recovered }).collect()
}

/// Trellis' kernel state of a node: routes (proto 84), VXLAN neighbours and FDB entries, the
/// VXLAN device, the NAT table.
fn kernel_state(c: &Cluster, node: &str) -> Result<String> {
    let ns = c.node(node)?.netns.clone();
    let routes = trellis_e2e::cmd::ip(&ns, &["route", "show", "proto", "84"])?;
    let has_dev = trellis_e2e::cmd::ip(&ns, &["-o", "link", "show"])?.contains(&format!(" {VXLAN_DEV}:"));
    let (dev, neigh, fdb) = if has_dev {
        (
            trellis_e2e::cmd::ip(&ns, &["-d", "-o", "link", "show", VXLAN_DEV])?
                .split_whitespace()
                .skip_while(|w| *w != "vxlan")
                .take(12)
                .collect::<Vec<_>>()
                .join(" "),
            trellis_e2e::cmd::ip(&ns, &["neigh", "show", "dev", VXLAN_DEV, "nud", "permanent"])?,
            trellis_e2e::cmd::in_ns(&ns, "bridge", &["fdb", "show", "dev", VXLAN_DEV])?,
        )
    } else {
        Default::default()
    };
    let nft = trellis_e2e::cmd::in_ns(&ns, "nft", &["list", "table", "inet", "trellis"]).unwrap_or_default();
    Ok(format!("{routes}--\n{dev}--\n{neigh}--\n{fdb}--\n{nft}"))
}

/// Each node's reported phase of the running change (None: no report of it yet).
type Reports = BTreeMap<String, Option<String>>;

/// The pool's live change, if one runs: (phase, the nodes' reported phases).
fn change(c: &Cluster) -> Result<Option<(String, Reports)>> {
    let pool = c.pools()?.into_iter().find(|p| p.metadata.name.as_deref() == Some(POOL)).context("no pool")?;
    let Some(t) = pool.status.and_then(|s| s.transition) else { return Ok(None) };
    let reports = c
        .node_networks()?
        .into_iter()
        .map(|(n, nn)| {
            let p = nn.status.and_then(|s| s.pools.into_iter().find(|p| p.name == POOL));
            (n, p.filter(|p| p.generation >= t.generation).and_then(|p| p.phase))
        })
        .collect();
    Ok(Some((t.phase, reports)))
}

/// Waits until the pool's change to `mode` is done: no transition, `status.active` at the
/// pool's generation, every node converged on `mode` with no phase.
fn wait_done(c: &Cluster, mode: &str, timeout: Duration) -> Result<()> {
    c.wait_pool_mode_within(POOL, mode, timeout)?;
    probe::wait_until(&format!("the change to {mode} done"), timeout, || {
        let pool = c.pools().map_err(|e| e.to_string())?.into_iter().find(|p| p.metadata.name.as_deref() == Some(POOL));
        let pool = pool.ok_or("no pool")?;
        let status = pool.status.clone().unwrap_or_default();
        if status.transition.is_some() || status.active.as_ref().map(|a| a.generation) != pool.metadata.generation {
            return Err(format!("active {:?}, transition {:?}", status.active, status.transition));
        }
        for (n, nn) in c.node_networks().map_err(|e| e.to_string())? {
            let p = nn.status.and_then(|s| s.pools.into_iter().find(|p| p.name == POOL));
            if p.as_ref().is_none_or(|p| p.encapsulation != mode || p.phase.is_some()) {
                return Err(format!("{n}: {p:?}"));
            }
        }
        Ok(())
    })
    .map_err(|e| c.with_dump(e))?;
    Ok(())
}

/// Waits until a change runs in `phase` and every node but `silent` reported it.
fn wait_phase_reported_but(c: &Cluster, phase: &str, silent: &str) -> Result<()> {
    probe::wait_until(&format!("every node but {silent} in {phase}"), scaled(WAIT), || {
        let (p, reports) = change(c).map_err(|e| e.to_string())?.ok_or("no change runs")?;
        let others = reports.iter().filter(|(n, _)| n.as_str() != silent).all(|(_, r)| r.as_deref() == Some(phase));
        if p == phase && others { Ok(()) } else { Err(format!("phase {p}, reports {reports:?}")) }
    })
    .map_err(|e| c.with_dump(e))?;
    Ok(())
}

/// Fails the test if any stream lost a datagram.
fn ensure_nothing_lost(rows: &[Row]) -> Result<()> {
    let lost: Vec<String> = rows
        .iter()
        .filter(|r| r.report.udp.lost > 0 || r.report.tcp.corrupt || r.report.udp.received == 0)
        .map(|r| format!("{} ({}): {}; loss windows {:?}", r.fault, r.path, r.report, r.report.udp.loss_windows))
        .collect();
    ensure!(lost.is_empty(), "lost traffic:\n{}\n{}", lost.join("\n"), table(rows));
    Ok(())
}

/// `ip monitor`, `bridge monitor fdb` and `nft monitor` in a node's namespace, recording every
/// notification until stopped.
struct Monitor {
    children: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Monitor {
    fn start(netns: &str) -> Result<Monitor> {
        let dir = tempfile::tempdir()?;
        let mut children = Vec::new();
        for (name, args) in [
            ("ip", vec!["ip", "-o", "monitor", "route", "neigh", "link", "address"]),
            ("bridge", vec!["bridge", "monitor", "fdb"]),
            ("nft", vec!["nft", "monitor"]),
        ] {
            let out = std::fs::File::create(dir.path().join(name))?;
            let child = Command::new("ip")
                .args(["netns", "exec", netns])
                .args(&args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()?;
            children.push((name.to_string(), child));
        }
        // The monitors subscribe right after they start.
        std::thread::sleep(Duration::from_millis(300));
        Ok(Monitor { children, dir })
    }

    /// Stops the monitors; returns every notification about Trellis' own state: routes with
    /// proto 84, the VXLAN device and its neighbours, FDB entries and addresses, the NAT table
    /// `inet trellis`.
    fn stop(mut self) -> Result<Vec<String>> {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut ours = Vec::new();
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.dir.path().join(name))?;
            for line in text.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                let nat_table = words.windows(2).any(|w| w == ["inet", "trellis"]);
                // The kernel's own IPv6 link-local address on the device (and its local route)
                // settles after duplicate address detection, whoever made the device.
                let kernel_own = line.contains("fe80::") || line.contains("proto kernel");
                if line.contains("proto 84") || (line.contains(VXLAN_DEV) && !kernel_own) || nat_table {
                    ours.push(format!("{name}: {line}"));
                }
            }
        }
        Ok(ours)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The `DriftRepaired` Events on Node `node` whose note contains `needle`.
fn drift_events(c: &Cluster, node: &str, needle: &str) -> Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(c.client(), "default");
    let list = c.block_on(events.list(&ListParams::default()))?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("DriftRepaired"))
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Node") && r.name.as_deref() == Some(node))
        })
        .filter_map(|e| e.note)
        .filter(|n| n.contains(needle))
        .collect())
}

/// The cluster of `spec`, ready, with pods a (node1), b (node2, a's subnet) and d (node3, the
/// other subnet).
fn cluster_with_pods(spec: ClusterSpec, started: Instant) -> Result<(Cluster, [PodRef; 3])> {
    let mut c = Cluster::up(spec)?;
    c.wait_ready()?;
    eprintln!("[{:.1?}] cluster ready", started.elapsed());
    let pods = [
        c.add_pod("node1", "default", "a", &[])?,
        c.add_pod("node2", "default", "b", &[])?,
        c.add_pod("node3", "default", "d", &[])?,
    ];
    eprintln!("[{:.1?}] pods running", started.elapsed());
    Ok((c, pods))
}

#[test]
#[ignore = "root: private API server, operator, agents in network namespaces, CNI plugins"]
fn agent_sigkill_is_adopted_without_flaps_and_hand_deleted_state_comes_back_with_an_event() -> Result<()> {
    let started = Instant::now();
    let (c, [a, b, d]) = cluster_with_pods(ClusterSpec::new("fda"), started)?;
    let pairs = [("same subnet", &a, &b), ("cross subnet", &a, &d)];
    let mut table_rows = Vec::new();

    // The agent of node1 is killed (SIGKILL) and restarted by the kubelet: it adopts the kernel
    // as it is, so nothing Trellis owns is deleted, replaced or re-added.
    let before = kernel_state(&c, "node1")?;
    let restarts = c.kubelet().restarts("node1");
    let s = streams(&c, &pairs)?;
    let monitor = Monitor::start(&c.node("node1")?.netns)?;
    let killed = Instant::now();
    c.kubelet().kill("node1")?;
    probe::wait_until("node1's agent restarted and ready", scaled(WAIT), || {
        let ready = c.kubelet().pods().get("node1").is_some_and(|(ready, _)| *ready);
        if c.kubelet().restarts("node1") > restarts && ready { Ok(()) } else { Err(c.kubelet().report()) }
    })
    .map_err(|e| c.with_dump(e))?;
    let back = killed.elapsed();
    // Its first passes (start, then the echo of any change) have run once it is ready; give a
    // late change the time to show.
    std::thread::sleep(Duration::from_secs(1));
    let flaps = monitor.stop()?;
    let agent_rows = rows("agent SIGKILLed, restarted", s, back);
    ensure!(flaps.is_empty(), "the restarted agent touched what it should have adopted:\n{}", flaps.join("\n"));
    ensure!(kernel_state(&c, "node1")? == before, "node1's state changed over the restart:\n{}", c.dump());
    ensure_nothing_lost(&agent_rows)?;
    table_rows.extend(agent_rows);
    eprintln!("[{:.1?}] agent restarted after {back:.2?}", started.elapsed());

    // Hand-deleted state on node1: put back within 10 s, with an Event on the Node.
    let route = c.route_to("node1", "node3")?;
    let block = route.split_whitespace().next().context("no route to node3")?.to_string();
    let tunnel_ip = route.split_whitespace().skip_while(|w| *w != "via").nth(1).context("no gateway")?.to_string();
    ensure!(route.contains(VXLAN_DEV), "node1 -> node3 goes through VXLAN: {route}");
    let ns1 = c.node("node1")?.netns.clone();
    let neigh = trellis_e2e::cmd::ip(&ns1, &["neigh", "show", &tunnel_ip, "dev", VXLAN_DEV])?;
    let mac = neigh.split_whitespace().skip_while(|w| *w != "lladdr").nth(1).context("no lladdr")?.to_string();
    let node3_ip = c.node("node3")?.ip().to_string();
    let neigh_needle = format!("neigh replace {tunnel_ip}");
    let fdb_needle = format!("fdb replace {mac}");
    let faults: [(&str, Vec<&str>, &str); 5] = [
        ("route deleted", vec!["ip", "route", "del", block.as_str(), "proto", "84"], block.as_str()),
        ("neighbour deleted", vec!["ip", "neigh", "del", tunnel_ip.as_str(), "dev", VXLAN_DEV], neigh_needle.as_str()),
        (
            "FDB entry deleted",
            vec!["bridge", "fdb", "del", mac.as_str(), "dev", VXLAN_DEV, "dst", node3_ip.as_str()],
            fdb_needle.as_str(),
        ),
        ("VXLAN device deleted", vec!["ip", "link", "del", VXLAN_DEV], "link add vxlan.trellis"),
        ("NAT table deleted", vec!["nft", "delete", "table", "inet", "trellis"], "nftables table inet trellis"),
    ];
    for (fault, command, needle) in faults {
        let before = kernel_state(&c, "node1")?;
        let events_before = drift_events(&c, "node1", needle)?.len();
        let s = streams(&c, &pairs)?;
        let t0 = Instant::now();
        trellis_e2e::cmd::in_ns(&ns1, command[0], &command[1..])?;
        let restored = probe::wait_until(&format!("{fault}: node1's state restored"), RESTORE_WITHIN, || {
            let now = kernel_state(&c, "node1").map_err(|e| e.to_string())?;
            if now == before { Ok(t0.elapsed()) } else { Err(now) }
        })
        .map_err(|e| c.with_dump(e))?;
        let fault_rows = rows(&format!("{fault} by hand"), s, restored);
        let events = probe::wait_until(&format!("{fault}: a DriftRepaired Event on node1"), scaled(WAIT), || {
            let events = drift_events(&c, "node1", needle).map_err(|e| e.to_string())?;
            if events.len() > events_before { Ok(events) } else { Err(format!("{events:?}")) }
        })
        .map_err(|e| c.with_dump(e))?;
        eprintln!(
            "[{:.1?}] {fault}: restored after {restored:.2?}; Event: {}",
            started.elapsed(),
            events.last().map_or("", String::as_str)
        );
        for r in &fault_rows {
            ensure!(r.report.udp.received > 0 && !r.report.tcp.corrupt, "{fault}: {}", r.report);
        }
        table_rows.extend(fault_rows);
    }
    println!("\n{}", table(&table_rows));
    c.down()?;
    eprintln!("[{:.1?}] cluster down", started.elapsed());
    Ok(())
}

/// Operator replicas with leader election, started as processes; the test kills and adds them.
#[derive(Clone, Default)]
struct Replicas {
    running: Arc<Mutex<Vec<OperatorProcess>>>,
    env: Arc<Mutex<Option<OperatorEnv>>>,
}

impl Replicas {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OperatorProcess>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts one more replica named `identity`.
    fn add(&self, identity: &str) -> trellis_e2e::error::Result<()> {
        let env = self.env.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let env = env.ok_or_else(|| trellis_e2e::error::Error::Setup("replicas not installed".into()))?;
        let args = ["--namespace", env.namespace.as_str(), "--lease-duration", LEASE_SECONDS];
        let process = OperatorProcess::start(Path::new(&env.kubeconfig), identity, &args)?;
        self.lock().push(process);
        Ok(())
    }

    /// SIGKILLs the replica `identity` (a crashed pod: the Lease is not released).
    fn kill(&self, identity: &str) -> Result<()> {
        let mut running = self.lock();
        let pos = running.iter().position(|p| p.identity == identity).with_context(|| format!("no {identity}"))?;
        let mut killed = running.remove(pos);
        killed.kill();
        Ok(())
    }
}

impl OperatorInstall for Replicas {
    fn describe(&self) -> String {
        "two replicas with leader election".into()
    }

    fn install(&self, env: &OperatorEnv) -> trellis_e2e::error::Result<Box<dyn InstalledOperator>> {
        *self.env.lock().unwrap_or_else(|p| p.into_inner()) = Some(env.clone());
        self.add("operator-0")?;
        self.add("operator-1")?;
        Ok(Box::new(self.clone()))
    }
}

impl InstalledOperator for Replicas {
    fn logs(&self) -> String {
        self.lock().iter().map(|p| format!("--- {} ---\n{}", p.identity, p.log())).collect::<Vec<_>>().join("\n")
    }

    fn pids(&self) -> Vec<u32> {
        self.lock().iter().filter_map(OperatorProcess::pid).collect()
    }

    fn uninstall(&mut self) -> trellis_e2e::error::Result<()> {
        for mut p in std::mem::take(&mut *self.lock()) {
            p.terminate(Duration::from_secs(5));
        }
        Ok(())
    }
}

/// The operators' Lease holder.
fn leader(c: &Cluster) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(c.client(), NAMESPACE);
    let lease = c.block_on(leases.get_opt("trellis-operator"))?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty()))
}

#[test]
#[ignore = "root: private API server, two operators, agents in network namespaces, CNI plugins"]
fn changes_survive_a_dead_operator_an_api_server_outage_and_a_deleted_node_without_loss() -> Result<()> {
    let replicas = Replicas::default();
    let started = Instant::now();
    let (mut c, [a, b, d]) = cluster_with_pods(ClusterSpec::new("fdc").operator(Box::new(replicas.clone())), started)?;
    let pairs = [("same subnet", &a, &b), ("cross subnet", &a, &d)];
    let mut table_rows = Vec::new();

    // 1. The leading operator dies in phase Switch (VXLANCrossSubnet -> VXLAN): node3's agent
    // is frozen the moment Switch starts, so the cluster is half-switched while nobody leads.
    // The standby takes the Lease, resumes from the status, waits for node3 and finishes.
    let first = probe::wait_until("an operator leads", scaled(WAIT), || {
        leader(&c).map_err(|e| e.to_string())?.ok_or_else(|| "no holder".to_string())
    })?;
    let s = streams(&c, &pairs)?;
    c.patch_pool(POOL, PATCH_ALWAYS)?;
    let deadline = Instant::now() + scaled(WAIT);
    let reports = loop {
        if let Some((phase, r)) = change(&c)?
            && phase == "Switch"
        {
            c.kubelet().pause("node3")?;
            break r;
        }
        ensure!(Instant::now() < deadline, "the change never reached Switch:\n{}", c.dump());
        std::thread::sleep(Duration::from_millis(10));
    };
    let killed = Instant::now();
    replicas.kill(&first)?;
    // What node3 had reported when it froze (it may have switched already if its agent was
    // faster than this poll): the rest of the scenario holds either way.
    eprintln!("operator {first} killed in Switch; node reports then: {reports:?}");
    let second = probe::wait_until("the standby takes the Lease", scaled(WAIT), || {
        match leader(&c).map_err(|e| e.to_string())? {
            Some(h) if h != first => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })?;
    // The new leader holds the change in Switch while node3 has not switched.
    std::thread::sleep(Duration::from_secs(2));
    let (phase, now) = change(&c)?.context("the change vanished while node3 is frozen")?;
    if now.get("node3").and_then(|p| p.as_deref()) != Some("Switch") {
        ensure!(phase == "Switch", "moved on to {phase} while node3 had not switched: {now:?}");
    }
    c.kubelet().resume("node3")?;
    wait_done(&c, "VXLAN/Always", scaled(WAIT))?;
    let done = killed.elapsed();
    eprintln!("{second} took over from {first}; change done {done:.2?} after the kill");
    let op_rows = rows("operator killed in Switch", s, done);
    ensure_nothing_lost(&op_rows)?;
    table_rows.extend(op_rows);
    // As a Deployment would, a new replica replaces the dead one.
    replicas.add("operator-2")?;
    eprintln!("[{:.1?}] operator scenario done", started.elapsed());

    // 2. The API server stops for 60 s during a change (VXLAN -> VXLANCrossSubnet), with
    // node3's agent frozen so the change is waiting in Receive: the data plane stays as it
    // is, the change waits, and it finishes after the server returns.
    let s = streams(&c, &pairs)?;
    c.kubelet().pause("node3")?;
    c.patch_pool(POOL, PATCH_CROSS_SUBNET)?;
    wait_phase_reported_but(&c, "Receive", "node3")?;
    let nodes = ["node1", "node2", "node3"];
    let before: BTreeMap<&str, String> = nodes.iter().map(|n| Ok((*n, kernel_state(&c, n)?))).collect::<Result<_>>()?;
    c.pause_api_server()?;
    let outage = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    c.kubelet().resume("node3")?;
    std::thread::sleep(OUTAGE.saturating_sub(outage.elapsed()));
    for n in nodes {
        ensure!(kernel_state(&c, n)? == before[n], "{n} changed during the outage:\n{}", c.dump());
    }
    c.resume_api_server()?;
    let resumed = Instant::now();
    wait_done(&c, "VXLAN/CrossSubnet", scaled(RECONNECT_WAIT))?;
    let api_rows = rows("API server stopped 60 s in Receive", s, resumed.elapsed());
    ensure_nothing_lost(&api_rows)?;
    table_rows.extend(api_rows);
    for n in nodes {
        ensure!(c.kubelet().restarts(n) == 0, "{n}'s agent restarted:\n{}", c.kubelet().logs(n));
    }
    eprintln!("[{:.1?}] API server scenario done", started.elapsed());

    // 3. node3 is deleted while the change (VXLANCrossSubnet -> VXLAN) waits for it: the
    // change completes for node1 and node2.
    let s = streams(&c, &[("same subnet", &a, &b)])?;
    c.kubelet().pause("node3")?;
    c.patch_pool(POOL, PATCH_ALWAYS)?;
    wait_phase_reported_but(&c, "Receive", "node3")?;
    let deleted = Instant::now();
    c.remove_node("node3")?;
    wait_done(&c, "VXLAN/Always", scaled(WAIT))?;
    let node_rows = rows("node3 deleted in Receive", s, deleted.elapsed());
    ensure_nothing_lost(&node_rows)?;
    table_rows.extend(node_rows);
    let pool = c.pools()?.into_iter().find(|p| p.metadata.name.as_deref() == Some(POOL)).context("no pool")?;
    let status = pool.status.unwrap_or_default();
    ensure!(status.ready.as_deref() == Some("2/2"), "READY {:?}", status.ready);
    if let Some(stalled) = status.conditions.iter().find(|c| c.type_ == "LiveChangeStalled" && c.status == "True") {
        bail!("stalled on a deleted node: {stalled:?}");
    }

    println!("\n{}", table(&table_rows));
    c.down()?;
    eprintln!("[{:.1?}] cluster down", started.elapsed());
    Ok(())
}
