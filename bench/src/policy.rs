//! Policy programming: a cluster of `pods` pods in 20 namespaces and `policies` Kubernetes
//! NetworkPolicies, spread over `nodes` nodes; each node is a network namespace whose
//! `inet trellis-policy` table is programmed by the agent's own compiler and applier
//! ([`compile`] + [`PolicyTable::sync`], the code `trellis-agent run` runs per pass).
//!
//! Measured per change (a pod relabelled, a pod added, a policy added): for every node the
//! time from the changed inputs to the table in its kernel (compile, then the applier's sync:
//! its drift check listing, `nft -f`, the listing it keeps) — that it is enforced is then checked
//! on the table content: the kernel's listing must hold exactly the sets' elements, map entries
//! and chains the compiler wanted. Nodes run one after another
//! (on a cluster each node is its own machine), so "every node" is the slowest node. Not
//! included: the API server's watch latency and the enforcer's 200 ms debounce.
//!
//! Reference: `nft -f` of the very same script (the replacing script or the element update)
//! into a namespace holding the same previous table: the kernel's own cost of the transaction.
//! Transaction size: the script's bytes and lines, and the kernel's notifications for it
//! (`nft monitor` lines: one per table, set, chain, rule, element added or deleted).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};
use trellis_agent::policy::apply::{self, PolicyTable};
use trellis_agent::policy::inputs::{Labels, Protocol};
use trellis_agent::policy::ruleset::Update;
use trellis_agent::policy::{LocalPod, NamedPort, Pod, PolicyInputs, Ruleset, compile};
use trellis_e2e::netns::{self, Netns};

use crate::report::{Report, Row, median, ms};

const NAMESPACES: usize = 20;
const APPS: usize = 50;

/// Pod `i` of a cluster of `nodes` nodes: on node `i % nodes`, namespaces and apps spread so
/// that every node has pods of every namespace.
fn pod(i: usize, nodes: usize, labels: &[(&str, String)]) -> Pod {
    let j = i / nodes;
    let mut all = Labels::from([
        ("app".to_string(), format!("app-{}", (i * 7 + j) % APPS)),
        ("tier".to_string(), format!("t{}", i % 3)),
    ]);
    all.extend(labels.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Pod {
        namespace: format!("ns-{}", j % NAMESPACES),
        name: format!("pod-{i}"),
        labels: all,
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 1) as u8))],
        ports: vec![NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 }],
    }
}

/// Policy `k`: in namespace `k % 20`; the first 20 isolate every pod of their namespace and
/// admit only pods labelled `role: monitor` (from anywhere), the others allow into pods of one
/// app from another app (some across namespaces by namespace selector), on a port, a named port,
/// or from an ipBlock with except.
fn policy(k: usize) -> Result<NetworkPolicy> {
    let ns = format!("ns-{}", k % NAMESPACES);
    let value = if k < NAMESPACES {
        json!({"metadata": {"name": format!("deny-{k}"), "namespace": ns},
               "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "monitor"}}}]}]}})
    } else {
        let peer = match k % 4 {
            0 => json!({"podSelector": {"matchLabels": {"app": format!("app-{}", (k + 1) % APPS)}}}),
            1 => {
                json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": format!("ns-{}", (k + 3) % NAMESPACES)}},
                        "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["t0", "t1"]}]}})
            }
            2 => json!({"ipBlock": {"cidr": "10.244.0.0/16", "except": [format!("10.244.{}.0/24", k % 4)]}}),
            _ => {
                json!({"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": format!("app-{}", (k + 7) % APPS)}}})
            }
        };
        let port = if k.is_multiple_of(7) { json!("http") } else { json!(80 + (k % 10)) };
        json!({"metadata": {"name": format!("allow-{k}"), "namespace": ns},
               "spec": {"podSelector": {"matchLabels": {"app": format!("app-{}", k % APPS)}},
                        "ingress": [{"from": [peer], "ports": [{"protocol": "TCP", "port": port}]}]}})
    };
    serde_json::from_value(value).context("policy")
}

/// The cluster's inputs as node `node` of `nodes` sees them (its pods: `i % nodes == node`,
/// behind interfaces that need not exist: the table only names them).
fn inputs(pods: &[Pod], policies: &[NetworkPolicy], node: usize, nodes: usize) -> PolicyInputs {
    let mut inputs = PolicyInputs { pods: pods.to_vec(), network_policies: policies.to_vec(), ..Default::default() };
    for n in 0..NAMESPACES {
        inputs.namespaces.insert(format!("ns-{n}"), Labels::new());
    }
    for (i, p) in pods.iter().enumerate().filter(|(i, _)| i % nodes == node) {
        inputs.local.push(LocalPod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            interface: format!("pod{i}"),
        });
    }
    inputs
}

