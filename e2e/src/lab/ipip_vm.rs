//! Chapter: IPIP. This host's kernel has no `ipip` module, so the chapter boots the project's
//! full-kernel VM (`e2e/testbed/kernel-vm`, as `make test-vm` does) and runs [`in_vm`] there
//! (`lab ipip-vm`): a second one-machine cluster with its own API server and operator, agents
//! as processes of the same binaries with only NET_ADMIN and NET_RAW (podman does not run on
//! the VM's read-only root), pool without encapsulation, then `kubectl patch ippool …
//! ipipMode: Always`: the routes become `dev tunl0 onlink`, tunl0 and the pods' MTU are 1480,
//! pods ping across the router and the capture shows IP-in-IP. The VM prints its measurements
//! as one JSON line ([`RESULT`]); [`run`] turns it into summary rows.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Lab, POOL, indent, mtu, wire};
use crate::cluster::{Cluster, ClusterSpec};
use crate::probe;

/// The line the VM prints its measurements on.
pub const RESULT: &str = "TRELLIS-LAB-IPIP ";
/// Bound for the whole VM run (boot ~25 s, an emulated CPU: the cluster takes minutes).
const VM_TIMEOUT: Duration = Duration::from_secs(15 * 60);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The API server's binary slots hard-linked into `dir` (the VM does not see /var/cache).
fn link_apiserver_slots(dir: &Path) -> Result<()> {
    let cache = std::env::var_os("KAPI_CACHE").map(PathBuf::from).unwrap_or_else(|| "/var/cache/kapi".into());
    let mut any = false;
    for e in std::fs::read_dir(&cache).with_context(|| format!("read {}", cache.display()))?.flatten() {
        if !e.file_name().to_string_lossy().starts_with("bin-") {
            continue;
        }
        any = true;
        let linked = Command::new("cp").arg("-al").arg(e.path()).arg(dir).status()?.success();
        if !linked && !Command::new("cp").arg("-a").arg(e.path()).arg(dir).status()?.success() {
            bail!("cannot copy {} to {}", e.path().display(), dir.display());
        }
    }
    if !any {
        bail!("no API server binaries in {} (e2e/testbed/kube-apiserver-lite build)", cache.display());
    }
    Ok(())
}

/// Boots the VM, runs `lab ipip-vm` there and records its measurements.
pub fn run(lab: &mut Lab) -> Result<()> {
    let agent = crate::agent::binary()?;
    let operator = crate::operator::binary()?;
    let me = std::env::current_exe().context("the lab's own path")?;
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let work = tempfile::Builder::new().prefix("lab-vm.").tempdir_in(&target)?;
    let kapi = work.path().join("kapi");
    std::fs::create_dir_all(&kapi)?;
    link_apiserver_slots(&kapi)?;
    let q = |p: &Path| format!("'{}'", p.display());
    let script = format!(
        "mkdir -p /run/netns && export TRELLIS_AGENT_BIN={} TRELLIS_OPERATOR_BIN={} KAPI_CACHE={} \
         TRELLIS_E2E_TIME_SCALE=5 TMPDIR=/tmp RUST_LOG=warn && exec {} ipip-vm",
        q(&agent),
        q(&operator),
        q(&kapi),
        q(&me)
    );
    let kvm = repo_root().join("e2e").join("testbed").join("kernel-vm");
    println!("  $ e2e/testbed/kernel-vm -- lab ipip-vm   (boots a VM with a full Debian kernel, emulated CPU)");
    let t = Instant::now();
    let mut child = Command::new(&kvm)
        .args(["--", "bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", kvm.display()))?;
    let stdout = child.stdout.take().context("VM stdout")?;
    let stderr = child.stderr.take().context("VM stderr")?;
    let err_tail = std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(stderr).lines().map_while(|l| l.ok()).collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut result = None;
    loop {
        let left = VM_TIMEOUT.saturating_sub(t.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => match line.strip_prefix(RESULT) {
                Some(r) => result = Some(r.to_string()),
                None => println!("  | {line}"),
            },
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the VM did not finish within {VM_TIMEOUT:?}");
            }
        }
    }
    let status = child.wait()?;
    println!("  (the VM run took {:.0?}, exit {status})", t.elapsed());
    let Some(result) = result else {
        bail!("the VM printed no result ({status}); its last messages:\n{}", err_tail.join().unwrap_or_default());
    };
    let r: Value = serde_json::from_str(&result).with_context(|| format!("the VM's result {result}"))?;
    let text = |k: &str| r[k].as_str().unwrap_or("(not measured)").to_string();
    for (peer, key) in [("node2 (same subnet)", "routeNode2"), ("node3 (other subnet)", "routeNode3")] {
        let route = text(key);
        lab.summary.check(
            &format!("IPIP Always: node1 -> {peer}"),
            "dev tunl0 onlink",
            &route,
            route.contains("dev tunl0") && route.contains("onlink"),
        );
    }
    lab.summary.equal("MTU IPIP: tunl0", 1480, r["tunl0Mtu"].as_u64().unwrap_or_default());
    lab.summary.equal("MTU IPIP: pods (conflist)", 1480, r["conflistMtu"].as_u64().unwrap_or_default());
    lab.summary.equal("IPIP: ping pod-a -> pod-c (other subnet)", "answered", text("ping"));
    lab.summary.equal("underlay pod-a -> pod-c on node1 eth0 (IPIP)", "IPIP", text("wire"));
    Ok(())
}

