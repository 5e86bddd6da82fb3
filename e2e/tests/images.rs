//! The container images (images/Containerfile.*), built by `images/build` and run with podman:
//! the operator image against a real API server as the unprivileged user the chart runs it as,
//! the agent image in node network namespaces with only NET_ADMIN and NET_RAW, programming the
//! kernel so that pods talk across nodes, and failing clearly without NET_ADMIN.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use trellis_api::EncapMode;
use trellis_e2e::apiserver::ApiServer;
use trellis_e2e::kapi::PrivateApiServer;
use trellis_e2e::operator::free_port;
use trellis_e2e::podman::{Mount, Network, RunSpec, images, process_effective_caps, process_uids};
use trellis_e2e::probe::{self, wait_until};
use trellis_e2e::topology::{self, DEFAULT_POOL, INTERNET, Topology, v4};

const WAIT: Duration = Duration::from_secs(60);

/// The agent container for `apply --snapshot FILE --once` on a node, as the DaemonSet runs it:
/// host network of the node, NET_ADMIN + NET_RAW only, the node's directories and the host's
/// /proc/sys/net mounted.
fn agent_once(topo: &Topology, i: usize, capabilities: &[&str]) -> RunSpec {
    let node = topo.node(i);
    RunSpec {
        name: format!("{}-agent-{}", topo.prefix, node.name),
        image: images().map(|i| i.agent).unwrap_or_default(),
        args: vec!["apply".into(), "--snapshot".into(), node.snapshot_path().display().to_string(), "--once".into()],
        env: vec![("TRELLIS_SYSCTL_NET_DIR".into(), "/host/proc/sys/net".into())],
        capabilities: Some(capabilities.iter().map(|c| c.to_string()).collect()),
        mounts: vec![
            Mount { host: node.dir.clone(), container: node.dir.clone(), read_only: false },
            Mount { host: "/proc/sys/net".into(), container: "/host/proc/sys/net".into(), read_only: false },
        ],
        network: Some(Network::Netns(node.netns().to_string())),
        ..Default::default()
    }
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "root: podman, network namespaces, CNI plugins"]
fn agent_image_programs_nodes_with_only_net_admin_and_net_raw() -> Result<()> {
    images()?;
    let mut topo = Topology::standard("ia")?;
    let pool = topology::pool("default", DEFAULT_POOL, EncapMode::Never, EncapMode::CrossSubnet, true)?;
    for i in 0..topo.nodes.len() {
        // Whatever the host's value, the agent is the one that turns forwarding on.
        topo.node(i).ns.sysctl("net.ipv4.ip_forward", "0")?;
        topo.write_snapshot(i, &topo.snapshot(i, std::slice::from_ref(&pool)))?;
        let out = agent_once(&topo, i, &["NET_ADMIN", "NET_RAW"]).run_to_completion()?;
        let text = output_text(&out);
        ensure!(out.status.success(), "agent container on {} failed:\n{text}", topo.node(i).name);
        ensure!(String::from_utf8_lossy(&out.stdout).contains("ok: true"), "summary not ok:\n{text}");
    }
    for i in 0..topo.nodes.len() {
        let node = topo.node(i);
        ensure!(node.ns.read_sysctl("net.ipv4.ip_forward")? == "1", "{}: forwarding not turned on", node.name);
        ensure!(
            node.ns.ip(&["link", "show", "vxlan.trellis"]).is_ok(),
            "{}: no vxlan.trellis:\n{}",
            node.name,
            topo.dump()
        );
        let routes = probe::routes_with_proto(node.netns(), 84)?;
        ensure!(routes.len() >= 3, "{}: expected a blackhole and two peer routes, got {routes:?}", node.name);
        // nft ran inside the image (the NAT-outgoing table).
        node.ns.exec("nft", &["list", "table", "inet", "trellis"]).context("the agent image did not write NAT")?;
        ensure!(node.conflist_path().exists(), "{}: no conflist written", node.name);
    }
    let a = topo.add_pod(0, "a")?;
    let b = topo.add_pod(1, "b")?;
    let c = topo.add_pod(2, "c")?;
    // Same subnet (direct) and across the router (VXLAN).
    probe::wait_ping(&a.netns, v4(b.ip), WAIT).with_context(|| topo.dump())?;
    probe::wait_ping(&a.netns, v4(c.ip), WAIT).with_context(|| topo.dump())?;
    // NAT-outgoing through nft: the internet sees node3's address.
    let src = probe::udp_source_seen(&c.netns, topo.internet.name(), INTERNET, 9100, WAIT)?;
    ensure!(src.ip() == v4(topo.node(2).ip()), "internet saw {src}, expected node3's address");
    topo.finish()?;
    Ok(())
}

