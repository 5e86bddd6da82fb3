//! `make lab`: a 3-node Trellis cluster on this machine, installed from the Helm chart, its
//! operator and agents running as podman containers of the project's images, and the classic
//! pod-network experiments replayed on it, each printed as it runs and summed up in a table
//! (experiment, expected, seen, ok). Exit 0 only if every experiment is ok.
//!
//! ```text
//! lab [--keep] [--no-vm]   run the lab (as root); --keep leaves the cluster up until Ctrl-C
//! lab down                 remove whatever a killed or kept lab left (make lab-down)
//! lab ipip-vm              (inside the kernel VM) the IPIP experiment
//! ```
//! Every "seen" value is measured from the kernel, the API server or a capture.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use trellis_api::EncapMode;
use trellis_e2e::cluster::helm_operator::HelmOperator;
use trellis_e2e::cluster::podman_runtime::{NETNS_LABEL, PodmanRuntime};
use trellis_e2e::cluster::teardown::{self, Leftovers};
use trellis_e2e::cluster::{Cluster, ClusterSpec, PodRef};
use trellis_e2e::lab_report::Summary;
use trellis_e2e::podman;
use trellis_e2e::probe::{self, Capture};
use trellis_e2e::topology::{self, DEFAULT_POOL, Topology};
use trellis_e2e::{cmd, topology::INTERNET};

/// Where a running or kept lab records what identifies it, for `lab down`.
const STATE: &str = "/run/trellis-lab/state.json";
/// The pool the Installation creates.
const POOL: &str = "default-ipv4-ippool";
/// What the VM experiment prints before its JSON result.
const VM_RESULT: &str = "TRELLIS-LAB-IPIP ";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("down") => down().map(|_| true),
        Some("ipip-vm") => ipip_in_vm().map(|_| true),
        _ => {
            let keep = args.iter().any(|a| a == "--keep");
            let vm = !args.iter().any(|a| a == "--no-vm");
            if let Some(bad) = args.iter().find(|a| !matches!(a.as_str(), "--keep" | "--no-vm")) {
                eprintln!("lab: unknown argument {bad} (lab [--keep] [--no-vm] | lab down)");
                return ExitCode::from(2);
            }
            lab(keep, vm)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn section(title: &str) {
    println!("\n=== {title} {}", "=".repeat(70usize.saturating_sub(title.len())));
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// SIGINT/SIGTERM are blocked in every thread (call before any thread starts) and handled by
/// one thread: it removes every registered cluster and the lab's containers, then exits 130.
fn install_signal_teardown() -> Result<()> {
    // SAFETY: plain sigset manipulation and pthread_sigmask on this (still only) thread.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!("cannot block SIGINT/SIGTERM");
        }
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: sigwait on the set blocked above.
        unsafe { libc::sigwait(&set, &mut sig) };
        eprintln!("\nlab: signal {sig}: tearing down");
        let left = teardown::teardown_all();
        remove_containers(None);
        let _ = std::fs::remove_file(STATE);
        if !left.is_empty() {
            eprintln!("lab: left behind: {}", left.join(", "));
        }
        std::process::exit(130);
    });
    Ok(())
}

/// Removes the test bed's containers of the lab (all lab containers when `prefix` is None).
fn remove_containers(prefix: Option<&str>) {
    let filter = format!("label={NETNS_LABEL}");
    let Ok(out) = podman::podman(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]) else { return };
    let lab = prefix.unwrap_or("trlab-");
    for name in out.lines().filter(|n| n.starts_with(lab) || n.contains(&format!("trellis-{lab}"))) {
        let _ = podman::podman_output(&["rm", "-f", "--time", "1", name]);
    }
    // The operator's container is named after the cluster directory.
    if let Ok(out) =
        podman::podman(&["ps", "-a", "--filter", &format!("label={}", podman::TESTBED_LABEL), "--format", "{{.Names}}"])
    {
        for name in out.lines().filter(|n| n.starts_with(&format!("trellis-{lab}"))) {
            let _ = podman::podman_output(&["rm", "-f", "--time", "1", name]);
        }
    }
}

