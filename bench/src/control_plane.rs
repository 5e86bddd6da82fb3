//! Control-plane latency: `kubectl patch ippool` → every node applied, and node join → every
//! other node routes to it, with real agents (`trellis-agent run`) in node namespaces and a
//! large cluster of simulated nodes (NodeNetwork + IPAMBlock each) in a private real API server.
//!
//! "Applied" is what an agent reports after its pass: the pool's new `metadata.generation` in
//! its NodeNetwork status with Ready True. A watch on NodeNetworks stamps the moment each
//! report arrives; the clock starts when `kubectl patch` is launched, so kubectl's own start-up
//! is included. "Routes to it" is the kernel: a proto 84 route to the new node's block, polled
//! with iproute2 in every node namespace.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use trellis_api::ipam_block::block_name;
use trellis_api::{EncapMode, IPAMBlock, IPAMBlockSpec, IPPool, IPPoolSpec, NodeNetwork};
use trellis_e2e::agent::{AgentProcess, ClusterAgent};
use trellis_e2e::apiserver::ApiServer;
use trellis_e2e::forward::LoopbackForward;
use trellis_e2e::kapi::PrivateApiServer;
use trellis_e2e::topology::Topology;

use crate::report::{Report, Row, ms, quantile};
use crate::simulated::{self, SimNode, meta};

const POOL: &str = "bench-pool";
const POOL_CIDR: &str = "10.240.0.0/12";
const WAIT: Duration = Duration::from_secs(120);

/// When each node first reported each pool generation as applied (and Ready).
type Seen = Arc<Mutex<BTreeMap<(String, i64), Instant>>>;

fn sim_block(j: u32) -> Ipv4Net {
    let base = u32::from(std::net::Ipv4Addr::new(10, 241, 0, 0)) + j * 64;
    Ipv4Net::new(base.into(), 26).expect("valid prefix")
}

fn sim_node(j: u32) -> SimNode {
    SimNode {
        name: format!("sim-{j}"),
        address: format!("10.1.{}.{}/16", j / 250, j % 250 + 1),
        block: Some((sim_block(j), POOL.to_string())),
    }
}

/// Stamps NodeNetwork reports as they arrive.
async fn watch_reports(api: Api<NodeNetwork>, seen: Seen) {
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects().boxed();
    while let Some(item) = stream.next().await {
        let Ok(nn) = item else { continue };
        let now = Instant::now();
        let (Some(name), Some(status)) = (nn.metadata.name.clone(), nn.status.as_ref()) else { continue };
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            continue;
        }
        if let Some(pool) = status.pools.iter().find(|p| p.name == POOL)
            && let Ok(mut seen) = seen.lock()
        {
            seen.entry((name, pool.generation)).or_insert(now);
        }
    }
}