#[test]
#[ignore = "root: podman, network namespaces"]
fn agent_image_without_net_admin_fails_clearly_and_changes_nothing() -> Result<()> {
    images()?;
    let topo = Topology::standard("in")?;
    let pool = topology::pool("default", DEFAULT_POOL, EncapMode::Never, EncapMode::Always, true)?;
    topo.write_snapshot(0, &topo.snapshot(0, std::slice::from_ref(&pool)))?;
    let out = agent_once(&topo, 0, &["NET_RAW"]).run_to_completion()?;
    let text = output_text(&out);
    ensure!(!out.status.success(), "the agent ran without NET_ADMIN:\n{text}");
    ensure!(String::from_utf8_lossy(&out.stderr).contains("needs the capability NET_ADMIN"), "no clear error:\n{text}");
    let node = topo.node(0);
    ensure!(node.ns.ip(&["link", "show", "vxlan.trellis"]).is_err(), "a device was created anyway");
    ensure!(probe::routes_with_proto(node.netns(), 84)?.is_empty(), "routes were written anyway");
    ensure!(!node.conflist_path().exists(), "a conflist was written anyway");
    topo.finish()?;
    Ok(())
}

/// A copy of the kubeconfig the image's user (65532) can read (the test bed writes it 0600).
fn readable_kubeconfig(kubeconfig: &Path, dir: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let copy = dir.join("kubeconfig");
    std::fs::copy(kubeconfig, &copy)?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o644))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(copy)
}

fn kubectl_json(api: &ApiServer, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = api.kubectl(args).map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "root: podman, a private API server"]
async fn operator_image_runs_unprivileged_and_reconciles_an_installation() -> Result<()> {
    let images = images()?;
    let server = PrivateApiServer::start()?;
    let api = ApiServer::from_kubeconfig(server.kubeconfig()).await?;
    api.apply_crds().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = readable_kubeconfig(server.kubeconfig(), dir.path())?;
    let health = format!("127.0.0.1:{}", free_port()?);
    let agent_image = "registry.example/trellis/agent:test";
    let spec = RunSpec {
        name: format!("trellis-image-operator-{}", std::process::id()),
        image: images.operator.clone(),
        args: vec![
            "--namespace=trellis-system".into(),
            format!("--agent-image={agent_image}"),
            "--identity=operator-image".into(),
            format!("--health-addr={health}"),
        ],
        env: vec![("KUBECONFIG".into(), "/etc/trellis/kubeconfig".into())],
        // The chart's securityContext: every capability dropped, read-only root, the image's user.
        capabilities: Some(vec![]),
        read_only_root: true,
        mounts: vec![Mount { host: kubeconfig, container: "/etc/trellis/kubeconfig".into(), read_only: true }],
        network: Some(Network::Host),
        ..Default::default()
    };
    let operator = spec.start()?;
    let pid = wait_until("the operator container's process", WAIT, || operator.pid().map_err(|e| e.to_string()))?;
    let uids = process_uids(pid)?;
    ensure!(uids.iter().all(|u| *u == 65532), "operator runs as {uids:?}, expected 65532\n{}", operator.logs());
    ensure!(process_effective_caps(pid)? == 0, "operator holds capabilities");

    api.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: trellis.dev/v1\nkind: Installation\nmetadata: {name: default}\nspec:\n  network:\n    ipPools: [{cidr: 10.244.0.0/16, encapsulation: VXLANCrossSubnet, natOutgoing: Enabled}]\n",
    )?;
    let pool = wait_until("the operator image to create the IPPool", WAIT, || {
        if !operator.running() {
            return Err(format!("the operator container exited:\n{}", operator.logs()));
        }
        kubectl_json(&api, &["get", "ippool", "default-ipv4-ippool", "-o", "json"])
    })?;
    ensure!(pool["spec"]["vxlanMode"] == "CrossSubnet", "pool {pool}");
    let ds = wait_until("the agent DaemonSet", WAIT, || {
        kubectl_json(&api, &["-n", "trellis-system", "get", "daemonset", "trellis-agent", "-o", "json"])
    })?;
    let image = &ds["spec"]["template"]["spec"]["containers"][0]["image"];
    ensure!(image == agent_image, "DaemonSet image {image}");
    let lease = wait_until("the Lease held by the container", WAIT, || {
        let l = kubectl_json(&api, &["-n", "trellis-system", "get", "lease", "trellis-operator", "-o", "json"])?;
        if l["spec"]["holderIdentity"] == "operator-image" { Ok(l) } else { Err(format!("lease {l}")) }
    })?;
    ensure!(lease["spec"]["holderIdentity"] == "operator-image");
    wait_until("the Installation's status (computed spec)", WAIT, || {
        let i = kubectl_json(&api, &["get", "installation", "default", "-o", "json"])?;
        if i["status"]["computed"].is_object() { Ok(i) } else { Err(format!("installation {i}")) }
    })?;
    // SIGTERM like a rolling update: a clean exit (it releases the Lease first).
    operator.stop(Duration::from_secs(10))?;
    match operator.exit_code() {
        Some(0) => {}
        other => bail!("operator container exited with {other:?}:\n{}", operator.logs()),
    }
    Ok(())
}