fn write_state(cluster: &Cluster) -> Result<()> {
    let topo = cluster.topology();
    let state = json!({
        "pid": std::process::id(),
        "prefix": topo.prefix,
        "dir": topo.dir(),
        "apiserverState": cluster.kubeconfig().parent(),
    });
    std::fs::create_dir_all(Path::new(STATE).parent().unwrap_or(Path::new("/run")))?;
    std::fs::write(STATE, serde_json::to_string_pretty(&state)?)?;
    Ok(())
}

/// `lab down`: stops a running lab (SIGTERM, its own teardown), then removes what is left.
fn down() -> Result<()> {
    if let Ok(text) = std::fs::read_to_string(STATE) {
        let state: Value = serde_json::from_str(&text).context("reading the lab state")?;
        if let Some(pid) = state["pid"].as_i64().filter(|p| Path::new(&format!("/proc/{p}")).exists()) {
            println!("lab down: stopping the lab (pid {pid})");
            // SAFETY: kill(2) of the lab process recorded in the state file.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let leftovers = Leftovers {
            netns_prefix: state["prefix"].as_str().unwrap_or_default().to_string(),
            dir: PathBuf::from(state["dir"].as_str().unwrap_or_default()),
            apiserver_state: state["apiserverState"].as_str().map(PathBuf::from),
            pids: Vec::new(),
        };
        if !leftovers.netns_prefix.is_empty() {
            let left = teardown::remove(&leftovers);
            if !left.is_empty() {
                bail!("could not remove: {}", left.join(", "));
            }
        }
        let _ = std::fs::remove_file(STATE);
    }
    remove_containers(None);
    let mut left = trellis_e2e::netns::list_with_prefix("trlab-");
    for name in &left {
        drop(trellis_e2e::netns::Netns::adopt(name));
    }
    left = trellis_e2e::netns::list_with_prefix("trlab-");
    if !left.is_empty() {
        bail!("namespaces left: {}", left.join(", "));
    }
    println!("lab down: nothing of the lab is left");
    Ok(())
}

/// The conflist MTU the agent wrote on `node` (what new pods get).
fn conflist_mtu(cluster: &Cluster, node: &str) -> Result<u64> {
    let dir = cluster.cni_conf_dir(node)?;
    let text = std::fs::read_to_string(dir.join("10-trellis.conflist"))?;
    let v: Value = serde_json::from_str(&text)?;
    v["plugins"].as_array().into_iter().flatten().find_map(|p| p["mtu"].as_u64()).context("no mtu in the conflist")
}

fn show_node(cluster: &Cluster, node: &str) -> Result<()> {
    let ns = cluster.node(node)?.netns.clone();
    println!("--- {node} ({ns})");
    for (title, program, args) in [
        ("routes (ip route)", "ip", &["route"][..]),
        ("links (ip -br link)", "ip", &["-br", "link"][..]),
        ("neighbours on vxlan.trellis (ip neigh)", "ip", &["neigh", "show", "dev", "vxlan.trellis"][..]),
        ("FDB of vxlan.trellis (bridge fdb)", "bridge", &["fdb", "show", "dev", "vxlan.trellis"][..]),
    ] {
        let out = cmd::in_ns_output(&ns, program, args)?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        println!("  {title}:\n{}", indent(if text.trim().is_empty() { "(none)" } else { &text }));
    }
    Ok(())
}

/// One ping from `from` to `to`; true if answered.
fn pings(from: &str, to: Ipv4Addr) -> bool {
    probe::ping(from, IpAddr::V4(to), &["-c", "1", "-W", "2"]).is_ok_and(|r| r.ok)
}

