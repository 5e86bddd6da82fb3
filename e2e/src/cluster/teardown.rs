//! Teardown that also works when the cluster's owner cannot run its destructors (Ctrl-C).
//!
//! Every live cluster registers what identifies its leftovers: the namespace prefix (nodes,
//! router, internet and pods are all named `<prefix>-...`), its directory, the private API
//! server's state dir and the pids of host processes (the operator). [`teardown_all`] removes
//! all of it for every registered cluster; a program calls it from its signal handler and then
//! exits. A cluster dropped normally (also while a test panics) deregisters after its own
//! teardown ([`Registration`]'s drop).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::kapi::PrivateApiServer;
use crate::netns;
use crate::topology::processes_mentioning;

/// What identifies one cluster's leftovers.
#[derive(Clone, Debug, Default)]
pub struct Leftovers {
    pub netns_prefix: String,
    pub dir: PathBuf,
    pub apiserver_state: Option<PathBuf>,
    pub pids: Vec<u32>,
}

static LIVE: Mutex<BTreeMap<u64, Leftovers>> = Mutex::new(BTreeMap::new());

fn live() -> MutexGuard<'static, BTreeMap<u64, Leftovers>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A cluster's entry in the registry; removed on drop.
#[derive(Debug)]
pub struct Registration(u64);

impl Registration {
    pub fn new(leftovers: Leftovers) -> Registration {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        live().insert(id, leftovers);
        Registration(id)
    }

    /// Updates the entry (e.g. once the operator runs).
    pub fn update(&self, f: impl FnOnce(&mut Leftovers)) {
        if let Some(l) = live().get_mut(&self.0) {
            f(l);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        live().remove(&self.0);
    }
}

/// Removes every registered cluster's processes, namespaces, files and API server; returns
/// what could not be removed. Safe to call while the clusters' owners still exist (their own
/// teardown then finds nothing left).
pub fn teardown_all() -> Vec<String> {
    let all: Vec<Leftovers> = std::mem::take(&mut *live()).into_values().collect();
    all.iter().flat_map(remove).collect()
}

/// Removes one cluster's leftovers (see [`Leftovers`]); returns what is still there.
pub fn remove(l: &Leftovers) -> Vec<String> {
    for pid in &l.pids {
        // SAFETY: kill(2) of a process the cluster started and registered.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let dir = l.dir.to_string_lossy().into_owned();
    for p in processes_pids(&[&dir]) {
        // SAFETY: kill(2) of a process whose command line names the cluster's directory.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    // Pods first: a pod namespace holds the peer of a veth in its node.
    let mut names = netns::list_with_prefix(&format!("{}-", l.netns_prefix));
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        // Dropping a guard for the name kills what is inside and deletes the namespace.
        drop(netns::Netns::adopt(&name));
    }
    if l.dir.exists() {
        let _ = std::fs::remove_dir_all(&l.dir);
    }
    if let Some(state) = &l.apiserver_state
        && state.exists()
    {
        if let Err(e) = PrivateApiServer::stop_state_dir(state) {
            eprintln!("teardown: {e}");
        }
        let _ = std::fs::remove_dir_all(state);
    }
    let mut left = netns::list_with_prefix(&format!("{}-", l.netns_prefix));
    left.extend(processes_mentioning(&[&dir]));
    if l.dir.exists() {
        left.push(format!("directory {}", l.dir.display()));
    }
    left
}

fn processes_pids(needles: &[&str]) -> Vec<i32> {
    processes_mentioning(needles)
        .iter()
        .filter_map(|p| p.strip_prefix("process ")?.split_whitespace().next()?.parse().ok())
        .collect()
}
