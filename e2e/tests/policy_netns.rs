//! Network policy with real packets, the agent's policy compiler and applier fed directly:
//! two nodes (network namespaces, direct routes), namespaces x, y, z with pods a, b, c each
//! (spread over both nodes, so pairs run on one node and across nodes), every pod serving TCP
//! 80, TCP 81 and UDP 80. Each case applies its policies on both nodes and compares the full
//! truth table (every ordered pair, every port) with the expectation; a failure prints both
//! matrices.

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use trellis_agent::kernel::netlink::host as interfaces;
use trellis_agent::policy::apply::{Outcome, PolicyTable, Reason};
use trellis_agent::policy::inputs::{Labels, Protocol};
use trellis_agent::policy::{LocalPod, NamedPort, Pod, PolicyInputs, compile};
use trellis_api::EncapMode::Never;
use trellis_api::GlobalNetworkPolicy;
use trellis_e2e::netns;
use trellis_e2e::policy::{self, Connection, Port, Target};
use trellis_e2e::topology::{DEFAULT_POOL, Topology, pool, v4};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

/// The lab: topology, targets, and per node its policy table.
struct Lab {
    topo: Topology,
    targets: Vec<Target>,
    /// Pod name (`x/a`) → node index.
    node_of: BTreeMap<String, usize>,
    labels: BTreeMap<String, Labels>,
    tables: Vec<PolicyTable>,
}

fn ns_of(name: &str) -> &str {
    &name[..1]
}

impl Lab {
    fn new(tag: &str) -> Result<Lab> {
        let mut topo = Topology::builder(tag).node("node1", 1).node("node2", 1).build()?;
        topo.apply_once_all(&[pool("default", DEFAULT_POOL, Never, Never, false)?])?;
        let (mut targets, mut node_of, mut labels) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
        for (i, ns) in NAMESPACES.iter().enumerate() {
            for (j, pod) in PODS.iter().enumerate() {
                let node = (i * 3 + j) % 2;
                let info = topo.add_pod(node, &format!("{ns}{pod}"))?;
                policy::serve(&info.netns)?;
                let name = format!("{ns}/{pod}");
                targets.push(Target { name: name.clone(), netns: info.netns.clone(), ip: v4(info.ip) });
                node_of.insert(name.clone(), node);
                labels.insert(name, Labels::from([("pod".to_string(), pod.to_string())]));
            }
        }
        Ok(Lab { topo, targets, node_of, labels, tables: vec![PolicyTable::new(), PolicyTable::new()] })
    }

    fn target(&self, name: &str) -> &Target {
        self.targets.iter().find(|t| t.name == name).expect("known pod")
    }

    /// What the cluster would tell node `node`'s agent.
    fn inputs(&self, node: usize, policies: &[NetworkPolicy], globals: &[GlobalNetworkPolicy]) -> Result<PolicyInputs> {
        let node_ns = self.topo.node(node).netns().to_string();
        let routes = netns::enter(&node_ns, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(interfaces::host_route_interfaces()))
        })??
        .context("host routes")?;
        let mut inputs = PolicyInputs {
            network_policies: policies.to_vec(),
            global_policies: globals.to_vec(),
            ..Default::default()
        };
        for ns in NAMESPACES {
            inputs.namespaces.insert(ns.to_string(), Labels::from([("ns".to_string(), ns.to_string())]));
        }
        for t in &self.targets {
            let (ns, name) = t.name.split_once('/').expect("ns/pod");
            inputs.pods.push(Pod {
                namespace: ns.to_string(),
                name: name.to_string(),
                labels: self.labels[&t.name].clone(),
                ips: vec![t.ip],
                ports: vec![
                    NamedPort { name: "serve-80-tcp".into(), protocol: Protocol::Tcp, port: 80 },
                    NamedPort { name: "serve-81-tcp".into(), protocol: Protocol::Tcp, port: 81 },
                    NamedPort { name: "serve-80-udp".into(), protocol: Protocol::Udp, port: 80 },
                ],
            });
            if self.node_of[&t.name] == node {
                let interface = routes.get(&t.ip).with_context(|| format!("no host route to {}", t.name))?.clone();
                inputs.local.push(LocalPod { namespace: ns.to_string(), name: name.to_string(), interface });
            }
        }
        Ok(inputs)
    }

    /// Compiles and applies on every node; returns each node's outcome.
    fn apply(&mut self, policies: &[NetworkPolicy], globals: &[GlobalNetworkPolicy]) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        for node in 0..2 {
            let compiled = compile(&self.inputs(node, policies, globals)?);
            ensure!(compiled.warnings.is_empty(), "compiler warnings: {:?}", compiled.warnings);
            let ns = self.topo.node(node).netns().to_string();
            let table = &mut self.tables[node];
            outcomes.push(netns::enter(&ns, || table.sync(&compiled.ruleset))??);
        }
        Ok(outcomes)
    }

    fn check(&self, case: &str, allowed: impl Fn(Port, &str, &str) -> bool) -> Result<()> {
        policy::check(&self.targets, case, allowed).with_context(|| self.topo.dump())
    }
}