/// The connectivity matrix: every pod to every other pod and to the internet.
fn matrix(pods: &[PodRef], summary: &mut Summary) {
    let mut header = format!("  {:12}", "from \\ to");
    for p in pods {
        header.push_str(&format!("{:>16}", format!("{} ({})", p.name, p.node)));
    }
    header.push_str(&format!("{:>16}", "internet"));
    println!("{header}");
    let (mut ok_pairs, mut pairs, mut ok_inet) = (0, 0, 0);
    for a in pods {
        let mut line = format!("  {:12}", a.name);
        for b in pods {
            if a == b {
                line.push_str(&format!("{:>16}", "-"));
                continue;
            }
            pairs += 1;
            let ok = pings(&a.netns, b.ip);
            ok_pairs += usize::from(ok);
            line.push_str(&format!("{:>16}", if ok { "ok" } else { "no reply" }));
        }
        let ok = pings(&a.netns, INTERNET);
        ok_inet += usize::from(ok);
        line.push_str(&format!("{:>16}", if ok { "ok" } else { "no reply" }));
        println!("{line}");
    }
    summary.equal("pod <-> pod (ping, every pair)", format!("{pairs}/{pairs}"), format!("{ok_pairs}/{pairs}"));
    summary.equal(
        "pod -> internet (ping 203.0.113.10)",
        format!("{0}/{0}", pods.len()),
        format!("{ok_inet}/{}", pods.len()),
    );
}

/// How a ping from `from` to `to` crossed `node`'s uplink: "VXLAN", "plain" or "none".
fn wire(cluster: &Cluster, node: &str, from: &PodRef, to: &PodRef) -> Result<(String, Vec<String>)> {
    let ns = cluster.node(node)?.netns.clone();
    let capture = Capture::start(&ns, "eth0", "udp port 4789 or icmp or ip proto 4")?;
    probe::ping(&from.netns, IpAddr::V4(to.ip), &["-c", "2", "-W", "2"])?;
    let seen = capture.stop();
    let vxlan = seen.matching("VXLAN");
    let ipip = seen.matching("ipip-proto-4") + seen.matching("IPIP");
    let plain = seen
        .packets
        .iter()
        .filter(|l| l.contains(&from.ip.to_string()) && l.contains("ICMP") && !l.contains("VXLAN"))
        .count();
    let how = if vxlan > 0 {
        "VXLAN"
    } else if ipip > 0 {
        "IPIP"
    } else if plain > 0 {
        "plain"
    } else {
        "none"
    };
    Ok((how.to_string(), seen.packets.iter().take(4).cloned().collect()))
}

fn show_wire(cluster: &Cluster, node: &str, from: &PodRef, to: &PodRef, expected: &str, summary: &mut Summary) {
    let what = format!("underlay {} -> {} on {node} eth0", from.name, to.name);
    match wire(cluster, node, from, to) {
        Ok((how, lines)) => {
            println!("  {what}: {how}");
            for l in lines {
                println!("      {l}");
            }
            summary.equal(&what, expected, how);
        }
        Err(e) => summary.failed(&what, expected, e),
    }
}

/// The source address the internet host sees for UDP from `pod`.
fn egress_source(cluster: &Cluster, pod: &PodRef, port: u16) -> Result<String> {
    let inet = cluster.topology().internet.name().to_string();
    let src = probe::udp_source_seen(&pod.netns, &inet, INTERNET, port, Duration::from_secs(20))?;
    Ok(src.ip().to_string())
}

