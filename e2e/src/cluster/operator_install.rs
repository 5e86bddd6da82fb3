//! How the cluster's operator gets installed: a seam, so another installation (the Helm chart
//! with its Deployment, run as a container) can replace the plain process.
//!
//! [`Cluster::up`](super::Cluster::up) calls [`OperatorInstall::install`] once, after the CRDs and
//! the Node objects exist and before the Installation is applied; the returned
//! [`InstalledOperator`] lives as long as the cluster and is uninstalled (stopped) before the
//! API server goes.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::operator::OperatorProcess;

/// What an installation gets to know about the cluster.
#[derive(Clone, Debug)]
pub struct OperatorEnv {
    /// Credentials for the (host-loopback) API server.
    pub kubeconfig: PathBuf,
    /// The operator's namespace (`trellis-system`): where it renders the agent DaemonSet.
    pub namespace: String,
    /// A directory of the cluster's own, removed at teardown.
    pub dir: PathBuf,
}

/// Installs the operator.
pub trait OperatorInstall: Send {
    /// For messages (`process`, `helm`).
    fn describe(&self) -> String;
    fn install(&self, env: &OperatorEnv) -> Result<Box<dyn InstalledOperator>>;
}

/// An installed, running operator. Dropping it stops the operator.
pub trait InstalledOperator: Send {
    /// The operator's log, for failure messages.
    fn logs(&self) -> String;
    /// Processes to kill in an emergency teardown (Ctrl-C), if any run outside node namespaces.
    fn pids(&self) -> Vec<u32>;
    /// Stops the operator and removes what the installation added.
    fn uninstall(&mut self) -> Result<()>;
}

/// The workspace's `trellis-operator` binary as one process on the host, with its defaults
/// (leader election on) and `--namespace`.
#[derive(Clone, Debug, Default)]
pub struct ProcessOperator {
    /// Extra arguments (e.g. `--lease-duration 5`).
    pub args: Vec<String>,
}

impl OperatorInstall for ProcessOperator {
    fn describe(&self) -> String {
        "process".into()
    }

    fn install(&self, env: &OperatorEnv) -> Result<Box<dyn InstalledOperator>> {
        let mut args = vec!["--namespace", env.namespace.as_str()];
        args.extend(self.args.iter().map(String::as_str));
        let process = OperatorProcess::start(Path::new(&env.kubeconfig), "trellis-operator-0", &args)?;
        Ok(Box::new(process))
    }
}

impl InstalledOperator for OperatorProcess {
    fn logs(&self) -> String {
        self.log()
    }

    fn pids(&self) -> Vec<u32> {
        self.pid().into_iter().collect()
    }

    fn uninstall(&mut self) -> Result<()> {
        self.terminate(std::time::Duration::from_secs(5));
        Ok(())
    }
}