/// (set and map elements, chains) the compiler wants.
fn wanted(r: &Ruleset) -> (usize, usize) {
    let elements = r.sets.values().map(|s| s.elements.len()).sum::<usize>() + r.ingress.len() + r.egress.len();
    (elements, r.chains.len())
}

/// (set and map elements, chains other than the base chains) the kernel lists.
fn listed(listing: &Value) -> (usize, usize) {
    let items = listing.get("nftables").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut elements = 0;
    let mut chains = 0;
    for item in &items {
        for kind in ["set", "map"] {
            if let Some(set) = item.get(kind) {
                elements += set.get("elem").and_then(Value::as_array).map_or(0, Vec::len);
            }
        }
        if let Some(chain) = item.get("chain")
            && chain.get("hook").is_none()
        {
            chains += 1;
        }
    }
    (elements, chains)
}

/// Whether the kernel's table (in the calling thread's namespace) holds what `r` wants.
fn enforced(r: &Ruleset) -> Result<()> {
    let listing = apply::listing()?.context("no table")?;
    let (got, want) = (listed(&listing), wanted(r));
    ensure!(got == want, "kernel lists (elements, chains) {got:?}, the compiler wanted {want:?}");
    Ok(())
}

/// Runs `nft -f -` with `script` in namespace `ns`.
fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("nft")?;
    child.stdin.take().context("stdin")?.write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "nft -f in {ns}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Counts the kernel's nftables notifications in `ns` while `f` runs.
fn notifications(ns: &str, f: &mut impl FnMut() -> Result<()>) -> Result<usize> {
    let mut monitor = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("nft monitor")?;
    std::thread::sleep(Duration::from_millis(300));
    let result = f();
    std::thread::sleep(Duration::from_millis(500));
    let _ = monitor.kill();
    let out = monitor.wait_with_output()?;
    result?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).count())
}

/// One node: its namespace and table.
struct Node {
    ns: Netns,
    table: PolicyTable,
    ruleset: Ruleset,
}

/// A change's measurement over every node.
struct Change {
    name: &'static str,
    /// Per node: compile + sync + check.
    per_node: Vec<Duration>,
    /// Node 0: of it the compiler's share.
    compile: Duration,
    /// The reference (`nft -f` of node 0's script) and node 0's script.
    reference: Duration,
    script: String,
    kind: &'static str,
    notifications: usize,
}

/// Applies `pods`/`policies` to every node, measuring each; node 0's transaction is also
/// replayed into the reference namespace (which holds node 0's previous table).
fn change(
    name: &'static str,
    nodes: &mut [Node],
    reference: &Netns,
    pods: &[Pod],
    policies: &[NetworkPolicy],
) -> Result<Change> {
    let count = nodes.len();
    let mut per_node = Vec::new();
    let mut first = None;
    for (i, node) in nodes.iter_mut().enumerate() {
        let before = node.ruleset.clone();
        let local = inputs(pods, policies, i, count);
        let table = &mut node.table;
        let mut took = Duration::ZERO;
        let mut compiled = Duration::ZERO;
        let mut desired = Ruleset::default();
        let mut measure = || -> Result<()> {
            let start = Instant::now();
            desired = compile(&local).ruleset;
            compiled = start.elapsed();
            netns::enter(node.ns.name(), || -> Result<()> {
                table.sync(&desired)?;
                took = start.elapsed();
                enforced(&desired)
            })??;
            Ok(())
        };
        let notified =
            if i == 0 { Some(notifications(node.ns.name(), &mut measure)?) } else { measure().map(|_| None)? };
        per_node.push(took);
        if let Some(n) = notified {
            first = Some((before, desired.clone(), n, compiled));
        }
        node.ruleset = desired;
    }
    let (before, after, notifications, compile) = first.context("no node")?;
    let (kind, script) = match after.update_from(&before) {
        Update::None => ("unchanged", String::new()),
        Update::Elements { script, .. } => ("element update", script),
        Update::Replace(script) => ("table replaced", script),
    };
    nft(reference.name(), &before.replace_script())?;
    let start = Instant::now();
    if !script.is_empty() {
        nft(reference.name(), &script)?;
    }
    let reference_time = start.elapsed();
    netns::enter(reference.name(), || enforced(&after))??;
    Ok(Change { name, per_node, compile, reference: reference_time, script, kind, notifications })
}

