//! Programming rate: `trellis-agent apply --once` against `ip -batch` + `bridge -batch` of the
//! very same objects, each in a fresh network namespace, in the same run.
//!
//! The objects are what the planner wants for node 0 of a [`cluster_model`] cluster: the VXLAN
//! device and its address, then per peer one permanent neighbour, one FDB entry and one route
//! (plus the node's own blackhole). The reference batch files are the diff from an empty
//! kernel rendered as iproute2 commands ([`Change`]'s `Display`), so both sides create exactly
//! the same kernel objects; both are started through `ip netns exec` and both results are
//! counted back with iproute2 before a time is accepted.
//!
//! First apply: a fresh namespace with only the uplink. No-op resync: the same command again
//! on the programmed namespace (the reference re-runs its `replace` batches, which is how a
//! script keeps state converged). The no-op pass is also timed where it matters, inside the
//! long-running agent: `trellis-agent apply` on the programmed namespace with a resync every
//! second logs each pass's duration (`took_ms`), and the benchmark reads its log.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use trellis_agent::diff::diff;
use trellis_agent::model::{Capabilities, Change, DesiredState, KernelState};
use trellis_e2e::agent::{self, AgentProcess};
use trellis_e2e::cmd;
use trellis_e2e::netns::Netns;

use crate::cluster_model::{self, UPLINK};
use crate::report::{Report, Row, median, ms, quantile};

/// A namespace like a node's before the agent ran: loopback and an uplink with the node address.
pub fn fresh_node(name: &str) -> Result<Netns> {
    let ns = Netns::create(name)?;
    ns.ip(&["link", "add", UPLINK, "type", "veth", "peer", "name", "eth0p"])?;
    ns.ip(&["addr", "add", &cluster_model::node0_cidr(), "dev", UPLINK])?;
    ns.ip(&["link", "set", UPLINK, "up"])?;
    ns.ip(&["link", "set", "eth0p", "up"])?;
    Ok(ns)
}

/// The reference batches: (ip batch of the device and its address, ip batch of neighbours and
/// routes, bridge batch of FDB entries).
pub struct Batches {
    pub device: String,
    pub ip: String,
    pub bridge: String,
    pub peers: usize,
}

pub fn batches(desired: &DesiredState) -> Result<Batches> {
    let mut b = Batches { device: String::new(), ip: String::new(), bridge: String::new(), peers: desired.fdb.len() };
    for change in diff(&KernelState::default(), desired) {
        let line = format!("{change}\n");
        match change {
            // `Change`'s rendering puts link options after `type vxlan`, which `ip` refuses.
            Change::CreateVxlan(t) => b.device.push_str(&format!(
                "link add {} address {} mtu {} type vxlan id {} dstport {} local {} dev {} nolearning\nlink set {} up\n",
                t.name, t.mac, t.mtu, t.vni, t.port, t.local, t.uplink, t.name
            )),
            Change::AddAddress { .. } => b.device.push_str(&line),
            Change::AddNeighbour(_) | Change::AddRoute(_) => b.ip.push_str(&line),
            Change::AddFdb(_) => b.bridge.push_str(&line),
            other => bail!("unexpected change from an empty kernel: {other}"),
        }
    }
    Ok(b)
}

/// What iproute2 counts in a namespace: (routes with proto 84, permanent neighbours and FDB
/// entries with a remote on the VXLAN device).
fn counts(ns: &str, dev: &str) -> Result<(usize, usize, usize)> {
    let routes = cmd::ip(ns, &["route", "show", "proto", "84"])?.lines().count();
    let neigh = cmd::ip(ns, &["neigh", "show", "dev", dev, "nud", "permanent"])?.lines().count();
    let fdb = cmd::in_ns(ns, "bridge", &["fdb", "show", "dev", dev])?.lines().filter(|l| l.contains(" dst ")).count();
    Ok((routes, neigh, fdb))
}

fn timed(what: &str, f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    f().with_context(|| what.to_string())?;
    Ok(start.elapsed())
}

