//! The project's container images run with podman (`e2e/testbed/podman`, which adds the
//! settings this machine needs).
//!
//! [`images`] builds the images once per test process through `images/build` (the same script
//! as `make images`; its package layers are cached, so a rebuild copies only the new binaries)
//! and returns their names. [`RunSpec`] says how to run one — image, command, env,
//! capabilities, bind mounts, the network namespace — the way a pod spec does; [`Started`]
//! is the running container, removed (`podman rm -f`) on drop, its log kept for failures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::cmd;
use crate::error::{Error, Result};

/// Label on every container the test bed starts: `make lab-down` removes what carries it.
pub const TESTBED_LABEL: &str = "dev.trellis.testbed=1";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The podman wrapper with the test bed's settings.
pub fn wrapper_path() -> PathBuf {
    repo_root().join("e2e").join("testbed").join("podman")
}

/// `e2e/testbed/podman ARGS...`, raw output.
pub fn podman_output(args: &[&str]) -> Result<Output> {
    let path = wrapper_path();
    let program = path.to_string_lossy();
    cmd::output(&program, args)
}

/// `e2e/testbed/podman ARGS...`; stdout, or an error with podman's stderr.
pub fn podman(args: &[&str]) -> Result<String> {
    let out = podman_output(args)?;
    cmd::check(cmd::render("podman", args), out)
}

/// The locally built images.
#[derive(Clone, Debug)]
pub struct Images {
    pub agent: String,
    pub operator: String,
}

/// Builds (or reuses, see the module header) both images; once per test process.
pub fn images() -> Result<Images> {
    static BUILT: OnceLock<std::result::Result<Images, String>> = OnceLock::new();
    BUILT.get_or_init(build_images).clone().map_err(Error::Setup)
}

fn build_images() -> std::result::Result<Images, String> {
    let script = repo_root().join("images").join("build");
    let out = Command::new(&script)
        .arg("all")
        .current_dir(repo_root())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "images/build failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let version = env!("CARGO_PKG_VERSION");
    Ok(Images {
        agent: format!("localhost/trellis/agent:{version}"),
        operator: format!("localhost/trellis/operator:{version}"),
    })
}

/// A bind mount: host path, path in the container, read-only or not.
#[derive(Clone, Debug, PartialEq)]
pub struct Mount {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

/// Where the container's network comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Network {
    /// The host's (the test runner's) network namespace.
    Host,
    /// A named network namespace (`/var/run/netns/NAME`), e.g. a node's.
    Netns(String),
}

/// How to run a container, in pod-spec terms.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's entrypoint when set (a pod's `command`).
    pub command: Vec<String>,
    /// Arguments after the command (a pod's `args`).
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Capabilities added after dropping all of them; `None` keeps podman's default set.
    pub capabilities: Option<Vec<String>>,
    pub mounts: Vec<Mount>,
    pub network: Option<Network>,
    /// `uid[:gid]`; `None` keeps the image's user.
    pub user: Option<String>,
    pub read_only_root: bool,
    /// Extra labels (`key=value`), besides [`TESTBED_LABEL`].
    pub labels: Vec<String>,
}

impl RunSpec {
    /// The `podman run` arguments after `run` (without `-d`/`--rm`).
    pub fn run_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--name".into(), self.name.clone(), "--label".into(), TESTBED_LABEL.into()];
        for l in &self.labels {
            a.extend(["--label".into(), l.clone()]);
        }
        match &self.network {
            Some(Network::Host) => a.extend(["--network".into(), "host".into()]),
            Some(Network::Netns(ns)) => a.extend(["--network".into(), format!("ns:/var/run/netns/{ns}")]),
            None => a.extend(["--network".into(), "none".into()]),
        }
        if let Some(caps) = &self.capabilities {
            a.extend(["--cap-drop".into(), "all".into()]);
            if !caps.is_empty() {
                a.extend(["--cap-add".into(), caps.join(",")]);
            }
        }
        if let Some(user) = &self.user {
            a.extend(["--user".into(), user.clone()]);
        }
        if self.read_only_root {
            a.push("--read-only".into());
        }
        for (k, v) in &self.env {
            a.extend(["--env".into(), format!("{k}={v}")]);
        }
        for m in &self.mounts {
            let mode = if m.read_only { "ro" } else { "rw" };
            a.extend(["--volume".into(), format!("{}:{}:{mode}", m.host.display(), m.container.display())]);
        }
        if let Some((entry, rest)) = self.command.split_first() {
            a.extend(["--entrypoint".into(), entry.clone(), self.image.clone()]);
            a.extend(rest.iter().cloned());
        } else {
            a.push(self.image.clone());
        }
        a.extend(self.args.iter().cloned());
        a
    }

    /// Runs the container to completion (`podman run --rm`) and returns its output.
    pub fn run_to_completion(&self) -> Result<Output> {
        let mut args = vec!["run".to_string(), "--rm".to_string()];
        args.extend(self.run_args());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        podman_output(&refs)
    }

    /// Starts the container in the background.
    pub fn start(&self) -> Result<Started> {
        // A container of an earlier, killed run with this name would make `run` fail.
        let _ = podman_output(&["rm", "-f", "--time", "0", &self.name]);
        let mut args = vec!["run".to_string(), "-d".to_string()];
        args.extend(self.run_args());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = podman(&refs)?.trim().to_string();
        Ok(Started { name: self.name.clone(), id })
    }
}

