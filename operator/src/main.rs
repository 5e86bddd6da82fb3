//! trellis-operator: the cluster reconciler. The Kubernetes controllers arrive with the
//! roadmap's "operator and agent on the Kubernetes API" issue; today the binary only reports
//! the API it serves so that packaging and the workspace are in place.

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    tracing::info!(
        group = trellis_api::GROUP,
        version = trellis_api::VERSION,
        "trellis-operator: controllers not implemented yet"
    );
    anyhow::bail!("trellis-operator has no controllers yet (see ROADMAP: operator on the Kubernetes API)")
}