fn run_ip_batch(ns: &str, program: &str, file: &Path) -> Result<()> {
    cmd::in_ns(ns, program, &["-batch", &file.to_string_lossy()])?;
    Ok(())
}

/// Runs the agent binary's `apply --once`; returns the number of kernel changes it applied.
fn agent_apply_once(ns: &str, snapshot: &Path, log: &Path) -> Result<usize> {
    let bin = agent::binary()?;
    let stderr = std::fs::File::create(log)?;
    let out = cmd::ns_command(ns, &bin.to_string_lossy())
        .args(["apply", "--snapshot", &snapshot.to_string_lossy(), "--once"])
        .stderr(stderr)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "trellis-agent apply --once failed: {}\n{stdout}", out.status);
    let summary: serde_yaml::Value = serde_yaml::from_str(&stdout).context("apply --once summary")?;
    let applied = summary.get("applied").and_then(|a| a.as_mapping()).context("summary without `applied`")?;
    let kernel_changes = applied
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), Some("nat" | "cni" | "sysctl")))
        .filter_map(|(_, v)| v.as_u64())
        .sum::<u64>();
    Ok(kernel_changes as usize)
}

/// One no-op periodic pass as the agent logged it.
#[derive(Clone, Debug, PartialEq)]
pub struct NoOpPass {
    pub took: Duration,
    /// Stage name (`read`, `diff`, `desired`, ...) → milliseconds, from the pass's `stages=`.
    pub stages: Vec<(String, f64)>,
}

/// Every no-op periodic pass in a running agent's log ("pass done, nothing to change", trigger
/// Resync), in order; an error if a periodic pass changed something.
pub fn resync_passes(log: &str) -> Result<Vec<NoOpPass>> {
    let mut passes = Vec::new();
    for line in log.lines().filter(|l| l.contains("pass done") && l.contains("trigger=Resync")) {
        ensure!(line.contains("nothing to change"), "a periodic pass on a programmed node changed something: {line}");
        let took = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("took_ms="))
            .with_context(|| format!("no took_ms in {line:?}"))?;
        let ms: f64 = took.parse().with_context(|| format!("took_ms={took}"))?;
        passes.push(NoOpPass { took: Duration::from_secs_f64(ms / 1000.0), stages: stages(line) });
    }
    Ok(passes)
}

