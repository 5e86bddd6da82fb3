//! [`PodRuntime`] that runs a container as a process in the node's network namespace.
//!
//! `ip netns exec NODE setpriv --bounding-set <caps> -- BINARY ARGS...` with a clean
//! environment holding exactly the spec's variables (plus `PATH`):
//! * the image is not unpacked: `argv[0]` names one of the workspace's binaries
//!   ([`ProcessRuntime::workspace`] maps `trellis-agent` and `trellis-operator` to their
//!   `cargo build` outputs); anything else is an error;
//! * capabilities are real: the bounding set is the spec's change (`drop: [ALL]`,
//!   `add: [NET_ADMIN, NET_RAW]` leaves a root process exactly those two), so a DaemonSet that
//!   asks for too little fails here as it would in a cluster;
//! * there is no mount namespace: a path in the environment or the arguments that lies below
//!   a mount's container path is rewritten to the mount's host path (the node's directory).
//!   That is the one place where the process sees something other than the container would.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::container::{ContainerSpec, Mount};
use super::runtime::{NodeHost, PodRuntime, RunningContainer};
use crate::cmd;
use crate::error::{Error, Result};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs containers as processes (see the module header).
#[derive(Clone, Debug, Default)]
pub struct ProcessRuntime {
    binaries: BTreeMap<String, PathBuf>,
}

impl ProcessRuntime {
    /// `trellis-agent` and `trellis-operator` from this workspace (built once if needed).
    pub fn workspace() -> Result<Self> {
        Ok(ProcessRuntime::default()
            .with_binary("trellis-agent", crate::agent::binary()?)
            .with_binary("trellis-operator", crate::operator::binary()?))
    }

    /// Runs `path` for a container whose `argv[0]` is `name`.
    pub fn with_binary(mut self, name: &str, path: PathBuf) -> Self {
        self.binaries.insert(name.to_string(), path);
        self
    }

    fn binary(&self, argv0: &str) -> Result<&PathBuf> {
        let name = Path::new(argv0).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        self.binaries.get(&name).ok_or_else(|| {
            Error::Setup(format!(
                "process runtime: no binary for command {argv0} (known: {})",
                self.binaries.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Rewrites a path below a mount's container path to the same path below its host path.
pub fn host_view(text: &str, mounts: &[Mount]) -> String {
    // `--flag=/path` as well as a bare `/path`.
    let (prefix, path) = match text.split_once("=/") {
        Some((flag, rest)) if !text.starts_with('/') => (format!("{flag}="), format!("/{rest}")),
        _ => (String::new(), text.to_string()),
    };
    let p = Path::new(&path);
    // The longest container path wins (a mount inside another mount).
    let best =
        mounts.iter().filter(|m| p.starts_with(&m.container_path)).max_by_key(|m| m.container_path.as_os_str().len());
    match best {
        Some(m) => {
            let rest = p.strip_prefix(&m.container_path).unwrap_or(Path::new(""));
            let host = if rest.as_os_str().is_empty() { m.host_path.clone() } else { m.host_path.join(rest) };
            format!("{prefix}{}", host.display())
        }
        None => text.to_string(),
    }
}

impl PodRuntime for ProcessRuntime {
    fn name(&self) -> &str {
        "process"
    }

    fn start(&self, node: &NodeHost, spec: &ContainerSpec) -> Result<Box<dyn RunningContainer>> {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let bin = self.binary(&spec.argv[0])?.to_string_lossy().into_owned();
        std::fs::create_dir_all(&node.log_dir)
            .map_err(|e| Error::io(format!("create {}", node.log_dir.display()), e))?;
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = node.log_dir.join(format!("{}-{}-{n}.log", spec.pod, spec.name));
        let out = File::create(&log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| Error::io("dup log file", e))?;
        let bounding = spec.capabilities.setpriv_bounding_set();
        let mut args: Vec<String> = Vec::new();
        if !bounding.is_empty() {
            args.extend(["--bounding-set".to_string(), bounding]);
        }
        args.push("--".into());
        args.push(bin.clone());
        args.extend(spec.argv[1..].iter().map(|a| host_view(a, &spec.mounts)));
        let mut command = cmd::ns_command(&node.netns, "setpriv");
        command.args(&args).env_clear().env("PATH", PATH);
        for (k, v) in &spec.env {
            command.env(k, host_view(v, &spec.mounts));
        }
        let child = command.stdin(Stdio::null()).stdout(out).stderr(err).spawn().map_err(|source| Error::Spawn {
            command: format!("[{}] setpriv {}", node.netns, args.join(" ")),
            source,
        })?;
        let describe = format!("{}/{}/{} pid {}", node.name, spec.pod, spec.name, child.id());
        Ok(Box::new(ProcessContainer { child: Some(child), log, describe }))
    }
}

/// A container started by [`ProcessRuntime`]. `ip netns exec` and `setpriv` exec the program,
/// so the child's pid is the program's.
struct ProcessContainer {
    child: Option<Child>,
    log: PathBuf,
    describe: String,
}

impl ProcessContainer {
    fn signal(&self, sig: i32) -> Result<()> {
        let child = self.child.as_ref().ok_or_else(|| Error::Setup(format!("{} is gone", self.describe)))?;
        // SAFETY: kill(2) on the process this handle spawned and still owns (not yet reaped).
        let rc = unsafe { libc::kill(child.id() as i32, sig) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::io(format!("signal {sig} to {}", self.describe), std::io::Error::last_os_error()))
        }
    }
}

fn code(status: std::process::ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

impl RunningContainer for ProcessContainer {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn stop(&mut self, grace: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        // A frozen process does not act on SIGTERM.
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGCONT);
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(code(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok().map(code)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<i32> {
        match self.child.as_mut() {
            None => Some(128 + libc::SIGKILL),
            Some(c) => c.try_wait().ok().flatten().map(code),
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    fn pause(&mut self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    fn resume(&mut self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }
}

impl Drop for ProcessContainer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_become_the_nodes_host_paths() {
        let mounts = [
            Mount {
                host_path: "/lab/n1/etc/cni/net.d".into(),
                container_path: "/etc/cni/net.d".into(),
                read_only: false,
            },
            Mount {
                host_path: "/lab/kubeconfig".into(),
                container_path: "/var/run/kubeconfig".into(),
                read_only: true,
            },
        ];
        assert_eq!(host_view("/etc/cni/net.d", &mounts), "/lab/n1/etc/cni/net.d");
        assert_eq!(host_view("/etc/cni/net.d/10-x.conflist", &mounts), "/lab/n1/etc/cni/net.d/10-x.conflist");
        assert_eq!(host_view("--conf=/etc/cni/net.d", &mounts), "--conf=/lab/n1/etc/cni/net.d");
        assert_eq!(host_view("/var/run/kubeconfig", &mounts), "/lab/kubeconfig");
        assert_eq!(host_view("/etc/cni/net.dx", &mounts), "/etc/cni/net.dx", "a path component, not a string prefix");
        assert_eq!(host_view("0.0.0.0:9099", &mounts), "0.0.0.0:9099");
        assert_eq!(host_view("/var/lib/cni/networks", &mounts), "/var/lib/cni/networks", "not mounted: unchanged");
    }
}
