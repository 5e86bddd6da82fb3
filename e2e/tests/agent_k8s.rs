//! The node agent in Kubernetes mode (`trellis-agent run`) against the real API server.
//!
//! Each test gets an API server of its own (agents watch every pool, block and NodeNetwork of
//! their cluster; and only a private server can be stopped), reachable inside every node
//! namespace on the host's loopback port ([`LoopbackForward`]). The test bed plays kubelet and
//! the operator: it creates the Node objects, the IPPool and one IPAMBlock per node by hand;
//! the agents do everything else: detect their address, publish their NodeNetwork, program
//! the kernel, write the CNI conflist the real CNI plugins then use, and report per pool which
//! IPPool generation they applied. Pools change through the real `kubectl patch`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, PostParams};
use trellis_agent::model::MacAddr;
use trellis_api::ipam_block::block_name;
use trellis_api::{EncapMode, IPAMBlock, IPAMBlockSpec, IPPool, IPPoolSpec, NodeNetwork};
use trellis_e2e::agent::{AgentProcess, ClusterAgent};
use trellis_e2e::apiserver::{ApiServer, unique_name};
use trellis_e2e::cmd;
use trellis_e2e::forward::LoopbackForward;
use trellis_e2e::kapi::PrivateApiServer;
use trellis_e2e::pod::PodInfo;
use trellis_e2e::probe;
use trellis_e2e::topology::{DEFAULT_POOL, Topology, UPLINK, v4};

/// Upper bound for anything to converge; polls end as soon as the condition holds.
const WAIT: Duration = Duration::from_secs(30);
const RESYNC_SECS: u64 = 3;
/// After an outage the reflectors retry with kube-runtime's default backoff (0.8 s doubling,
/// jittered, up to 30 s), so the first successful re-list may come that late.
const RECONNECT_WAIT: Duration = Duration::from_secs(90);
const VXLAN_DEV: &str = "vxlan.trellis";

/// A cluster of node namespaces, each with a `trellis-agent run`. Field order is drop order.
struct Cluster {
    agents: BTreeMap<usize, AgentProcess>,
    forwards: Vec<LoopbackForward>,
    topo: Topology,
    api: ApiServer,
    kapi: PrivateApiServer,
    rt: tokio::runtime::Runtime,
    /// Kubernetes name of each topology node.
    names: Vec<String>,
    pool: String,
}

