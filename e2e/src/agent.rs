//! Running the real `trellis-agent` binary inside a node's namespace.
//!
//! Tests drive the agent through its CLI, exactly as an operator would on a node:
//! `plan --snapshot FILE`, `apply --snapshot FILE --once`, or a long-running `apply` that
//! corrects drift. The binary is the workspace's own build: `TRELLIS_AGENT_BIN` if set (the
//! VM runner sets it; the VM cannot build), otherwise `cargo build -p trellis-agent` runs
//! once per test process so a test never exercises a stale binary.
//! [`pass_with_capabilities`] runs the same reconcile code in-process for the one input the
//! binary takes from the kernel and a test must choose: its capabilities.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use trellis_agent::kernel::NetlinkKernel;
use trellis_agent::model::{Capabilities, DesiredState};
use trellis_agent::reconcile::{self, BoxError, DesiredSource, PassReport, SystemHost};
use trellis_agent::snapshot::Snapshot;

use crate::cmd;
use crate::error::{Error, Result};

/// Path of the agent binary (see the module header).
pub fn binary() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("TRELLIS_AGENT_BIN") {
        return Ok(PathBuf::from(path));
    }
    BUILT.get_or_init(build).clone().map_err(Error::Setup)
}

fn build() -> std::result::Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = std::process::Command::new(&cargo)
        .args(["build", "--quiet", "-p", "trellis-agent", "--bin", "trellis-agent"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run {cargo} build -p trellis-agent: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p trellis-agent failed: {status}"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("trellis-agent");
    if bin.exists() { Ok(bin) } else { Err(format!("built, but {} does not exist", bin.display())) }
}

/// A finished agent invocation.
#[derive(Debug)]
pub struct AgentRun {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for AgentRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` -> {}\n--- stdout\n{}\n--- stderr\n{}", self.command, self.status, self.stdout, self.stderr)
    }
}

/// Runs `trellis-agent ARGS...` inside `ns` to completion.
pub fn run(ns: &str, args: &[&str]) -> Result<AgentRun> {
    let bin = binary()?;
    let bin = bin.to_string_lossy();
    let out = cmd::ns_command(ns, &bin)
        .args(args)
        .env("RUST_LOG", log_filter())
        .output()
        .map_err(|source| Error::Spawn { command: cmd::render(&bin, args), source })?;
    Ok(AgentRun {
        command: format!("[{ns}] trellis-agent {}", args.join(" ")),
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn log_filter() -> String {
    std::env::var("TRELLIS_AGENT_LOG").unwrap_or_else(|_| "info,trellis_agent=debug".to_string())
}

/// Settings of a `trellis-agent run` (the DaemonSet's environment).
#[derive(Clone, Debug)]
pub struct ClusterAgent {
    pub kubeconfig: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub ipam_data_dir: PathBuf,
    pub health_addr: std::net::SocketAddr,
    pub resync_secs: u64,
}

/// A long-running `trellis-agent apply` or `run` in a node's namespace; stopped on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: Option<Child>,
    pub node: String,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `apply --snapshot SNAPSHOT --resync-interval RESYNC` in `ns`, logging to `log`.
    pub fn start(ns: &str, node: &str, snapshot: &Path, resync_secs: u64, log: &Path) -> Result<AgentProcess> {
        let bin = binary()?;
        let bin = bin.to_string_lossy();
        let file = File::create(log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = file.try_clone().map_err(|e| Error::io("dup log file", e))?;
        let snapshot = snapshot.to_string_lossy();
        let resync = resync_secs.to_string();
        let args = ["apply", "--snapshot", &snapshot, "--resync-interval", &resync];
        let child = cmd::ns_command(ns, &bin)
            .args(args)
            .env("RUST_LOG", log_filter())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn { command: cmd::render(&bin, &args), source })?;
        Ok(AgentProcess { child: Some(child), node: node.to_string(), log: log.to_path_buf() })
    }

    /// Starts `trellis-agent run` (Kubernetes mode) in `ns` as node `node`, configured through
    /// the DaemonSet's environment variables, logging to `log`.
    pub fn start_in_cluster(ns: &str, node: &str, cluster: &ClusterAgent, log: &Path) -> Result<AgentProcess> {
        let bin = binary()?;
        let bin = bin.to_string_lossy();
        let file = File::create(log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = file.try_clone().map_err(|e| Error::io("dup log file", e))?;
        let child = cmd::ns_command(ns, &bin)
            .arg("run")
            .env("RUST_LOG", log_filter())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("NODE_NAME", node)
            .env("TRELLIS_CNI_CONF_DIR", &cluster.cni_conf_dir)
            .env("TRELLIS_IPAM_DATA_DIR", &cluster.ipam_data_dir)
            .env("TRELLIS_HEALTH_ADDR", cluster.health_addr.to_string())
            .env("TRELLIS_RESYNC_INTERVAL", cluster.resync_secs.to_string())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn { command: cmd::render(&bin, &["run"]), source })?;
        Ok(AgentProcess { child: Some(child), node: node.to_string(), log: log.to_path_buf() })
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// `None` while running, the exit status once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Stops the agent: SIGTERM, then SIGKILL if it has not exited within 3 s.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the agent process this guard spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One pass of the agent's own reconcile code, run in this process inside namespace `ns`
/// (on a thread that joined it) against the real kernel and files, with the snapshot at
/// `snapshot` planned for `caps` instead of what the kernel reports. This is how a test
/// exercises a kernel the machine does not have, e.g. no ipip on a kernel that has it: the
/// capabilities are an input of the planner, everything else is the agent's real path.
pub fn pass_with_capabilities(ns: &str, snapshot: &Path, caps: Capabilities) -> Result<PassReport> {
    let path = snapshot.to_path_buf();
    crate::netns::enter(ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        runtime.block_on(async {
            let kernel = NetlinkKernel::new().map_err(|e| Error::Setup(format!("netlink: {e}")))?;
            let mut source = FixedCapabilities { path, caps };
            reconcile::pass(&kernel, &mut source, &SystemHost).await.map_err(|e| Error::Setup(format!("pass: {e}")))
        })
    })?
}

/// A snapshot file planned against fixed capabilities.
struct FixedCapabilities {
    path: PathBuf,
    caps: Capabilities,
}

impl DesiredSource<NetlinkKernel> for FixedCapabilities {
    async fn desired(&mut self, kernel: &NetlinkKernel) -> std::result::Result<std::sync::Arc<DesiredState>, BoxError> {
        let snapshot = Snapshot::from_file(&self.path)?;
        Ok(std::sync::Arc::new(reconcile::desired_from_snapshot(kernel, snapshot, self.caps).await?))
    }
}