pub fn run(
    report: &mut Report,
    agents: usize,
    simulated_nodes: u32,
    patches: usize,
    joins: u32,
    tag: &str,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let kapi = PrivateApiServer::start()?;
    let api = rt.block_on(ApiServer::from_kubeconfig(kapi.kubeconfig()))?;
    rt.block_on(api.apply_crds())?;
    let client = api.client();
    let mut builder = Topology::builder(tag).pools(&[POOL_CIDR]);
    for i in 0..agents {
        builder = builder.node(&format!("node{}", i + 1), if i < agents / 2 { 1 } else { 2 });
    }
    let topo = builder.build()?;
    let port = kapi.port()?;
    let _forwards =
        topo.nodes.iter().map(|n| LoopbackForward::start(n.netns(), port)).collect::<Result<Vec<_>, _>>()?;
    let spec = IPPoolSpec {
        cidr: POOL_CIDR.into(),
        block_size: Some(26),
        vxlan_mode: Some(EncapMode::Always),
        ipip_mode: Some(EncapMode::Never),
        nat_outgoing: Some(false),
        ..Default::default()
    };
    rt.block_on(
        Api::<IPPool>::all(client.clone())
            .create(&PostParams::default(), &IPPool { metadata: meta(POOL), spec, status: None }),
    )?;
    let populate = rt.block_on(simulated::create(&client, (0..simulated_nodes).map(sim_node).collect()))?;

    let seen: Seen = Arc::default();
    let reports = rt.spawn(watch_reports(Api::all(client.clone()), seen.clone()));
    let mut running = Vec::new();
    for node in &topo.nodes {
        rt.block_on(
            Api::<Node>::all(client.clone())
                .create(&PostParams::default(), &Node { metadata: meta(&node.name), ..Default::default() }),
        )?;
        let block = IPAMBlock {
            metadata: meta(&block_name(&node.blocks[0].into())),
            spec: IPAMBlockSpec { cidr: node.blocks[0].to_string(), pool: POOL.into(), node: node.name.clone() },
            status: None,
        };
        rt.block_on(Api::<IPAMBlock>::all(client.clone()).create(&PostParams::default(), &block))?;
        let settings = ClusterAgent {
            kubeconfig: kapi.kubeconfig().to_path_buf(),
            cni_conf_dir: node.cni_conf_dir(),
            ipam_data_dir: node.ipam_dir(),
            health_addr: SocketAddr::from(([127, 0, 0, 1], 9099)),
            resync_secs: 30,
        };
        running.push(AgentProcess::start_in_cluster(node.netns(), &node.name, &settings, &node.dir.join("agent.log"))?);
    }
    let names: Vec<String> = topo.nodes.iter().map(|n| n.name.clone()).collect();
    let generation = |rt: &tokio::runtime::Runtime| -> Result<i64> {
        rt.block_on(Api::<IPPool>::all(client.clone()).get(POOL))?.metadata.generation.context("no generation")
    };
    let wait_applied = |generation: i64, start: Instant| -> Result<Vec<Duration>> {
        loop {
            {
                let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                let times: Vec<Option<Duration>> = names
                    .iter()
                    .map(|n| seen.get(&(n.clone(), generation)).map(|t| t.saturating_duration_since(start)))
                    .collect();
                if times.iter().all(Option::is_some) {
                    return Ok(times.into_iter().flatten().collect());
                }
            }
            ensure!(start.elapsed() < WAIT, "not every node applied generation {generation} within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let start = Instant::now();
    let startup = wait_applied(generation(&rt)?, start).with_context(|| topo.dump())?;
    let startup_max = startup.iter().max().copied().unwrap_or_default();

    // Patches, alternating the mode; latency per node per patch.
    let mut per_node: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut all: Vec<Duration> = Vec::new();
    for p in 0..patches {
        std::thread::sleep(Duration::from_secs(1));
        let mode = if p % 2 == 0 { "CrossSubnet" } else { "Always" };
        let patch = format!(r#"{{"spec":{{"vxlanMode":"{mode}"}}}}"#);
        let before = generation(&rt)?;
        let t0 = Instant::now();
        let out = api.kubectl(&["patch", "ippool", POOL, "--type", "merge", "-p", &patch])?;
        ensure!(out.status.success(), "kubectl patch: {}", String::from_utf8_lossy(&out.stderr));
        let after = generation(&rt)?;
        ensure!(after > before, "the patch did not change the pool's generation");
        let times = wait_applied(after, t0).with_context(|| topo.dump())?;
        all.push(times.iter().max().copied().unwrap_or_default());
        for (i, t) in times.into_iter().enumerate() {
            per_node[i].push(t);
        }
    }
    let (p50, p99) = (quantile(&mut all.clone(), 0.5), quantile(&mut all.clone(), 0.99));
    report.row(Row {
        figure: format!(
            "`kubectl patch ippool` → all {agents} agents applied (NodeNetwork status), {simulated_nodes} more \
             simulated nodes, {patches} patches"
        ),
        trellis: format!("p50 {} / p99 {}", ms(p50), ms(p99)),
        reference: String::new(),
        ratio: None,
        goal: "< 1 s".into(),
        met: Some(p99 < Duration::from_secs(1)),
    });
    let mut table = String::from("| node | p50 | p99 |\n|---|---|---|\n");
    for (name, times) in names.iter().zip(per_node.iter_mut()) {
        table.push_str(&format!("| {name} | {} | {} |\n", ms(quantile(times, 0.5)), ms(quantile(times, 0.99))));
    }
    report.section(
        &format!("Control plane: `kubectl patch ippool` → applied, per node ({patches} patches)"),
        format!(
            "Each patch flips `vxlanMode` between CrossSubnet and Always; the clock starts when `kubectl patch` is \
             launched and stops when the node's NodeNetwork reports the new generation, Ready. {agents} real agents \
             (`trellis-agent run` in node namespaces), {simulated_nodes} simulated nodes (NodeNetwork + IPAMBlock) \
             created in {:.1} s; all agents first applied {:.1} s after they started.\n\n{table}",
            populate.as_secs_f64(),
            startup_max.as_secs_f64()
        ),
    );

    // Joins: a new node's objects appear; every agent must route to its block.
    let mut join_times = Vec::new();
    for k in 0..joins {
        std::thread::sleep(Duration::from_secs(1));
        let node = sim_node(simulated_nodes + k);
        let block = sim_block(simulated_nodes + k).to_string();
        let t0 = Instant::now();
        rt.block_on(simulated::create(&client, vec![node]))?;
        let mut pending: Vec<&str> = topo.nodes.iter().map(|n| n.netns()).collect();
        while !pending.is_empty() {
            ensure!(t0.elapsed() < WAIT, "nodes {pending:?} never routed to the joined node's block {block}");
            let mut still = Vec::new();
            for ns in pending {
                if trellis_e2e::cmd::ip(ns, &["route", "show", &block, "proto", "84"])?.trim().is_empty() {
                    still.push(ns);
                }
            }
            pending = still;
        }
        join_times.push(t0.elapsed());
    }
    if !join_times.is_empty() {
        report.row(Row {
            figure: format!("node join → all {agents} agents route to it (kernel, polled), {joins} joins"),
            trellis: format!(
                "p50 {} / max {}",
                ms(quantile(&mut join_times.clone(), 0.5)),
                ms(quantile(&mut join_times, 1.0))
            ),
            reference: String::new(),
            ratio: None,
            goal: "–".into(),
            met: None,
        });
    }
    for mut a in running {
        a.stop();
    }
    // Stop the watch before its API server goes (it would retry, with backoff, until the
    // runtime is dropped), and do not wait for the runtime's tasks.
    reports.abort();
    drop(_forwards);
    topo.finish()?;
    drop(kapi);
    rt.shutdown_background();
    Ok(())
}