/// A running (or exited) container; removed on drop.
#[derive(Debug)]
pub struct Started {
    pub name: String,
    pub id: String,
}

impl Started {
    /// stdout and stderr so far.
    pub fn logs(&self) -> String {
        match podman_output(&["logs", &self.id]) {
            Ok(out) => format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
            Err(e) => format!("(no logs: {e})"),
        }
    }

    /// `podman inspect --format FORMAT`, trimmed.
    pub fn inspect(&self, format: &str) -> Result<String> {
        Ok(podman(&["inspect", "--format", format, &self.id])?.trim().to_string())
    }

    /// True while the container's process runs.
    pub fn running(&self) -> bool {
        self.inspect("{{.State.Running}}").is_ok_and(|s| s == "true")
    }

    /// The exit code once it stopped.
    pub fn exit_code(&self) -> Option<i32> {
        if self.running() {
            return None;
        }
        self.inspect("{{.State.ExitCode}}").ok().and_then(|s| s.parse().ok())
    }

    /// The host pid of the container's main process.
    pub fn pid(&self) -> Result<i32> {
        let pid = self.inspect("{{.State.Pid}}")?;
        pid.parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Error::Parse { what: format!("pid of container {}", self.name), detail: pid })
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) -> Result<()> {
        podman(&["stop", "--time", &grace.as_secs().to_string(), &self.id]).map(|_| ())
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of container {} ---\n{}", self.name, self.logs());
        }
        let _ = podman_output(&["rm", "-f", "--time", "1", &self.id]);
    }
}

/// The `Uid:` line of a process (real, effective, saved, fs), e.g. to check a container's user.
pub fn process_uids(pid: i32) -> Result<Vec<u32>> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| l.split_whitespace().filter_map(|u| u.parse().ok()).collect())
        .ok_or_else(|| Error::Parse { what: path, detail: "no Uid: line".into() })
}

/// The effective capability set of a process (`CapEff`, a bit mask).
pub fn process_effective_caps(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {path}"), e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| Error::Parse { what: path, detail: "no CapEff: line".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_args_follow_the_pod_spec() {
        let spec = RunSpec {
            name: "agent-node1".into(),
            image: "localhost/trellis/agent:0.1.0".into(),
            command: vec!["trellis-agent".into(), "run".into()],
            args: vec!["--x".into()],
            env: vec![("NODE_NAME".into(), "node1".into())],
            capabilities: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            mounts: vec![Mount { host: "/tmp/n1/net.d".into(), container: "/etc/cni/net.d".into(), read_only: false }],
            network: Some(Network::Netns("lab-node1".into())),
            user: None,
            read_only_root: true,
            labels: vec![],
        };
        let args = spec.run_args();
        let joined = args.join(" ");
        assert!(joined.contains("--network ns:/var/run/netns/lab-node1"), "{joined}");
        assert!(joined.contains("--cap-drop all --cap-add NET_ADMIN,NET_RAW"), "{joined}");
        assert!(joined.contains("--volume /tmp/n1/net.d:/etc/cni/net.d:rw"), "{joined}");
        assert!(joined.contains("--env NODE_NAME=node1"), "{joined}");
        assert!(joined.contains("--read-only"), "{joined}");
        assert!(joined.ends_with("--entrypoint trellis-agent localhost/trellis/agent:0.1.0 run --x"), "{joined}");
    }

    #[test]
    fn no_command_keeps_the_entrypoint_and_no_capabilities_means_none() {
        let spec = RunSpec {
            name: "op".into(),
            image: "img".into(),
            args: vec!["--help".into()],
            capabilities: Some(vec![]),
            ..Default::default()
        };
        let joined = spec.run_args().join(" ");
        assert!(joined.ends_with("img --help"), "{joined}");
        assert!(joined.contains("--cap-drop all") && !joined.contains("--cap-add"), "{joined}");
        assert!(joined.contains("--network none"), "{joined}");
    }
}
