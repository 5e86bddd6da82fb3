//! Network namespaces as RAII guards.
//!
//! A [`Netns`] is created with `ip netns add` and, on drop (also while a failing test
//! unwinds), every process still inside it is killed and the namespace is deleted. Links
//! created inside a namespace die with it, and the test bed never creates links in the
//! caller's namespace (veth pairs are born directly in their two target namespaces), so
//! deleting the namespaces is the whole link cleanup.
//!
//! [`Netns::enter`] runs a closure on a thread that joined the namespace (`setns` is
//! per-thread for network namespaces); sockets opened there stay in that namespace, which
//! is how the probes send and receive real packets from Rust.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{Error, Result};

const NETNS_DIR: &str = "/run/netns";

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        cmd::run("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Takes charge of an existing namespace (e.g. one left behind): deleted on drop.
    pub fn adopt(name: &str) -> Self {
        Netns { name: name.to_string() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`, the handle CNI plugins get as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// `ip -n NAME ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        cmd::ip(&self.name, args)
    }

    /// Runs a program inside the namespace; fails unless it exits 0.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        cmd::in_ns(&self.name, program, args)
    }

    /// Sets a sysctl inside the namespace (`net.*` sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Reads a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        self.exec("sysctl", &["-n", key]).map(|s| s.trim().to_string())
    }

    /// Runs `f` on a thread that has joined this namespace.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        enter(&self.name, f)
    }

    /// Binds a UDP socket inside this namespace.
    pub fn udp_socket(&self, bind: std::net::SocketAddr) -> Result<std::net::UdpSocket> {
        udp_socket(&self.name, bind)
    }

    /// Processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A namespace stays alive while any process is inside, so empty it first.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids = pids_in(&self.name);
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: plain kill(2) on a pid that lives in a namespace this guard created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = cmd::run("ip", &["netns", "del", &self.name]) {
            eprintln!("netns guard: cannot delete {}: {e}", self.name);
        }
    }
}

/// Runs `f` on a thread that has joined the namespace `/run/netns/NAME`.
pub fn enter<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = PathBuf::from(NETNS_DIR).join(name);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let file = std::fs::File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
                // SAFETY: setns on a valid namespace fd; it only changes this thread's netns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(Error::io(format!("setns {}", path.display()), std::io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Setup(format!("thread inside netns {name} panicked")))?
    })
}

/// Binds a UDP socket inside the named namespace.
pub fn udp_socket(name: &str, bind: std::net::SocketAddr) -> Result<std::net::UdpSocket> {
    enter(name, move || std::net::UdpSocket::bind(bind))?.map_err(|e| Error::io(format!("[{name}] bind udp {bind}"), e))
}

fn pids_in(ns: &str) -> Vec<i32> {
    cmd::run("ip", &["netns", "pids", ns])
        .map(|out| out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Namespaces whose name starts with `prefix` (to detect leaks).
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Creates a veth pair with one end in each namespace (never in the caller's namespace).
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<()> {
    a.ip(&["link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b.name()])?;
    Ok(())
}

/// A short name unique to this process and call, for namespaces of parallel tests.
/// `tag` identifies the test in `ip netns list` output.
pub fn unique_prefix(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("tr{}-{}{}", tag, std::process::id() % 100_000, n)
}