/// `stages=Stages { desired_ms: 0.4, read_ms: 22.0, ... }` → [("desired", 0.4), ("read", 22.0), ...].
fn stages(line: &str) -> Vec<(String, f64)> {
    let Some(rest) = line.split_once("stages=Stages {").map(|(_, rest)| rest) else { return Vec::new() };
    let body = rest.split('}').next().unwrap_or_default();
    body.split(',')
        .filter_map(|field| {
            let (name, value) = field.split_once(':')?;
            Some((name.trim().strip_suffix("_ms")?.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The median of each stage over `passes`, as "read 20.1, diff 4.2, desired 0.4 ms" (largest first).
fn stage_medians(passes: &[NoOpPass]) -> String {
    let mut by_stage: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for pass in passes {
        for (name, ms) in &pass.stages {
            by_stage.entry(name).or_default().push(*ms);
        }
    }
    let mut medians: Vec<(&str, f64)> = by_stage
        .into_iter()
        .map(|(name, mut values)| {
            values.sort_by(f64::total_cmp);
            (name, values[values.len() / 2])
        })
        .collect();
    medians.sort_by(|a, b| b.1.total_cmp(&a.1));
    let parts: Vec<String> = medians.iter().map(|(name, ms)| format!("{name} {ms:.1}")).collect();
    format!("{} ms", parts.join(", "))
}

/// Durations of `passes` no-op periodic passes inside a running agent (`trellis-agent apply`
/// with a resync every second) on the programmed namespace `ns`, as the agent logs them.
pub fn running_agent_passes(ns: &str, snapshot: &Path, log: &Path, passes: usize) -> Result<Vec<NoOpPass>> {
    let mut agent = AgentProcess::start(ns, "bench-node-0", snapshot, 1, log)?;
    let deadline = Instant::now() + Duration::from_secs(60 + 3 * passes as u64);
    loop {
        let times = resync_passes(&agent.log_text())?;
        if times.len() >= passes {
            agent.stop();
            return Ok(times[..passes].to_vec());
        }
        ensure!(agent.exited().is_none(), "the agent exited:\n{}", agent.log_text());
        ensure!(Instant::now() < deadline, "no {passes} periodic passes in time:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The measurements of one size.
struct Size {
    first: Vec<Duration>,
    first_ref: Vec<Duration>,
    noop: Vec<Duration>,
    noop_ref: Vec<Duration>,
}

fn measure(peers: u32, repetitions: usize, dir: &Path, tag: &str) -> Result<(Size, Option<Netns>)> {
    let mut snapshot = cluster_model::snapshot(peers, dir);
    snapshot.node.uplink_mtu = Some(1500);
    let path = dir.join(format!("snapshot-{peers}.yaml"));
    std::fs::write(&path, serde_yaml::to_string(&snapshot)?)?;
    let desired = trellis_agent::plan::plan(&snapshot, Capabilities::default())?;
    let dev = desired.vxlan.as_ref().context("the plan has no VXLAN device")?.name.clone();
    let b = batches(&desired)?;
    ensure!(b.peers == peers as usize, "planned {} FDB entries for {peers} peers", b.peers);
    let files = [("device", &b.device), ("ip", &b.ip), ("bridge", &b.bridge)]
        .map(|(name, text)| (dir.join(format!("{name}-{peers}.batch")), text.clone()));
    for (file, text) in &files {
        std::fs::write(file, text)?;
    }
    let [device, ip, bridge] = [&files[0].0, &files[1].0, &files[2].0];
    let want = (peers as usize + 1, peers as usize, peers as usize);
    // The device is one change for the agent, two lines (add, up) for `ip`.
    let total_changes = b.device.lines().count() - 1 + b.ip.lines().count() + b.bridge.lines().count();

    let mut size = Size { first: vec![], first_ref: vec![], noop: vec![], noop_ref: vec![] };
    let mut keep = None;
    let log = dir.join(format!("agent-{peers}.log"));
    for rep in 0..repetitions {
        // Interleaved, so both sides see the same machine load.
        let reference = fresh_node(&format!("{tag}-ref{peers}-{rep}"))?;
        let r = reference.name();
        size.first_ref.push(timed("reference first apply", || {
            run_ip_batch(r, "ip", device)?;
            run_ip_batch(r, "bridge", bridge)?;
            run_ip_batch(r, "ip", ip)
        })?);
        ensure!(counts(r, &dev)? == want, "reference programmed {:?}, want {want:?}", counts(r, &dev)?);
        size.noop_ref.push(timed("reference no-op", || {
            run_ip_batch(r, "bridge", bridge)?;
            run_ip_batch(r, "ip", ip)
        })?);
        drop(reference);

        let node = fresh_node(&format!("{tag}-tr{peers}-{rep}"))?;
        let n = node.name();
        let mut applied = 0;
        size.first.push(timed("trellis first apply", || {
            applied = agent_apply_once(n, &path, &log)?;
            Ok(())
        })?);
        ensure!(
            applied == total_changes,
            "the agent applied {applied} changes, the reference batch has {total_changes}"
        );
        ensure!(counts(n, &dev)? == want, "trellis programmed {:?}, want {want:?}", counts(n, &dev)?);
        let mut noop_applied = 0;
        size.noop.push(timed("trellis no-op", || {
            noop_applied = agent_apply_once(n, &path, &log)?;
            Ok(())
        })?);
        ensure!(noop_applied == 0, "the no-op apply changed {noop_applied} objects");
        keep = Some(node);
    }
    Ok((size, keep))
}

/// Runs the programming benchmark at `sizes` and adds its rows.
pub fn run(report: &mut Report, sizes: &[u32], repetitions: usize, in_loop_peers: u32, tag: &str) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("trellis-bench-prog-").tempdir()?;
    for &peers in sizes {
        let reps = if peers > 5_000 { 1 } else { repetitions };
        let (mut s, node) = measure(peers, reps, dir.path(), tag)?;
        let (t, r) = (median(&mut s.first), median(&mut s.first_ref));
        report.row(Row {
            figure: format!("first apply, {peers} VXLAN peers (median of {reps})"),
            trellis: ms(t),
            reference: format!("{} (`ip -batch` + `bridge -batch`)", ms(r)),
            ratio: Some(t.as_secs_f64() / r.as_secs_f64()),
            goal: "ratio ≤ 1.0".into(),
            met: Some(t <= r),
        });
        let (t, r) = (median(&mut s.noop), median(&mut s.noop_ref));
        report.row(Row {
            figure: format!("no-op resync, {peers} VXLAN peers (`apply --once` again)"),
            trellis: ms(t),
            reference: format!("{} (same batches again)", ms(r)),
            ratio: Some(t.as_secs_f64() / r.as_secs_f64()),
            goal: "ratio ≤ 1.0".into(),
            met: Some(t <= r),
        });
        if peers == in_loop_peers
            && let Some(node) = node
        {
            let log = dir.path().join(format!("agent-loop-{peers}.log"));
            let path = dir.path().join(format!("snapshot-{peers}.yaml"));
            // Three passes prove it works (smoke); ten make a median.
            let passes = if repetitions > 1 { 10 } else { 3 };
            let noop = running_agent_passes(node.name(), &path, &log, passes)?;
            let mut times: Vec<Duration> = noop.iter().map(|p| p.took).collect();
            let n = times.len();
            let (t, worst) = (median(&mut times), quantile(&mut times, 1.0));
            report.row(Row {
                figure: format!(
                    "no-op pass inside the running agent, {peers} peers (`trellis-agent apply`, periodic passes; median \
                     of {n}, from its log; median per stage)"
                ),
                trellis: format!("{} (max {}; {})", ms(t), ms(worst), stage_medians(&noop)),
                reference: String::new(),
                ratio: None,
                goal: "< 50 ms".into(),
                met: Some(t < Duration::from_millis(50)),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_no_op_passes_are_read_from_the_agent_log() {
        let log = "\
2026-12-01T19:13:08Z  INFO trellis_agent::reconcile: pass done trigger=Start counts={\"route+\": 3} failed=0 took_ms=120.5
2026-12-01T19:13:09Z DEBUG trellis_agent::reconcile: pass done, nothing to change trigger=Resync took_ms=12.25
2026-12-01T19:13:09Z DEBUG trellis_agent::reconcile: pass done, nothing to change trigger=KernelEvent took_ms=9
2026-12-01T19:13:10Z DEBUG trellis_agent::reconcile: pass done, nothing to change trigger=Resync took_ms=8 \
stages=Stages { desired_ms: 0.5, read_ms: 6.25, diff_ms: 1.0, apply_ms: 0.0, host_ms: 0.25 }
2026-12-01T19:13:11Z DEBUG trellis_agent::reconcile: pass done, nothing to change trigger=Resync took_ms=10 \
stages=Stages { desired_ms: 0.5, read_ms: 8.25, diff_ms: 1.0, apply_ms: 0.0, host_ms: 0.25 }
";
        let passes = resync_passes(log).unwrap();
        let took: Vec<Duration> = passes.iter().map(|p| p.took).collect();
        assert_eq!(took, vec![Duration::from_micros(12_250), Duration::from_millis(8), Duration::from_millis(10)]);
        assert!(passes[0].stages.is_empty(), "an older agent logs no stages");
        assert_eq!(passes[1].stages[1], ("read".to_string(), 6.25));
        assert_eq!(stage_medians(&passes[1..]), "read 8.2, diff 1.0, desired 0.5, host 0.2, apply 0.0 ms");
        let changed = "x INFO trellis_agent::reconcile: pass done trigger=Resync counts={} failed=0 took_ms=3\n";
        assert!(resync_passes(changed).is_err(), "a periodic pass that changed something is not a no-op");
        assert!(resync_passes("y DEBUG pass done, nothing to change trigger=Resync\n").is_err());
    }
}
