//! Memory and idle cost: the long-running agent's RSS at a cluster size and its CPU while
//! nothing changes; the operator's RSS with a cluster of simulated nodes in the real API server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kube::api::{Api, ListParams, PostParams};
use trellis_api::{EncapMode, IPAMBlock, IPPool, IPPoolSpec};
use trellis_e2e::agent::AgentProcess;
use trellis_e2e::apiserver::{ApiServer, unique_name};
use trellis_e2e::kapi::PrivateApiServer;
use trellis_e2e::operator::OperatorProcess;

use crate::cluster_model;
use crate::procstat::{self, mib};
use crate::programming::fresh_node;
use crate::report::{Report, Row};
use crate::simulated::{self, SimNode, meta};

const RESYNC_SECS: u64 = 30;

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if check()? {
            return Ok(start.elapsed());
        }
        ensure!(start.elapsed() < timeout, "gave up after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Agent RSS at each size; idle CPU at the largest.
pub fn agent(report: &mut Report, sizes: &[u32], idle: Duration, tag: &str) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("trellis-bench-mem-").tempdir()?;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    for &peers in sizes {
        let node = fresh_node(&format!("{tag}-mem{peers}"))?;
        let path = dir.path().join(format!("snapshot-{peers}.yaml"));
        std::fs::write(&path, serde_yaml::to_string(&cluster_model::snapshot(peers, dir.path()))?)?;
        let log = dir.path().join(format!("agent-{peers}.log"));
        let mut agent = AgentProcess::start(node.name(), "bench-node-0", &path, RESYNC_SECS, &log)?;
        let passes = |agent: &AgentProcess| agent.log_text().matches("pass done").count();
        wait_for("the agent's first pass", Duration::from_secs(300), || Ok(passes(&agent) > 0))
            .with_context(|| agent.log_text())?;
        let routes = trellis_e2e::cmd::ip(node.name(), &["route", "show", "proto", "84"])?.lines().count();
        ensure!(routes == peers as usize + 1, "the agent programmed {routes} routes for {peers} peers");
        std::thread::sleep(Duration::from_secs(1));
        let pid = *node.pids().first().context("no agent process in the namespace")? as u32;
        let (rss, hwm) = procstat::rss_kib(pid)?;
        report.row(Row {
            figure: format!("agent RSS, {peers} peers (running `apply`, after the first pass; peak)"),
            trellis: format!("{} (peak {})", mib(rss), mib(hwm)),
            reference: String::new(),
            ratio: None,
            goal: if peers >= 5_000 { "< 20 MiB".into() } else { "–".into() },
            met: (peers >= 5_000).then_some(rss < 20 * 1024),
        });
        if peers == largest {
            let before = passes(&agent);
            let (used, share) = procstat::cpu_over(pid, idle)?;
            let during = passes(&agent) - before;
            report.row(Row {
                figure: format!(
                    "agent CPU while nothing changes, {peers} peers, {} s (resync every {RESYNC_SECS} s; {during} \
                     pass(es) in the window)",
                    idle.as_secs()
                ),
                trellis: format!("{:.0} ms CPU ({:.2} % of a core)", used.as_secs_f64() * 1000.0, share * 100.0),
                reference: String::new(),
                ratio: None,
                goal: "~0 (event-driven)".into(),
                met: Some(share < 0.01),
            });
        }
        agent.stop();
    }
    Ok(())
}

/// The operator's RSS once it has allocated a block for each of `nodes` simulated nodes.
pub fn operator(report: &mut Report, nodes: u32) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let kapi = PrivateApiServer::start()?;
    let api = rt.block_on(ApiServer::from_kubeconfig(kapi.kubeconfig()))?;
    rt.block_on(api.apply_crds())?;
    let spec = IPPoolSpec {
        cidr: "10.240.0.0/12".into(),
        block_size: Some(26),
        vxlan_mode: Some(EncapMode::Always),
        ipip_mode: Some(EncapMode::Never),
        ..Default::default()
    };
    rt.block_on(
        Api::<IPPool>::all(api.client())
            .create(&PostParams::default(), &IPPool { metadata: meta("bench-pool"), spec, status: None }),
    )?;
    let identity = unique_name("bench-operator");
    let _operator = OperatorProcess::start(kapi.kubeconfig(), &identity, &[])?;
    let sims = (0..nodes)
        .map(|i| SimNode {
            name: format!("sim-{i}"),
            address: format!("10.1.{}.{}/16", i / 250, i % 250 + 1),
            block: None,
        })
        .collect();
    rt.block_on(simulated::create(&api.client(), sims))?;
    let blocks = Api::<IPAMBlock>::all(api.client());
    let took = wait_for("a block per node", Duration::from_secs(600), || {
        Ok(rt.block_on(blocks.list_metadata(&ListParams::default()))?.items.len() >= nodes as usize)
    })?;
    // Let it finish the pass and settle.
    std::thread::sleep(Duration::from_secs(3));
    let pid = simulated::pid_of(&identity).context("operator process not found")?;
    let (rss, hwm) = procstat::rss_kib(pid)?;
    report.row(Row {
        figure: format!("operator RSS, {nodes} nodes (Node + NodeNetwork + its IPAMBlock each; peak)"),
        trellis: format!("{} (peak {})", mib(rss), mib(hwm)),
        reference: String::new(),
        ratio: None,
        goal: "< 40 MiB".into(),
        met: Some(rss < 40 * 1024),
    });
    report.row(Row {
        figure: format!("operator: blocks for {nodes} new nodes allocated (after the last node was created)"),
        trellis: format!("{:.1} s", took.as_secs_f64()),
        reference: String::new(),
        ratio: None,
        goal: "–".into(),
        met: None,
    });
    Ok(())
}
