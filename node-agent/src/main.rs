//! `trellis-agent`: the node agent's command line.
//!
//! `plan` shows what the agent would do on this host (desired state + diff) without changing
//! anything; `apply` does it, once or as a loop (periodic resync + netlink events) until
//! SIGTERM/SIGINT. Both act on the network namespace they run in (`ip netns exec NODE ...`).
//! `run` is the in-cluster mode: the snapshot comes from the Kubernetes API (see
//! [`trellis_agent::k8s`]); every setting is a flag and an environment variable, so the
//! DaemonSet sets them through `env`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use trellis_agent::k8s::agent::{self as k8s_agent, AgentConfig};
use trellis_agent::kernel::caps;
use trellis_agent::kernel::netlink::{self, NetlinkKernel};
use trellis_agent::kernel::{privilege, sysctl};
use trellis_agent::model::{Capabilities, DesiredState};
use trellis_agent::reconcile::{self, LoopOptions, PassReport, SnapshotSource, SystemHost};
use trellis_agent::snapshot::Snapshot;

#[derive(Parser)]
#[command(
    name = "trellis-agent",
    version,
    about = "Trellis node agent: plan -> diff -> apply of the node's data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where the agent reads and writes the net.* sysctls (they follow the agent's network
    /// namespace). In a container /proc/sys is read-only: mount the host's /proc/sys/net
    /// writable elsewhere (e.g. /host/proc/sys/net) and point this at it.
    #[arg(long, global = true, env = "TRELLIS_SYSCTL_NET_DIR", default_value = sysctl::DEFAULT_NET_ROOT)]
    sysctl_net_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Print the desired state for this host and the changes apply would make (read-only).
    Plan {
        /// Snapshot file (YAML or JSON).
        #[arg(long)]
        snapshot: PathBuf,
        #[arg(long, value_enum, default_value_t = Output::Yaml)]
        output: Output,
    },
    /// Apply the snapshot: kernel state, NAT, CNI conflist, sysctls.
    Apply {
        /// Snapshot file (YAML or JSON); read again whenever it changes.
        #[arg(long)]
        snapshot: PathBuf,
        /// One pass, print a summary, exit non-zero if anything failed to apply.
        #[arg(long)]
        once: bool,
        /// Seconds between full resyncs (kernel events trigger passes in between).
        #[arg(long, default_value_t = 30)]
        resync_interval: u64,
    },
    /// Run on a Kubernetes cluster (KUBECONFIG, then in-cluster config): watch IPPools,
    /// IPAMBlocks, NodeNetworks and the Installation, keep this node's data plane converged,
    /// publish its NodeNetwork and report what it applied.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// This node's name (the DaemonSet sets it from the downward API, spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where the CNI conflist is written.
    #[arg(long, env = "TRELLIS_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// host-local IPAM's data directory (written into the conflist).
    #[arg(long, env = "TRELLIS_IPAM_DATA_DIR", default_value = "/var/lib/cni/networks")]
    ipam_data_dir: PathBuf,
    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(long, env = "TRELLIS_HEALTH_ADDR", default_value = "0.0.0.0:9099")]
    health_addr: SocketAddr,
    /// Seconds between full resyncs (kernel events and cluster changes trigger passes in between).
    #[arg(long, env = "TRELLIS_RESYNC_INTERVAL", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    resync_interval: u64,
    /// Enforce NetworkPolicies and GlobalNetworkPolicies for this node's pods (`--network-policy=false` leaves policy to something else).
    #[arg(long, env = "TRELLIS_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    network_policy: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Yaml,
    Json,
}

/// What `plan` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanOutput<'a> {
    capabilities: Capabilities,
    desired: &'a DesiredState,
    /// The changes `apply` would make now, iproute2-like.
    changes: Vec<String>,
}

/// What `apply --once` prints.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary {
    ok: bool,
    applied: BTreeMap<&'static str, usize>,
    failed: Vec<String>,
    rolled_back: Vec<String>,
    errors: Vec<String>,
    pool_errors: BTreeMap<String, String>,
    /// Why no new pod can start on this node (no CNI config), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    cni_unavailable: Option<String>,
}