fn np(yaml: &str) -> NetworkPolicy {
    serde_yaml::from_str(yaml).expect("policy YAML")
}

fn gnp(yaml: &str) -> GlobalNetworkPolicy {
    serde_yaml::from_str(yaml).expect("policy YAML")
}

#[test]
#[ignore = "root: network namespaces, CNI plugins, nftables"]
fn kubernetes_network_policy_truth_tables() -> Result<()> {
    let mut lab = Lab::new("npk")?;
    lab.apply(&[], &[])?;
    lab.check("no policy", |_, _, _| true)?;

    let deny_in = np("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}");
    lab.apply(&[deny_in], &[])?;
    lab.check("default deny ingress in x", |_, _, to| ns_of(to) != "x")?;

    let deny_out = np("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}");
    lab.apply(&[deny_out], &[])?;
    lab.check("default deny egress in x", |_, from, _| ns_of(from) != "x")?;

    let deny_both = np("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}");
    lab.apply(std::slice::from_ref(&deny_both), &[])?;
    lab.check("default deny both in x", |_, from, to| ns_of(from) != "x" && ns_of(to) != "x")?;

    let allow_all = np("metadata: {name: allow, namespace: x}\nspec: {podSelector: {}, ingress: [{}], egress: [{}]}");
    lab.apply(&[deny_both, allow_all], &[])?;
    lab.check("deny both plus allow-all rules (union)", |_, _, _| true)?;

    let selectors = np(r#"
metadata: {name: selectors, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
  - from: [{namespaceSelector: {matchLabels: {ns: z}}, podSelector: {matchLabels: {pod: c}}}]
"#);
    lab.apply(&[selectors], &[])?;
    lab.check("pod, namespace and combined selectors into x/a", |_, from, to| {
        to != "x/a" || from == "x/b" || ns_of(from) == "y" || from == "z/c"
    })?;

    // Everything in the pool except node2's block.
    let node2_block = lab.topo.node(1).blocks[0].to_string();
    let block = np(&format!(
        "metadata: {{name: block, namespace: y}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: {DEFAULT_POOL}, except: [{node2_block}]}}}}]}}]"
    ));
    lab.apply(&[block], &[])?;
    let node_of = lab.node_of.clone();
    lab.check("ipBlock with except (node2's pods excluded)", |_, from, to| ns_of(to) != "y" || node_of[from] == 0)?;

    let ports = np(r#"
metadata: {name: ports, namespace: y}
spec:
  podSelector: {}
  ingress: [{ports: [{port: serve-81-tcp}, {protocol: UDP, port: 80}]}]
"#);
    lab.apply(&[ports], &[])?;
    lab.check("named port and UDP port into y", |port, _, to| ns_of(to) != "y" || port != Port::Tcp(80))?;

    let range = np(r#"
metadata: {name: range, namespace: z}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 81, endPort: 90}]
  - to: [{namespaceSelector: {matchLabels: {ns: x}}}]
    ports: [{port: serve-80-udp, protocol: UDP}]
"#);
    lab.apply(&[range], &[])?;
    lab.check("endPort range and named egress port from z", |port, from, to| {
        ns_of(from) != "z" || port == Port::Tcp(81) || (port == Port::Udp(80) && ns_of(to) == "x")
    })?;

    lab.apply(&[], &[])?;
    lab.check("every policy removed", |_, _, _| true)?;
    lab.topo.finish()?;
    Ok(())
}

#[test]
#[ignore = "root: network namespaces, CNI plugins, nftables"]
fn policy_changes_keep_allowed_connections_and_cut_denied_ones() -> Result<()> {
    let mut lab = Lab::new("npc")?;
    lab.apply(&[], &[])?;
    let mut to_b = Connection::open(lab.target("x/a"), lab.target("y/b"))?;
    let mut to_c = Connection::open(lab.target("x/a"), lab.target("y/c"))?;
    ensure!(to_b.echoes("before") && to_c.echoes("before"), "open connections do not echo without policy");

    // y/c: ingress only from namespace z. The open connection to y/b stays, the one to y/c stops.
    let only_z = np(r#"
metadata: {name: only-z, namespace: y}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}]}]
"#);
    lab.apply(&[only_z], &[])?;
    ensure!(to_b.echoes("allowed"), "an allowed open connection broke when a policy was added");
    ensure!(!to_c.echoes("denied"), "a newly denied open connection still works");
    lab.check("policy added", |_, from, to| to != "y/c" || ns_of(from) == "z")?;

    // Changed: y/c now also from pods labelled role=client anywhere; nobody has it yet.
    let clients = np(r#"
metadata: {name: only-z, namespace: y}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: z}}}]
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]
"#);
    lab.apply(std::slice::from_ref(&clients), &[])?;
    lab.check("policy changed", |_, from, to| to != "y/c" || ns_of(from) == "z")?;

    // Relabelling x/b is a set element change on every node, nothing else.
    lab.labels.get_mut("x/b").expect("pod").insert("role".into(), "client".into());
    let outcomes = lab.apply(std::slice::from_ref(&clients), &[])?;
    let node_of_c = lab.node_of["y/c"];
    ensure!(
        outcomes[node_of_c] == Outcome::Elements { added: 1, deleted: 0 },
        "relabelling was not one element update: {outcomes:?}"
    );
    ensure!(to_b.echoes("still"), "the open connection to y/b broke");
    lab.check("x/b relabelled role=client", |_, from, to| to != "y/c" || ns_of(from) == "z" || from == "x/b")?;

    lab.apply(&[], &[])?;
    lab.check("policy removed", |_, _, _| true)?;
    ensure!(to_b.echoes("after"), "the open connection to y/b broke when the policy went");
    lab.topo.finish()?;
    Ok(())
}