/// Runs the benchmark: `pods` pods, `policies` policies, `nodes` nodes, `reps` repetitions
/// of each change.
pub fn run(report: &mut Report, pods: usize, policies: usize, nodes: usize, reps: usize, tag: &str) -> Result<()> {
    if pods < nodes * 2 || policies <= NAMESPACES {
        bail!("need at least two pods per node and more than {NAMESPACES} policies");
    }
    let mut cluster: Vec<Pod> = (0..pods).map(|i| pod(i, nodes, &[])).collect();
    let mut rules: Vec<NetworkPolicy> = (0..policies).map(policy).collect::<Result<_>>()?;
    let mut node_list = Vec::new();
    for i in 0..nodes {
        node_list.push(Node {
            ns: Netns::create(&format!("tr{tag}-pol{i}"))?,
            table: PolicyTable::new(),
            ruleset: Ruleset::default(),
        });
    }
    let reference = Netns::create(&format!("tr{tag}-polref"))?;
    let first = change("program from scratch", &mut node_list, &reference, &cluster, &rules)?;
    let mut results: BTreeMap<&'static str, Vec<Change>> = BTreeMap::new();
    for rep in 0..reps {
        // A pod labelled role=monitor: one element into the monitor set of every node.
        let moved = (rep * 37 + 5) % pods;
        cluster[moved] = pod(moved, nodes, &[("role", "monitor".to_string())]);
        let c = change("pod relabelled", &mut node_list, &reference, &cluster, &rules)?;
        results.entry(c.name).or_default().push(c);
        // A pod added (its address into the sets that select it, on its node its interface
        // into the maps).
        let i = cluster.len();
        cluster.push(pod(i, nodes, &[("role", "monitor".to_string())]));
        let c = change("pod added", &mut node_list, &reference, &cluster, &rules)?;
        results.entry(c.name).or_default().push(c);
        // A policy added for every pod of a namespace (pods of it run on every node): new
        // chains, so every node replaces its table atomically.
        rules.push(serde_json::from_value(json!({
            "metadata": {"name": format!("added-{rep}"), "namespace": format!("ns-{}", rep % NAMESPACES)},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": format!("app-{rep}")}}}],
                                                     "ports": [{"port": 443}]}]}
        }))?);
        let c = change("policy added", &mut node_list, &reference, &cluster, &rules)?;
        results.entry(c.name).or_default().push(c);
    }

    let size = format!("{} pods, {} policies, {nodes} nodes", pods, policies);
    let mut sizes = String::from(
        "| change | transaction (node 0) | script bytes | script lines | kernel notifications |\n|---|---|---|---|---|\n",
    );
    let mut rows = vec![("program from scratch", vec![first])];
    rows.extend(results);
    for (name, changes) in &mut rows {
        let mut slowest: Vec<Duration> =
            changes.iter().map(|c| c.per_node.iter().copied().max().unwrap_or_default()).collect();
        let mut node0: Vec<Duration> = changes.iter().map(|c| c.per_node[0]).collect();
        let mut reference: Vec<Duration> = changes.iter().map(|c| c.reference).collect();
        let mut compiling: Vec<Duration> = changes.iter().map(|c| c.compile).collect();
        let (slowest, node0, reference, compiling) =
            (median(&mut slowest), median(&mut node0), median(&mut reference), median(&mut compiling));
        report.row(Row {
            figure: format!("policy: {name} → enforced on every node ({size})"),
            trellis: format!("{} (node 0: {}, compiling {})", ms(slowest), ms(node0), ms(compiling)),
            reference: format!("{} (nft -f, node 0's script)", ms(reference)),
            ratio: (reference > Duration::ZERO).then(|| node0.as_secs_f64() / reference.as_secs_f64()),
            goal: "–".into(),
            met: None,
        });
        let c = &changes[changes.len() - 1];
        sizes += &format!(
            "| {name} | {} | {} | {} | {} |\n",
            c.kind,
            c.script.len(),
            c.script.lines().count(),
            c.notifications
        );
    }
    let wanted0 = wanted(&node_list[0].ruleset);
    sizes += &format!(
        "\nNode 0's table: {} set and map elements, {} chains. Times: compile + the applier's sync (a \
         listing, `nft -f`, a listing), per node, nodes one after another; median of {reps} repetition(s).\n",
        wanted0.0, wanted0.1
    );
    report.section(&format!("Policy programming ({size})"), sizes);
    Ok(())
}