/// Node1's Trellis route to `peer`'s block, once it goes through tunl0 (or what it is then).
fn tunl0_route(c: &Cluster, peer: &str) -> String {
    let wait =
        probe::wait_until(&format!("node1's route to {peer} via tunl0"), probe::scaled(crate::cluster::WAIT), || {
            let r = c.route_to("node1", peer).map_err(|e| e.to_string())?;
            if r.contains("dev tunl0") { Ok(r) } else { Err(r) }
        });
    match wait {
        Ok(r) => r,
        Err(e) => c.route_to("node1", peer).unwrap_or_else(|_| e.to_string()),
    }
}

/// Inside the VM (`lab ipip-vm`): see the module header. Prints as it goes, then [`RESULT`].
pub fn in_vm() -> Result<()> {
    let mut c = Cluster::up(ClusterSpec::new("lv").pool("None", true))?;
    c.wait_ready()?;
    println!("node1 before (no encapsulation), ip route show proto 84:\n{}", indent(&c.routes("node1")?.join("\n")));
    println!("$ kubectl patch ippool {POOL} --type merge -p '{{\"spec\":{{\"ipipMode\":\"Always\"}}}}'");
    print!("{}", indent(&c.patch_pool(POOL, r#"{"spec":{"ipipMode":"Always"}}"#)?));
    c.wait_pool_mode(POOL, "IPIP/Always")?;
    let route2 = tunl0_route(&c, "node2");
    let route3 = tunl0_route(&c, "node3");
    println!("node1 after, ip route show proto 84:\n{}", indent(&c.routes("node1")?.join("\n")));
    let tunl0 = probe::link_mtu(&c.node("node1")?.netns, "tunl0")?;
    let conflist = mtu::conflist_mtu(&c.cni_conf_dir("node1")?)?;
    println!("tunl0 mtu {tunl0:?}, conflist mtu {conflist}");
    let a = c.add_pod("node1", "default", "pod-a", &[])?;
    let pc = c.add_pod("node3", "default", "pod-c", &[])?;
    let ping = probe::wait_ping(&a.netns, std::net::IpAddr::V4(pc.ip), probe::scaled(Duration::from_secs(10)));
    let (how, seen) = wire::carried(&c, "node1", &a, &pc)?;
    println!("pod-a {} -> pod-c {} on node1 eth0: {how}", a.ip, pc.ip);
    for l in seen.packets.iter().take(4) {
        println!("    {l}");
    }
    let result = json!({
        "routeNode2": route2,
        "routeNode3": route3,
        "tunl0Mtu": tunl0,
        "conflistMtu": conflist,
        "ping": if ping.is_ok() { "answered" } else { "no reply" },
        "wire": how,
    });
    c.down()?;
    println!("{RESULT}{result}");
    Ok(())
}