impl Cluster {
    /// `nodes` (name, subnet) as namespaces; the pool with `vxlan_mode`; Node objects, blocks
    /// and agents only for the first `started` nodes.
    fn new(tag: &str, nodes: &[(&str, u8)], vxlan_mode: EncapMode, started: usize) -> Result<Cluster> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let kapi = PrivateApiServer::start()?;
        let api = rt.block_on(ApiServer::from_kubeconfig(kapi.kubeconfig()))?;
        rt.block_on(api.apply_crds())?;
        let mut builder = Topology::builder(tag);
        for (name, subnet) in nodes {
            builder = builder.node(name, *subnet);
        }
        let topo = builder.build()?;
        let port = kapi.port()?;
        let forwards =
            topo.nodes.iter().map(|n| LoopbackForward::start(n.netns(), port)).collect::<Result<Vec<_>, _>>()?;
        let names = topo.nodes.iter().map(|n| unique_name(&n.name)).collect();
        let mut cluster =
            Cluster { agents: BTreeMap::new(), forwards, topo, api, kapi, rt, names, pool: unique_name("pool") };
        let spec = IPPoolSpec {
            cidr: DEFAULT_POOL.into(),
            block_size: Some(i32::from(trellis_e2e::topology::BLOCK_SIZE)),
            vxlan_mode: Some(vxlan_mode),
            ipip_mode: Some(EncapMode::Never),
            nat_outgoing: Some(false),
            ..Default::default()
        };
        let pool = IPPool { metadata: meta(&cluster.pool), spec, status: None };
        cluster.rt.block_on(Api::<IPPool>::all(cluster.api.client()).create(&PostParams::default(), &pool))?;
        for i in 0..started {
            cluster.join(i)?;
        }
        Ok(cluster)
    }

    /// What kubelet and the operator do for node `i` (Node object, its block), then starts
    /// its agent.
    fn join(&mut self, i: usize) -> Result<()> {
        let client = self.api.client();
        let node = Node { metadata: meta(&self.names[i]), ..Default::default() };
        self.rt.block_on(Api::<Node>::all(client.clone()).create(&PostParams::default(), &node))?;
        let cidr = self.topo.node(i).blocks[0];
        let block = IPAMBlock {
            metadata: meta(&block_name(&cidr.into())),
            spec: IPAMBlockSpec { cidr: cidr.to_string(), pool: self.pool.clone(), node: self.names[i].clone() },
            status: None,
        };
        self.rt.block_on(Api::<IPAMBlock>::all(client).create(&PostParams::default(), &block))?;
        self.start_agent(i)
    }

    fn health_addr(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9100 + i as u16))
    }

    fn start_agent(&mut self, i: usize) -> Result<()> {
        let node = self.topo.node(i);
        let settings = ClusterAgent {
            kubeconfig: self.kapi.kubeconfig().to_path_buf(),
            cni_conf_dir: node.cni_conf_dir(),
            ipam_data_dir: node.ipam_dir(),
            health_addr: Self::health_addr(i),
            resync_secs: RESYNC_SECS,
        };
        let log = node.dir.join(format!("agent-{}.log", self.agents.len()));
        let agent = AgentProcess::start_in_cluster(node.netns(), &self.names[i], &settings, &log)?;
        self.agents.insert(i, agent);
        Ok(())
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.api.kubectl(args)?;
        ensure!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pool_generation(&self) -> Result<i64> {
        let pool = self.rt.block_on(Api::<IPPool>::all(self.api.client()).get(&self.pool))?;
        pool.metadata.generation.context("IPPool without metadata.generation")
    }

    fn node_networks(&self) -> Result<BTreeMap<String, NodeNetwork>> {
        let list = self.rt.block_on(Api::<NodeNetwork>::all(self.api.client()).list(&Default::default()))?;
        Ok(list.items.into_iter().filter_map(|nn| Some((nn.metadata.name.clone()?, nn))).collect())
    }

    /// Waits until every running agent's NodeNetwork reports the pool at the current
    /// generation with `encapsulation`, and Ready.
    fn wait_converged(&self, encapsulation: &str) -> Result<()> {
        self.wait_converged_within(encapsulation, WAIT)
    }

    fn wait_converged_within(&self, encapsulation: &str, timeout: Duration) -> Result<()> {
        let generation = self.pool_generation()?;
        let nodes: Vec<&String> = self.agents.keys().map(|i| &self.names[*i]).collect();
        probe::wait_until(&format!("every node applies generation {generation} ({encapsulation})"), timeout, || {
            let nns = self.node_networks().map_err(|e| e.to_string())?;
            for name in &nodes {
                let status = nns.get(*name).and_then(|nn| nn.status.as_ref()).ok_or(format!("{name}: no status"))?;
                let pool = status.pools.iter().find(|p| p.name == self.pool).ok_or(format!("{name}: pool missing"))?;
                let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
                if pool.generation != generation || pool.encapsulation != encapsulation || !ready {
                    return Err(format!("{name}: {status:?}"));
                }
            }
            Ok(())
        })
        .with_context(|| self.topo.dump())
    }

    /// `curl http://HEALTH/PATH` inside node `i`: (HTTP code, body).
    fn http(&self, i: usize, path: &str) -> Result<(u16, String)> {
        let url = format!("http://{}{path}", Self::health_addr(i));
        let out = cmd::in_ns_output(self.topo.node(i).netns(), "curl", &["-s", "-w", "\n%{http_code}", &url])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
        Ok((code.trim().parse().with_context(|| format!("curl {url}: {text}"))?, body.to_string()))
    }

    /// Trellis' kernel state of node `i`: routes (proto 84), VXLAN neighbours and FDB.
    fn kernel_state(&self, i: usize) -> Result<String> {
        let ns = self.topo.node(i).netns();
        let routes = cmd::ip(ns, &["route", "show", "proto", "84"])?;
        let neigh = cmd::ip(ns, &["neigh", "show", "dev", VXLAN_DEV, "nud", "permanent"]).unwrap_or_default();
        let fdb = cmd::in_ns(ns, "bridge", &["fdb", "show", "dev", VXLAN_DEV]).unwrap_or_default();
        Ok(format!("{routes}--\n{neigh}--\n{fdb}"))
    }

    fn route_to(&self, i: usize, peer: usize) -> Result<String> {
        let block = self.topo.node(peer).blocks[0].to_string();
        Ok(cmd::ip(self.topo.node(i).netns(), &["route", "show", &block, "proto", "84"])?.trim().to_string())
    }

    fn wait_route(&self, i: usize, peer: usize, want: impl Fn(&str) -> bool) -> Result<String> {
        probe::wait_until(&format!("route on node {i} to node {peer}'s block"), WAIT, || {
            let route = self.route_to(i, peer).map_err(|e| e.to_string())?;
            if want(&route) { Ok(route) } else { Err(route) }
        })
        .with_context(|| self.topo.dump())
    }

    fn finish(mut self) -> Result<()> {
        for (_, mut agent) in std::mem::take(&mut self.agents) {
            agent.stop();
        }
        self.forwards.clear();
        let Cluster { topo, .. } = self;
        topo.finish()?;
        Ok(())
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.to_string()), ..Default::default() }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Pings `to` from `from` while capturing on the sender's uplink; the wire must carry VXLAN
/// (`vxlan`) or plain pod traffic.
fn check_carried(c: &Cluster, from: &PodInfo, to: IpAddr, vxlan: bool) -> Result<()> {
    let node = c.topo.node(from.node);
    let (_, wire) = probe::observe_wire(node.netns(), UPLINK, DEFAULT_POOL, || probe::wait_ping(&from.netns, to, WAIT))
        .with_context(|| format!("pod {} -> {to}\n{}", from.name, c.topo.dump()))?;
    let ok = if vxlan {
        wire.vxlan.count() > 0 && wire.plain.count() == 0
    } else {
        wire.plain.count() > 0 && wire.vxlan.count() == 0
    };
    ensure!(
        ok,
        "pod {} -> {to}: expected {} on the wire, saw:\n{wire}",
        from.name,
        if vxlan { "VXLAN" } else { "plain" }
    );
    Ok(())
}

