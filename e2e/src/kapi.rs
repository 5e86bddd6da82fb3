//! An API server of a test's own (`e2e/testbed/kube-apiserver-lite` with a private state dir).
//!
//! Agents watch every IPPool, IPAMBlock and NodeNetwork of their cluster, so a test that runs
//! agents gets a cluster nobody else writes to; and only a private server can be stopped and
//! brought back ([`PrivateApiServer::pause`], [`PrivateApiServer::resume`]: the apiserver
//! process alone, etcd and its data stay) without disturbing other tests. Stopped and its
//! state deleted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};

/// A running private instance.
pub struct PrivateApiServer {
    state: tempfile::TempDir,
    kubeconfig: PathBuf,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed").join("kube-apiserver-lite")
}

impl PrivateApiServer {
    fn command(state: &Path, verb: &str) -> Result<String> {
        let out = Command::new(script())
            .arg(verb)
            .env("KAPI_STATE", state)
            .output()
            .map_err(|source| Error::Spawn { command: format!("kube-apiserver-lite {verb}"), source })?;
        if !out.status.success() {
            return Err(Error::Setup(format!(
                "kube-apiserver-lite {verb} (KAPI_STATE={}) failed: {}",
                state.display(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts a fresh instance (empty etcd) and returns once it is ready.
    pub fn start() -> Result<Self> {
        let state = tempfile::Builder::new()
            .prefix("trellis-kapi-")
            .tempdir()
            .map_err(|e| Error::io("create API server state dir", e))?;
        let kubeconfig = PathBuf::from(Self::command(state.path(), "start")?);
        Ok(PrivateApiServer { state, kubeconfig })
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The instance's state dir (`KAPI_STATE`): certificates, etcd data, logs.
    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Stops an instance by its state dir (for a teardown that cannot own the guard).
    pub fn stop_state_dir(state: &Path) -> Result<()> {
        Self::command(state, "stop").map(|_| ())
    }

    /// The apiserver's port on the host's loopback.
    pub fn port(&self) -> Result<u16> {
        let path = self.state.path().join("port");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        text.trim().parse().map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
    }

    /// Stops the apiserver process (an outage); etcd and the data stay.
    pub fn pause(&self) -> Result<()> {
        Self::command(self.state.path(), "pause").map(|_| ())
    }

    /// Starts the paused apiserver again on the same port with the same data.
    pub fn resume(&self) -> Result<()> {
        Self::command(self.state.path(), "resume").map(|_| ())
    }
}

impl Drop for PrivateApiServer {
    fn drop(&mut self) {
        if let Err(e) = Self::command(self.state.path(), "stop") {
            eprintln!("private API server: {e}");
        }
    }
}