#[test]
#[ignore = "root: network namespaces, CNI plugins, nftables"]
fn global_policy_default_deny_allow_pass_and_drift_repair() -> Result<()> {
    let mut lab = Lab::new("npg")?;
    let allow_dns_egress = gnp(r#"
metadata: {name: allow-dns-egress}
spec:
  order: 10
  selector: all()
  types: [Egress]
  egress: [{action: Allow, protocol: UDP, destination: {namespaceSelector: ns == "z", ports: [80]}}]
"#);
    let allow_dns_ingress = gnp(r#"
metadata: {name: allow-dns-ingress}
spec:
  order: 10
  selector: projectcalico.org/namespace == "z"
  ingress: [{action: Allow, protocol: UDP, destination: {ports: [80]}}]
"#);
    let default_deny =
        gnp("metadata: {name: default-deny}\nspec: {order: 100, selector: all(), types: [Ingress, Egress]}");
    let mut globals = vec![allow_dns_egress, allow_dns_ingress, default_deny];
    lab.apply(&[], &globals)?;
    lab.check("global default deny with a DNS-style allow (UDP 80 into z)", |port, _, to| {
        port == Port::Udp(80) && ns_of(to) == "z"
    })?;

    // x and y pass to Kubernetes policy, where x accepts ingress only from y.
    globals.push(gnp(r#"
metadata: {name: x-y-to-kubernetes}
spec:
  order: 5
  selector: projectcalico.org/namespace in {"x", "y"}
  types: [Ingress, Egress]
  ingress: [{action: Log}, {action: Pass}]
  egress: [{action: Pass}]
"#));
    let from_y = np(r#"
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
"#);
    lab.apply(std::slice::from_ref(&from_y), &globals)?;
    let with_pass = |port: Port, from: &str, to: &str| match (ns_of(from), ns_of(to)) {
        (_, "z") => port == Port::Udp(80),
        ("z", _) => false,
        (_, "x") => ns_of(from) == "y",
        _ => true,
    };
    lab.check("Pass hands x and y to Kubernetes policy", with_pass)?;

    // Drift: the table deleted, then a base chain flushed, by hand; the next sync repairs it.
    let node1 = lab.topo.node(0).netns().to_string();
    let node2 = lab.topo.node(1).netns().to_string();
    lab.topo.node(0).ns.exec("nft", &["delete", "table", "inet", "trellis-policy"])?;
    lab.topo.node(1).ns.exec("nft", &["flush", "chain", "inet", "trellis-policy", "forward"])?;
    let probe = lab.target("y/a").clone();
    ensure!(
        policy::reachable(&probe.netns, lab.target("z/b").ip, Port::Tcp(80))
            && policy::reachable(&probe.netns, lab.target("z/a").ip, Port::Tcp(80)),
        "removing the policy by hand did not open anything (test is not observing the table)"
    );
    let outcomes = lab.apply(std::slice::from_ref(&from_y), &globals)?;
    ensure!(
        outcomes.iter().all(|o| *o == Outcome::Replaced(Reason::Drift)),
        "drift on {node1} and {node2} not repaired by replacement: {outcomes:?}"
    );
    lab.check("after drift repair", with_pass)?;

    // Calico's named ports and negations: into y only the port named serve-81-tcp; out of z
    // only TCP, to pods not labelled pod=a, on any port but the peer's serve-81-tcp.
    let named = [
        gnp(r#"
metadata: {name: into-y}
spec:
  selector: projectcalico.org/namespace == "y"
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [serve-81-tcp]}}]
"#),
        gnp(r#"
metadata: {name: out-of-z}
spec:
  selector: projectcalico.org/namespace == "z"
  egress: [{action: Allow, protocol: TCP, destination: {notSelector: pod == "a", notPorts: [serve-81-tcp]}}]
"#),
    ];
    lab.apply(&[], &named)?;
    lab.check("global named port, notSelector and notPorts", |port, from, to| {
        (ns_of(to) != "y" || port == Port::Tcp(81))
            && (ns_of(from) != "z" || (port == Port::Tcp(80) && !to.ends_with("/a")))
    })?;
    lab.topo.finish()?;
    Ok(())
}