#[test]
#[ignore = "root: private API server, network namespaces, agents, CNI plugins"]
fn agents_publish_node_networks_and_follow_kubectl_patch_none_vxlan_cross_subnet() -> Result<()> {
    let mut c = Cluster::new("k8sm", &[("node1", 1), ("node2", 1), ("node3", 2)], EncapMode::Never, 3)?;
    c.wait_converged("None")?;
    // Identity: detected uplink address with its prefix (firstFound), MAC derived from the name.
    let nns = c.node_networks()?;
    for (i, name) in c.names.iter().enumerate() {
        let nn = nns.get(name).with_context(|| format!("no NodeNetwork {name}"))?;
        let node = c.topo.node(i);
        ensure!(nn.spec.address == node.address.to_string(), "{name}: address {}", nn.spec.address);
        ensure!(nn.spec.uplink.as_deref() == Some(UPLINK), "{name}: uplink {:?}", nn.spec.uplink);
        ensure!(nn.spec.vtep_mac == Some(MacAddr::for_node(name).to_string()), "{name}: MAC {:?}", nn.spec.vtep_mac);
        ensure!(nn.spec.tunnel_address == Some(node.blocks[0].network().to_string()), "{name}: tunnel address");
        let owner = nn.metadata.owner_references.as_ref().and_then(|o| o.first()).context("no owner")?;
        ensure!(owner.kind == "Node" && &owner.name == name, "{name}: owner {owner:?}");
    }
    let a = c.topo.add_pod(0, "a")?;
    let b = c.topo.add_pod(1, "b")?;
    let p3 = c.topo.add_pod(2, "c")?;
    // None: same subnet goes direct (once each node has seen the other's NodeNetwork).
    let direct = format!("via {} dev {UPLINK}", c.topo.node(1).ip());
    c.wait_route(0, 1, |r| r.contains(&direct))?;
    c.wait_route(1, 0, |r| r.contains(&format!("via {} dev {UPLINK}", c.topo.node(0).ip())))?;
    check_carried(&c, &a, v4(b.ip), false)?;

    c.kubectl(&["patch", "ippool", &c.pool, "--type", "merge", "-p", r#"{"spec":{"vxlanMode":"Always"}}"#])?;
    c.wait_converged("VXLAN/Always")?;
    for (i, peer) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
        c.wait_route(i, peer, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    }
    check_carried(&c, &a, v4(b.ip), true)?;
    check_carried(&c, &a, v4(p3.ip), true)?;
    check_carried(&c, &p3, v4(b.ip), true)?;

    c.kubectl(&["patch", "ippool", &c.pool, "--type", "merge", "-p", r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#])?;
    c.wait_converged("VXLAN/CrossSubnet")?;
    for (i, peer, vxlan) in [(0, 1, false), (1, 0, false), (0, 2, true), (1, 2, true), (2, 0, true), (2, 1, true)] {
        c.wait_route(i, peer, |r| r.contains(&format!("dev {VXLAN_DEV}")) == vxlan)?;
    }
    check_carried(&c, &a, v4(b.ip), false)?;
    check_carried(&c, &b, v4(p3.ip), true)?;
    check_carried(&c, &p3, v4(a.ip), true)?;

    // Health endpoints on every node.
    for i in 0..3 {
        let (code, _) = c.http(i, "/healthz")?;
        ensure!(code == 200, "node {i} /healthz: {code}");
        let (code, body) = c.http(i, "/readyz")?;
        ensure!(code == 200, "node {i} /readyz: {code} {body}");
        let (code, metrics) = c.http(i, "/metrics")?;
        ensure!(code == 200, "node {i} /metrics: {code}");
        let cluster_passes = metric(&metrics, "trellis_agent_passes_total{trigger=\"cluster\"}").unwrap_or(0.0);
        ensure!(cluster_passes >= 2.0, "node {i}: two pool patches, {cluster_passes} cluster passes:\n{metrics}");
        ensure!(metric(&metrics, "trellis_agent_changes_applied_total").unwrap_or(0.0) > 0.0, "{metrics}");
        ensure!(metric(&metrics, "trellis_agent_last_apply_duration_seconds").is_some(), "{metrics}");
    }
    c.finish()
}

#[test]
#[ignore = "root: private API server, network namespaces, agents, CNI plugins"]
fn a_new_node_appears_in_every_peers_routes_without_restarting_agents() -> Result<()> {
    let mut c = Cluster::new("k8sn", &[("node1", 1), ("node2", 2), ("node3", 2)], EncapMode::Always, 2)?;
    c.wait_converged("VXLAN/Always")?;
    c.wait_route(0, 1, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    c.wait_route(1, 0, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    let a = c.topo.add_pod(0, "a")?;
    ensure!(c.route_to(0, 2)?.is_empty(), "route to a node that does not exist yet");

    c.join(2)?;
    c.wait_converged("VXLAN/Always")?;
    for peer in [0, 1] {
        c.wait_route(peer, 2, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
        c.wait_route(2, peer, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    }
    let p3 = c.topo.add_pod(2, "c")?;
    check_carried(&c, &a, v4(p3.ip), true)?;
    check_carried(&c, &p3, v4(a.ip), true)?;
    // The first two agents are the same processes that started before node3 existed.
    for (i, agent) in c.agents.iter_mut() {
        if *i < 2 {
            ensure!(agent.exited().is_none(), "agent {i} exited");
        }
    }
    c.finish()
}

#[test]
#[ignore = "root: private API server, network namespaces, agents, CNI plugins"]
fn api_server_outage_leaves_the_data_plane_untouched_and_agents_reconverge() -> Result<()> {
    let mut c = Cluster::new("k8so", &[("node1", 1), ("node2", 2)], EncapMode::Always, 2)?;
    c.wait_converged("VXLAN/Always")?;
    c.wait_route(0, 1, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    c.wait_route(1, 0, |r| r.contains(&format!("dev {VXLAN_DEV}")))?;
    let a = c.topo.add_pod(0, "a")?;
    let b = c.topo.add_pod(1, "b")?;
    check_carried(&c, &a, v4(b.ip), true)?;
    let before = [c.kernel_state(0)?, c.kernel_state(1)?];

    c.kapi.pause()?;
    // Several resyncs and watch retries without the API server.
    std::thread::sleep(Duration::from_secs(3 * RESYNC_SECS));
    for (i, before) in before.iter().enumerate() {
        ensure!(&c.kernel_state(i)? == before, "node {i} changed during the outage:\n{}", c.topo.dump());
        let (code, _) = c.http(i, "/healthz")?;
        ensure!(code == 200, "node {i} /healthz during the outage: {code}");
    }
    probe::wait_ping(&a.netns, v4(b.ip), WAIT).with_context(|| c.topo.dump())?;
    for (i, agent) in c.agents.iter_mut() {
        ensure!(agent.exited().is_none(), "agent {i} exited during the outage:\n{}", agent.log_text());
    }

    c.kapi.resume()?;
    // Reconnected: a change made after the outage reaches every node.
    c.kubectl(&["patch", "ippool", &c.pool, "--type", "merge", "-p", r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#])?;
    c.wait_converged_within("VXLAN/CrossSubnet", RECONNECT_WAIT)?;
    check_carried(&c, &a, v4(b.ip), true)?;

    // A restarted agent adopts the kernel as it is: its first passes change nothing.
    let before = c.kernel_state(0)?;
    if let Some(mut agent) = c.agents.remove(&0) {
        agent.stop();
    }
    c.start_agent(0)?;
    probe::wait_until("restarted agent ready", WAIT, || match c.http(0, "/readyz") {
        Ok((200, _)) => Ok(()),
        other => Err(format!("{other:?}")),
    })?;
    let (_, metrics) = c.http(0, "/metrics")?;
    ensure!(metric(&metrics, "trellis_agent_passes_total{trigger=\"start\"}") == Some(1.0), "{metrics}");
    ensure!(
        metric(&metrics, "trellis_agent_changes_applied_total") == Some(0.0),
        "restart changed something:\n{metrics}"
    );
    ensure!(c.kernel_state(0)? == before, "restart changed the kernel:\n{}", c.topo.dump());
    if c.agents.values_mut().any(|a| a.exited().is_some()) {
        bail!("an agent exited");
    }
    c.finish()
}