impl Summary {
    fn of(report: &PassReport) -> Self {
        Summary {
            ok: report.ok(),
            applied: report.counts(),
            failed: report.kernel.failed.iter().map(|f| format!("{}: {}", f.change, f.error)).collect(),
            rolled_back: report.kernel.rolled_back.iter().map(ToString::to_string).collect(),
            errors: report.errors.clone(),
            pool_errors: report.pool_errors.iter().cloned().collect(),
            cni_unavailable: report.cni_unavailable.clone(),
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Plain text when logging to a file (the test bed's agent logs).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // One thread: the netlink sockets, /proc/sys and child processes all stay in the
    // namespace the agent was started in.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error chain, without repeating causes that a message already includes.
fn render(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if !out.contains(&message) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&message);
        }
    }
    out
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if !cli.sysctl_net_dir.join("ipv4").is_dir() {
        anyhow::bail!("--sysctl-net-dir {}: not a net sysctl tree (no ipv4/ in it)", cli.sysctl_net_dir.display());
    }
    sysctl::set_net_root(&cli.sysctl_net_dir);
    if matches!(cli.command, Command::Apply { .. } | Command::Run(_)) {
        privilege::check_self()?;
    }
    match cli.command {
        Command::Plan { snapshot, output } => plan(snapshot, output).await,
        Command::Apply { snapshot, once, resync_interval } => apply(snapshot, once, resync_interval).await,
        Command::Run(args) => run_in_cluster(args).await,
    }
}

async fn run_in_cluster(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = AgentConfig {
        node_name: args.node_name,
        cni_conf_dir: args.cni_conf_dir,
        ipam_data_dir: args.ipam_data_dir,
        health_addr: args.health_addr,
        resync_interval: Duration::from_secs(args.resync_interval),
        network_policy: args.network_policy,
    };
    k8s_agent::run(config, shutdown_signal()?).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        }
    })
}

async fn plan(path: PathBuf, output: Output) -> anyhow::Result<ExitCode> {
    let snapshot = Snapshot::from_file(&path)?;
    let kernel = NetlinkKernel::new()?.with_vxlan_device(&snapshot.vxlan.device);
    let capabilities = caps::detect_passive(&kernel, &snapshot.vxlan.device).await;
    let vxlan_device = snapshot.vxlan.device.clone();
    let desired = reconcile::desired_from_snapshot(&kernel, snapshot, capabilities).await?;
    let changes = reconcile::preview(&kernel, &desired, &vxlan_device).await?;
    let out =
        PlanOutput { capabilities, desired: &desired, changes: changes.iter().map(ToString::to_string).collect() };
    match output {
        Output::Yaml => print!("{}", serde_yaml::to_string(&out)?),
        Output::Json => println!("{}", serde_json::to_string_pretty(&out)?),
    }
    Ok(ExitCode::SUCCESS)
}

async fn apply(path: PathBuf, once: bool, resync_interval: u64) -> anyhow::Result<ExitCode> {
    // Tunnel support is probed on the first pass whose pools need it, not here.
    let mut source = SnapshotSource::detecting(path);
    // Fail early on an unreadable snapshot; later passes read it again when it changed and
    // report errors instead.
    let device = source.load()?.vxlan.device.clone();
    let kernel = NetlinkKernel::new()?.with_vxlan_device(&device);
    if once {
        let report = reconcile::pass(&kernel, &mut source, &SystemHost).await?;
        for (pool, error) in &report.pool_errors {
            eprintln!("pool {pool}: {error}");
        }
        let summary = Summary::of(&report);
        print!("{}", serde_yaml::to_string(&summary)?);
        return Ok(if summary.ok { ExitCode::SUCCESS } else { ExitCode::from(2) });
    }

    // Wake-ups: kernel notifications and edits of the snapshot file, on one channel.
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    match netlink::subscribe() {
        Ok(mut kernel_events) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(event) = kernel_events.recv().await {
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "no kernel event subscription; resync and file edits only"),
    }
    netlink::watch_file(source.path.clone(), Duration::from_millis(500), tx);
    let options = LoopOptions { resync_interval: Duration::from_secs(resync_interval.max(1)), ..Default::default() };
    let shutdown = shutdown_signal()?;
    reconcile::run(&kernel, &mut source, &SystemHost, options, Some(events), shutdown, |_, _| {}).await;
    Ok(ExitCode::SUCCESS)
}
