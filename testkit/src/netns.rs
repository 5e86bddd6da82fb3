//! Network namespaces as RAII guards.
//!
//! A [`Netns`] is created with `ip netns add` and, on drop (also while a failing test
//! unwinds), every process still inside it is killed and the namespace is deleted. Links
//! created inside a namespace die with it, so a test that creates its links inside (veth pairs
//! born directly in their target namespaces) needs no other cleanup.
//!
//! Code runs inside a namespace on a thread of its own that joined it (`setns` is per-thread
//! for network namespaces); sockets opened there stay in that namespace, and processes spawned
//! from there inherit it. [`Netns::enter`] reports a failure as an [`Error`] (for the test
//! bed's library code), [`Netns::run`] and [`Netns::block_on`] let a test's panic — its failed
//! assertion — unwind as if the body had run on the test's own thread.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::cmd::{check, output, render, run};
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
        run("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace with a name no other test (of this or a parallel test process)
    /// uses; `tag` shows which test it belongs to in `ip netns list`.
    pub fn unique(tag: &str) -> Result<Self> {
        Self::create(&unique_prefix(tag))
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

    /// `ip -n NAME ARGS...`; fails unless it exits 0. Returns stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a program inside the namespace; fails unless it exits 0. Returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self.exec_output(program, args)?;
        check(format!("[{}] {}", self.name, render(program, args)), out)
    }

    /// Runs a program inside the namespace and returns its output whatever the exit status.
    pub fn exec_output(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        output("ip", &full)
    }

    /// A `Command` that runs `program` inside the namespace (for long-running processes).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Sets a sysctl inside the namespace (`net.*` sysctls are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]).map(|_| ())
    }

    /// Reads a sysctl inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> Result<String> {
        self.exec("sysctl", &["-n", key]).map(|s| s.trim().to_string())
    }

    /// Runs `f` on a thread that has joined this namespace; a panic in `f` is an error.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        enter(&self.name, f)
    }

    /// Runs `f` on a thread that has joined this namespace and returns its value. For tests:
    /// a panic in `f` (a failed assertion) continues on the calling thread with its message.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    join(&path).unwrap_or_else(|e| panic!("{e}"));
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// [`Netns::run`] for async code: `body`'s future runs to completion on a current-thread
    /// tokio runtime inside the namespace (netlink sockets bind to the creating thread's
    /// namespace, so everything the future opens is in here).
    pub fn block_on<F, Fut, T>(&self, body: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        self.run(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.unwrap_or_else(|e| panic!("tokio runtime: {e}")).block_on(body())
        })
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
                // SAFETY: plain kill(2) on a pid that lives in a namespace this guard owns.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("netns guard: cannot delete {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into the namespace at `path`.
fn join(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| io(format!("open {}", path.display()), e))?;
    // SAFETY: setns on a valid namespace fd; it only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io(format!("setns {}", path.display()), std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a thread that has joined the namespace `/run/netns/NAME`; a panic in `f` is an
/// error.
pub fn enter<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = PathBuf::from(NETNS_DIR).join(name);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                join(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::Setup(format!("thread inside netns {name} panicked")))?
    })
}

/// Binds a UDP socket inside the named namespace.
pub fn udp_socket(name: &str, bind: std::net::SocketAddr) -> Result<std::net::UdpSocket> {
    enter(name, move || std::net::UdpSocket::bind(bind))?.map_err(|e| io(format!("[{name}] bind udp {bind}"), e))
}

fn pids_in(ns: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", ns])
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

fn io(context: String, source: std::io::Error) -> Error {
    Error::Io { context, source }
}