fn lab(keep: bool, vm: bool) -> Result<bool> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, podman)");
    }
    install_signal_teardown()?;
    let t0 = Instant::now();
    let mut summary = Summary::default();

    section("building the images (images/build, cached)");
    let runtime = PodmanRuntime::local_images()?;
    println!("  agent and operator images ready ({:.0?})", t0.elapsed());

    section("bringing up the cluster: API server, CRDs, nodes, helm install, agents");
    let spec = ClusterSpec::new("lab")
        .pool("VXLAN", true)
        .runtime(Arc::new(runtime.clone()))
        .operator(Box::new(HelmOperator::new(runtime)));
    let mut cluster = Cluster::up(spec)?;
    write_state(&cluster)?;
    cluster.wait_ready()?;
    println!("  converged after {:.0?}", t0.elapsed());
    let ps = podman::podman(&[
        "ps",
        "--filter",
        &format!("label={}", podman::TESTBED_LABEL),
        "--format",
        "{{.Names}}\t{{.Image}}\t{{.Status}}",
    ])?;
    let mine: Vec<&str> =
        ps.lines().filter(|l| l.contains(&cluster.topology().prefix) || l.contains("trellis-operator")).collect();
    println!("  containers:\n{}", indent(&mine.join("\n")));
    let agents = mine.iter().filter(|l| l.contains("trellis/agent") && l.contains("Up")).count();
    summary.equal("agent containers running (podman)", cluster.nodes().len(), agents);
    let operator = mine.iter().filter(|l| l.contains("trellis/operator") && l.contains("Up")).count();
    summary.equal("operator container from the chart (helm)", 1, operator);

    let a = cluster.add_pod("node1", "default", "pod-a", &[])?;
    let b = cluster.add_pod("node2", "default", "pod-b", &[])?;
    let c = cluster.add_pod("node3", "default", "pod-c", &[])?;
    println!("  pods: {} {} on node1, {} {} on node2, {} {} on node3", a.name, a.ip, b.name, b.ip, c.name, c.ip);

    section("each node: routes, links, neighbours, FDB (vxlanMode: Always)");
    for n in ["node1", "node2", "node3"] {
        show_node(&cluster, n)?;
    }

    section("connectivity matrix");
    let pods = [a.clone(), b.clone(), c.clone()];
    matrix(&pods, &mut summary);

    section("the encapsulation on the underlay (tcpdump on node1's eth0)");
    show_wire(&cluster, "node1", &a, &b, "VXLAN", &mut summary);
    show_wire(&cluster, "node1", &a, &c, "VXLAN", &mut summary);

    section("kubectl get ippools");
    let pools = cluster.kubectl(&["get", "ippools"])?;
    print!("{}", indent(&pools));
    let ready = cluster.kubectl(&["get", "ippool", POOL, "-o", "jsonpath={.status.ready}"])?;
    summary.equal("IPPool READY", "3/3", ready.trim());

    section("MTU with VXLAN");
    let mtu_vxlan = conflist_mtu(&cluster, "node1")?;
    let dev = probe::link_mtu(&cluster.node("node1")?.netns, "vxlan.trellis")?.unwrap_or_default();
    println!("  conflist mtu {mtu_vxlan}, vxlan.trellis mtu {dev} (uplink 1500 - 50)");
    summary.equal("MTU VXLAN (pods, conflist)", 1450, mtu_vxlan);
    let max = mtu_vxlan.saturating_sub(28) as u32;
    let fits = probe::ping_df(&a.netns, IpAddr::V4(c.ip), max)?;
    let too_big = probe::ping_df(&a.netns, IpAddr::V4(c.ip), max + 1)?;
    summary.check(
        "DF ping pod-a -> pod-c at the MTU / one byte more",
        "passes / refused",
        format!("{} / {}", if fits.ok { "passes" } else { "lost" }, if too_big.ok { "passes" } else { "refused" }),
        fits.ok && !too_big.ok,
    );

    section("kubectl patch ippool default-ipv4-ippool --type merge -p '{\"spec\":{\"vxlanMode\":\"CrossSubnet\"}}'");
    let before = BTreeMap::from([
        ("node2", cluster.route_to("node1", "node2")?),
        ("node3", cluster.route_to("node1", "node3")?),
    ]);
    let t = Instant::now();
    print!("{}", indent(&cluster.patch_pool(POOL, r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#)?));
    cluster.wait_pool_mode(POOL, "VXLAN/CrossSubnet")?;
    println!("  every node applied it after {:.1?}", t.elapsed());
    let after = BTreeMap::from([
        ("node2", cluster.route_to("node1", "node2")?),
        ("node3", cluster.route_to("node1", "node3")?),
    ]);
    for peer in ["node2", "node3"] {
        let changed = if before[peer] == after[peer] { "unchanged" } else { "flipped" };
        println!("  node1 -> {peer} ({changed}):\n    before: {}\n    after:  {}", before[peer], after[peer]);
    }
    summary.check(
        "CrossSubnet: node1 -> node2 (same subnet)",
        "via 10.0.1.12 dev eth0",
        &after["node2"],
        after["node2"].contains("via 10.0.1.12 dev eth0"),
    );
    summary.check(
        "CrossSubnet: node1 -> node3 (other subnet)",
        "dev vxlan.trellis onlink",
        &after["node3"],
        after["node3"].contains("dev vxlan.trellis onlink"),
    );
    show_wire(&cluster, "node1", &a, &b, "plain", &mut summary);
    show_wire(&cluster, "node1", &a, &c, "VXLAN", &mut summary);
    let mtu = conflist_mtu(&cluster, "node1")?;
    summary.equal("MTU VXLANCrossSubnet (conflist)", 1450, mtu);

    section("NAT egress: what a server in the internet namespace sees");
    let src = egress_source(&cluster, &c, 9200)?;
    println!("  pod-c ({}) -> 203.0.113.10: the server sees {src}", c.ip);
    summary.equal("natOutgoing: true, source seen", cluster.node("node3")?.ip(), &src);
    print!("{}", indent(&cluster.patch_pool(POOL, r#"{"spec":{"natOutgoing":false}}"#)?));
    cluster.wait_converged()?;
    let src = egress_source(&cluster, &c, 9201)?;
    println!("  after natOutgoing: false the server sees {src}");
    summary.equal("natOutgoing: false, source seen", c.ip, &src);
    cluster.patch_pool(POOL, r#"{"spec":{"natOutgoing":true}}"#)?;

    section("vxlanMode: Never (no encapsulation)");
    print!("{}", indent(&cluster.patch_pool(POOL, r#"{"spec":{"vxlanMode":"Never"}}"#)?));
    cluster.wait_pool_mode(POOL, "None")?;
    let r3 = cluster.route_to("node1", "node3")?;
    println!("  node1 -> node3: {r3}");
    summary.equal("MTU None (conflist)", 1500, conflist_mtu(&cluster, "node1")?);
    let vx = probe::link_mtu(&cluster.node("node1")?.netns, "vxlan.trellis")?;
    summary.equal(
        "None: vxlan.trellis removed",
        "absent",
        vx.map_or("absent".to_string(), |m| format!("present (mtu {m})")),
    );
    cluster.patch_pool(POOL, r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#)?;
    cluster.wait_pool_mode(POOL, "VXLAN/CrossSubnet")?;

    if vm {
        section("IPIP (ipipMode: Always) in the full-kernel VM: this host's kernel has no ipip");
        ipip_from_vm(&mut summary);
    }

    section("summary");
    println!("{summary}");
    println!("lab took {:.0?}", t0.elapsed());
    if keep {
        let ns: Vec<String> = cluster.nodes().iter().map(|n| n.netns.clone()).collect();
        println!(
            "\nThe cluster stays up until Ctrl-C here (or `make lab-down` elsewhere). Explore it:\n\
             \x20 export KUBECONFIG={}\n\
             \x20 kubectl get installation,ippools,ipamblocks,nodenetworks,nodes\n\
             \x20 kubectl patch ippool {POOL} --type merge -p '{{\"spec\":{{\"vxlanMode\":\"Always\"}}}}'\n\
             \x20 ip netns exec {} ip route        # nodes: {}\n\
             \x20 ip netns exec {} ping {}       # pod-a -> pod-c\n\
             \x20 e2e/testbed/podman ps            # the agents and the operator",
            cluster.kubeconfig().display(),
            ns[0],
            ns.join(" "),
            a.netns,
            c.ip,
        );
        // The signal thread tears down and exits.
        loop {
            std::thread::park();
        }
    }
    cluster.down().context("teardown")?;
    let _ = std::fs::remove_file(STATE);
    Ok(summary.all_ok())
}

/// Runs `lab ipip-vm` in the kernel VM and turns its result line into summary rows.
fn ipip_from_vm(summary: &mut Summary) {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("lab"));
    let agent = match trellis_e2e::agent::binary() {
        Ok(a) => a,
        Err(e) => return summary.failed("IPIP in the VM", "routes dev tunl0 onlink", e),
    };
    let kvm = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed").join("kernel-vm");
    let script =
        format!("mkdir -p /run/netns && TMPDIR=/tmp TRELLIS_AGENT_BIN={} {} ipip-vm", agent.display(), me.display());
    let t = Instant::now();
    let out = std::process::Command::new(&kvm).args(["--", "sh", "-c", &script]).output();
    let out = match out {
        Ok(o) => o,
        Err(e) => return summary.failed("IPIP in the VM", "routes dev tunl0 onlink", e),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines().filter(|l| !l.starts_with(VM_RESULT)) {
        println!("  {line}");
    }
    println!("  (VM run took {:.0?})", t.elapsed());
    let Some(result) = stdout.lines().find_map(|l| l.strip_prefix(VM_RESULT)) else {
        let err = String::from_utf8_lossy(&out.stderr);
        return summary.failed(
            "IPIP in the VM",
            "routes dev tunl0 onlink",
            format!("no result; {}", err.lines().last().unwrap_or("")),
        );
    };
    let r: Value = serde_json::from_str(result).unwrap_or_default();
    let route = r["route"].as_str().unwrap_or_default().to_string();
    summary.check("IPIP Always: node1 -> node2 route", "dev tunl0 onlink", &route, route.contains("dev tunl0 onlink"));
    summary.equal("MTU IPIP (tunl0)", 1480, r["tunl0Mtu"].as_u64().unwrap_or_default());
    summary.equal("IPIP: pod-a -> pod-c (other subnet)", "ok", r["ping"].as_str().unwrap_or("no result"));
    summary.equal("IPIP on the underlay", "IPIP", r["wire"].as_str().unwrap_or("no result"));
}

/// Inside the VM: three nodes, the agent from a snapshot with an `ipipMode: Always` pool (no
/// API server in the slow VM: the agent's planner and kernel layer are the same), the routes,
/// a pod ping across subnets and the capture on the underlay.
fn ipip_in_vm() -> Result<()> {
    let mut topo = Topology::standard("lab")?;
    let pool = topology::pool(POOL, DEFAULT_POOL, EncapMode::Always, EncapMode::Never, true)?;
    topo.apply_once_all(std::slice::from_ref(&pool))?;
    for n in &topo.nodes {
        println!("--- {} routes (proto 84):\n{}", n.name, indent(&probe::routes_with_proto(n.netns(), 84)?.join("\n")));
    }
    let route =
        cmd::ip(topo.node(0).netns(), &["route", "show", &topo.node(1).blocks[0].to_string()])?.trim().to_string();
    let tunl0 = probe::link_mtu(topo.node(0).netns(), "tunl0")?.unwrap_or_default();
    let a = topo.add_pod(0, "a")?;
    let c = topo.add_pod(2, "c")?;
    let ping = probe::wait_ping(&a.netns, IpAddr::V4(c.ip), Duration::from_secs(10)).is_ok();
    let capture = Capture::start(topo.node(0).netns(), "eth0", "ip proto 4")?;
    let _ = probe::ping(&a.netns, IpAddr::V4(c.ip), &["-c", "2", "-W", "2"]);
    let seen = capture.stop();
    for l in seen.packets.iter().take(2) {
        println!("  {l}");
    }
    let wire = if seen.count() > 0 { "IPIP" } else { "none" };
    let result = json!({"route": route, "tunl0Mtu": tunl0, "ping": if ping { "ok" } else { "no reply" }, "wire": wire});
    topo.finish()?;
    println!("{VM_RESULT}{result}");
    Ok(())
}
