//! Nothing of the lab outlives it: not after an error, a panic, Ctrl-C, or `kill`.
//!
//! Everything the lab creates is findable without the lab process:
//! * files: the lab sets `TMPDIR` to [`WORK_DIR`]`/tmp`, so the cluster's directory and the
//!   private API server's state (etcd data, kubeconfig, pid files) are below [`WORK_DIR`];
//!   [`STATE`] records the lab's pid;
//! * network namespaces: named `trlab-…` (the cluster's tag `lab`);
//! * containers: the test bed label, names `trlab-…` (agents) or `trellis-trlab-…` (operator);
//! * processes: the API server's mention its state dir; everything else runs inside a namespace
//!   and dies with it.
//!
//! A normal end and a panic tear down through the cluster's destructors and then [`WorkDir`]'s;
//! SIGINT/SIGTERM run [`remove_leftovers`] from a signal thread ([`tear_down_on_signal`]);
//! `lab down` ([`down`], `make lab-down`) stops a running lab and removes whatever is left.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cluster::teardown;
use crate::kapi::PrivateApiServer;
use crate::netns;
use crate::podman;
use crate::topology::processes_mentioning;

/// Everything the lab writes lives below this directory.
pub const WORK_DIR: &str = "/var/tmp/trellis-lab";
/// The running (or kept) lab's pid.
pub const STATE: &str = "/var/tmp/trellis-lab/state.json";
/// Network namespaces (and agent containers) of the lab start with this.
pub const NETNS_PREFIX: &str = "trlab-";

fn tmp_dir() -> PathBuf {
    Path::new(WORK_DIR).join("tmp")
}

/// The pid of a lab that still runs, from [`STATE`].
fn running_lab() -> Option<i32> {
    let text = std::fs::read_to_string(STATE).ok()?;
    let state: Value = serde_json::from_str(&text).ok()?;
    let pid = state["pid"].as_i64()? as i32;
    (pid as u32 != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// The lab's claim on [`WORK_DIR`]; dropping it removes the directory (after the cluster's own
/// teardown: create it before the cluster).
#[derive(Debug)]
pub struct WorkDir(());

impl WorkDir {
    /// Refuses when another lab runs; removes what a dead one left; records this process and
    /// points `TMPDIR` below [`WORK_DIR`]. Call before any thread starts.
    pub fn claim() -> Result<WorkDir> {
        if let Some(pid) = running_lab() {
            bail!("a lab is running (pid {pid}): stop it with Ctrl-C there or `make lab-down`");
        }
        let left = leftovers();
        if !left.is_empty() {
            println!("removing what an earlier lab left: {}", left.join(", "));
            remove_leftovers().context("cleaning up an earlier lab")?;
        }
        let tmp = tmp_dir();
        std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
        std::fs::write(STATE, json!({"pid": std::process::id()}).to_string())
            .with_context(|| format!("write {STATE}"))?;
        // SAFETY: called before the lab starts any thread (see the doc comment).
        unsafe { std::env::set_var("TMPDIR", &tmp) };
        Ok(WorkDir(()))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(WORK_DIR);
    }
}

/// Set once a signal started the teardown: the main thread must not touch the cluster again.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Parks the calling thread for good once a signal started the teardown (the signal thread
/// removes everything and exits the process); returns at once otherwise.
pub fn hold_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::park();
    }
}

/// Declared after the cluster, it is dropped before it: after a signal the cluster's own
/// destructors do not race the signal thread's teardown (which would only print errors about
/// namespaces already gone).
#[derive(Debug)]
pub struct HoldOnInterrupt;

impl Drop for HoldOnInterrupt {
    fn drop(&mut self) {
        hold_if_interrupted();
    }
}

/// A thread that waits for SIGINT or SIGTERM, then removes the lab and exits 130. Installed
/// as a handler (tokio's, no blocked signal masks: children such as tcpdump inherit masks).
pub fn tear_down_on_signal() -> Result<()> {
    let (ready, registered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let sig = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(i), Ok(t)) => (i, t),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = ready.send(Err(e));
                    return None;
                }
            };
            let _ = ready.send(Ok(()));
            tokio::select! {
                _ = int.recv() => Some("SIGINT"),
                _ = term.recv() => Some("SIGTERM"),
            }
        });
        let Some(sig) = sig else { return };
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\nlab: {sig}: tearing down");
        let mut left = teardown::teardown_all();
        if let Err(e) = remove_leftovers() {
            left.push(e.to_string());
        }
        if !left.is_empty() {
            eprintln!("lab: left behind: {}", left.join(", "));
        }
        std::process::exit(130);
    });
    registered.recv().context("the signal thread ended")?.context("installing the SIGINT/SIGTERM handler")
}

fn lab_containers() -> Vec<String> {
    let filter = format!("label={}", podman::TESTBED_LABEL);
    let Ok(out) = podman::podman(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]) else {
        return Vec::new();
    };
    let operator = format!("trellis-{NETNS_PREFIX}");
    out.lines().filter(|n| n.starts_with(NETNS_PREFIX) || n.starts_with(&operator)).map(str::to_string).collect()
}

/// What of a lab exists now (containers, namespaces, processes, files), described.
pub fn leftovers() -> Vec<String> {
    let mut left: Vec<String> = lab_containers().into_iter().map(|c| format!("container {c}")).collect();
    left.extend(netns::list_with_prefix(NETNS_PREFIX).into_iter().map(|n| format!("netns {n}")));
    left.extend(processes_mentioning(&[WORK_DIR]));
    if Path::new(WORK_DIR).exists() {
        left.push(format!("directory {WORK_DIR}"));
    }
    left
}

/// Removes every lab container, namespace, process and file; an error lists what stayed.
pub fn remove_leftovers() -> Result<()> {
    for name in lab_containers() {
        let _ = podman::podman_output(&["rm", "-f", "--time", "1", &name]);
    }
    // API servers: their own stop (etcd too), then anything still naming the work dir.
    if let Ok(entries) = std::fs::read_dir(tmp_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("trellis-kapi-") {
                let _ = PrivateApiServer::stop_state_dir(&e.path());
            }
        }
    }
    for p in processes_mentioning(&[WORK_DIR]) {
        if let Some(pid) = p.strip_prefix("process ").and_then(|p| p.split_whitespace().next()?.parse::<i32>().ok()) {
            // SAFETY: kill(2) of a process whose command line names the lab's work dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    // Pods first: a pod namespace holds the peer of a veth in its node.
    let mut names = netns::list_with_prefix(NETNS_PREFIX);
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        drop(netns::Netns::adopt(&name));
    }
    let _ = std::fs::remove_dir_all(WORK_DIR);
    // Killed processes disappear from /proc a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("could not remove: {}", left.join(", "));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `lab down`: stops a running lab (SIGTERM: it tears itself down), then removes what is left.
pub fn down() -> Result<()> {
    if let Some(pid) = running_lab() {
        println!("lab down: stopping the lab (pid {pid})");
        // SAFETY: kill(2) of the lab process recorded in the state file.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let left = leftovers();
    if left.is_empty() {
        println!("lab down: nothing of the lab is left");
        return Ok(());
    }
    println!("lab down: removing {}", left.join(", "));
    remove_leftovers()?;
    println!("lab down: nothing of the lab is left");
    Ok(())
}
