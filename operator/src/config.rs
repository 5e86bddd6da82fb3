//! The operator's command line: every option has a default, so `trellis-operator` with no
//! arguments runs against the cluster found the usual way (KUBECONFIG, then in-cluster).

use std::net::SocketAddr;

use clap::Parser;

/// Namespace of everything the operator renders.
pub const DEFAULT_NAMESPACE: &str = "trellis-system";
/// Name of the coordination.k8s.io Lease the replicas elect a leader on.
pub const DEFAULT_LEASE_NAME: &str = "trellis-operator";

/// The agent image this build of the operator goes with: `trellis/agent:<crate version>`.
pub fn default_agent_image() -> String {
    format!("trellis/agent:{}", env!("CARGO_PKG_VERSION"))
}

/// Options of `trellis-operator`.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "trellis-operator",
    version,
    about = "Trellis operator: reconciles the Installation, IP pools and IPAM"
)]
pub struct Config {
    /// Namespace for the node agent's DaemonSet, ServiceAccount and the leader Lease (created if missing).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,

    /// Node agent image. The Installation's spec.registry is put in front of it.
    #[arg(long, default_value_t = default_agent_image())]
    pub agent_image: String,

    /// Elect a leader among replicas; only the leader writes. `--leader-election=false` or
    /// `--no-leader-election` for a single replica.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub leader_election: bool,

    /// Same as `--leader-election=false`.
    #[arg(long, conflicts_with = "leader_election")]
    pub no_leader_election: bool,

    /// Name of the Lease in --namespace.
    #[arg(long, default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,

    /// Seconds a leader holds the Lease without renewing it; a standby takes over within this
    /// time after the leader stops. The leader renews every third of it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease_duration: u64,

    /// This replica's identity in the Lease (default: $POD_NAME, else the hostname).
    #[arg(long)]
    pub identity: Option<String>,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub health_addr: SocketAddr,

    /// Seconds a phase of a live encapsulation/NAT change waits for every node to report it
    /// before the pool's LiveChangeStalled condition names the missing nodes (the change stays
    /// paused until they report or are deleted).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub live_change_timeout: u64,
}

impl Config {
    /// Whether leader election is on (`--no-leader-election` wins).
    pub fn leader_election(&self) -> bool {
        self.leader_election && !self.no_leader_election
    }

    /// The Lease holder identity: --identity, $POD_NAME, the hostname, in that order.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
            .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
            .unwrap_or_else(|| format!("trellis-operator-{}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_gives_the_documented_defaults() {
        let c = Config::try_parse_from(["trellis-operator"]).unwrap();
        assert_eq!(c.namespace, "trellis-system");
        assert_eq!(c.agent_image, format!("trellis/agent:{}", env!("CARGO_PKG_VERSION")));
        assert!(c.leader_election());
        assert_eq!(c.lease_name, "trellis-operator");
        assert_eq!(c.lease_duration, 15);
        assert_eq!(c.health_addr.to_string(), "0.0.0.0:9090");
        assert_eq!(c.live_change_timeout, 60);
    }

    #[test]
    fn leader_election_can_be_switched_off_both_ways() {
        let c = Config::try_parse_from(["trellis-operator", "--no-leader-election"]).unwrap();
        assert!(!c.leader_election());
        let c = Config::try_parse_from(["trellis-operator", "--leader-election=false"]).unwrap();
        assert!(!c.leader_election());
        let c = Config::try_parse_from(["trellis-operator", "--leader-election"]).unwrap();
        assert!(c.leader_election());
    }

    #[test]
    fn lease_duration_too_short_is_refused() {
        let e = Config::try_parse_from(["trellis-operator", "--lease-duration", "1"]).unwrap_err();
        assert!(e.to_string().contains("lease-duration"), "{e}");
    }

    #[test]
    fn help_lists_every_option() {
        use clap::CommandFactory;
        let help = Config::command().render_long_help().to_string();
        for option in [
            "--namespace",
            "--agent-image",
            "--leader-election",
            "--no-leader-election",
            "--lease-name",
            "--lease-duration",
            "--identity",
            "--health-addr",
            "--live-change-timeout",
        ] {
            assert!(help.contains(option), "{option} missing from --help:\n{help}");
        }
    }

    #[test]
    fn explicit_identity_wins() {
        let c = Config::try_parse_from(["trellis-operator", "--identity", "replica-a"]).unwrap();
        assert_eq!(c.identity(), "replica-a");
    }
}
