//! The compiler's semantics, checked by evaluating its ruleset on packets with a small model
//! of what nftables does with the rules it renders (the real kernel is e2e/tests/policy*.rs).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use trellis_api::GlobalNetworkPolicy;

use super::compile::compile;
use super::inputs::{LocalPod, NamedPort, Pod, PolicyInputs, Protocol};
use super::rule::{Cond, End, Family, Verdict};
use super::ruleset::Ruleset;

/// A packet in the original direction of a new connection.
#[derive(Clone, Copy, Debug)]
struct Packet<'a> {
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    sport: u16,
    dport: u16,
    iif: &'a str,
    oif: &'a str,
}

fn cond_holds(r: &Ruleset, c: &Cond, p: &Packet) -> bool {
    let addr = |end: &End| if *end == End::Source { p.src } else { p.dst };
    let port = |end: &End| if *end == End::Source { p.sport } else { p.dport };
    match c {
        Cond::InSet { end, family, set, negated } => {
            Family::of_addr(&addr(end)) == *family && r.sets[set].elements.contains(&addr(end).to_string()) != *negated
        }
        Cond::Nets { end, family, nets, negated } => {
            Family::of_addr(&addr(end)) == *family && nets.iter().any(|n| n.contains(&addr(end))) != *negated
        }
        Cond::Protocol(proto) => p.protocol == *proto,
        Cond::NotProtocol(proto) => p.protocol != *proto,
        Cond::Ports { end, ranges, negated } => {
            ranges.iter().any(|r| (r.first..=r.last).contains(&port(end))) != *negated
        }
        Cond::AddrProtoPort { end, family, set, negated } => {
            Family::of_addr(&addr(end)) == *family
                && r.sets[set].elements.contains(&format!("{} . {} . {}", addr(end), p.protocol.nft(), port(end)))
                    != *negated
        }
    }
}

/// Runs a chain as nft would: `Some(true)` return (allowed by this stage), `Some(false)` drop.
fn run_chain(r: &Ruleset, chain: &str, p: &Packet) -> bool {
    for line in &r.chains[chain] {
        if line.conds.iter().all(|c| cond_holds(r, c, p)) {
            match &line.verdict {
                Verdict::Allow => return true,
                Verdict::Drop => return false,
                Verdict::Log(_) => {}
                Verdict::Goto(next) => return run_chain(r, next, p),
            }
        }
    }
    true
}

/// The forward base chain for a new connection.
fn forwarded(r: &Ruleset, p: &Packet) -> bool {
    r.egress.get(p.iif).is_none_or(|c| run_chain(r, c, p)) && r.ingress.get(p.oif).is_none_or(|c| run_chain(r, c, p))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Namespaces x, y, z with pods a, b, c each (pod label `pod`, namespace label `ns`); pods of x
/// are on this node behind `veth-x-a` ...; pod addresses 10.0.<ns>.<pod>. Every pod has a
/// container port `serve-80-tcp` (80/TCP), `serve-81-tcp` (81/TCP), `serve-80-udp` (80/UDP).
fn cluster(policies: Vec<NetworkPolicy>, globals: Vec<GlobalNetworkPolicy>) -> PolicyInputs {
    let mut inputs = PolicyInputs { network_policies: policies, global_policies: globals, ..Default::default() };
    for (i, ns) in ["x", "y", "z"].iter().enumerate() {
        inputs.namespaces.insert(ns.to_string(), BTreeMap::from([("ns".to_string(), ns.to_string())]));
        for (j, pod) in ["a", "b", "c"].iter().enumerate() {
            inputs.pods.push(Pod {
                namespace: ns.to_string(),
                name: pod.to_string(),
                labels: BTreeMap::from([("pod".to_string(), pod.to_string())]),
                ips: vec![ip(&format!("10.0.{}.{}", i + 1, j + 1))],
                ports: vec![
                    NamedPort { name: "serve-80-tcp".into(), protocol: Protocol::Tcp, port: 80 },
                    NamedPort { name: "serve-81-tcp".into(), protocol: Protocol::Tcp, port: 81 },
                    NamedPort { name: "serve-80-udp".into(), protocol: Protocol::Udp, port: 80 },
                ],
            });
            inputs.local.push(LocalPod {
                namespace: ns.to_string(),
                name: pod.to_string(),
                interface: format!("veth-{ns}-{pod}"),
            });
        }
    }
    inputs
}

const PODS: [&str; 9] = ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"];

fn addr_of(pod: &str) -> IpAddr {
    let i = PODS.iter().position(|p| *p == pod).unwrap();
    ip(&format!("10.0.{}.{}", i / 3 + 1, i % 3 + 1))
}

/// The truth table "from → to" on one port as a printable matrix.
fn matrix(r: &Ruleset, protocol: Protocol, port: u16) -> String {
    let mut out = String::from("from\\to");
    for to in PODS {
        out += &format!(" {to}");
    }
    for from in PODS {
        out += &format!("\n{from}   ");
        for to in PODS {
            let (iif, oif) = (format!("veth-{}", from.replace('/', "-")), format!("veth-{}", to.replace('/', "-")));
            let p = Packet {
                src: addr_of(from),
                dst: addr_of(to),
                protocol,
                sport: 40000,
                dport: port,
                iif: &iif,
                oif: &oif,
            };
            out += if from == to {
                "   ."
            } else if forwarded(r, &p) {
                "   ✓"
            } else {
                "   ✗"
            };
        }
    }
    out
}

/// Expected matrix from a predicate (from, to) → allowed.
fn expected(allowed: impl Fn(&str, &str) -> bool) -> String {
    let mut out = String::from("from\\to");
    for to in PODS {
        out += &format!(" {to}");
    }
    for from in PODS {
        out += &format!("\n{from}   ");
        for to in PODS {
            out += if from == to {
                "   ."
            } else if allowed(from, to) {
                "   ✓"
            } else {
                "   ✗"
            };
        }
    }
    out
}

fn np(yaml: &str) -> NetworkPolicy {
    serde_yaml::from_str(yaml).unwrap()
}

fn gnp(yaml: &str) -> GlobalNetworkPolicy {
    serde_yaml::from_str(yaml).unwrap()
}

fn check(inputs: &PolicyInputs, protocol: Protocol, port: u16, allowed: impl Fn(&str, &str) -> bool) {
    let compiled = compile(inputs);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    let (got, want) = (matrix(&compiled.ruleset, protocol, port), expected(allowed));
    assert_eq!(got, want, "\n{protocol:?}/{port}: got\n{got}\nwanted\n{want}");
}

#[test]
fn no_policy_allows_everything() {
    let inputs = cluster(vec![], vec![]);
    let r = compile(&inputs).ruleset;
    assert!(r.chains.is_empty() && r.ingress.is_empty() && r.egress.is_empty());
    check(&inputs, Protocol::Tcp, 80, |_, _| true);
}

#[test]
fn default_deny_ingress_isolates_only_its_namespace() {
    let inputs = cluster(vec![np("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}}")], vec![]);
    check(&inputs, Protocol::Tcp, 80, |_, to| !to.starts_with("x/"));
    check(&inputs, Protocol::Udp, 80, |_, to| !to.starts_with("x/"));
}

#[test]
fn default_deny_egress_and_both() {
    let egress = np("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Egress]}");
    check(&cluster(vec![egress], vec![]), Protocol::Tcp, 81, |from, _| !from.starts_with("x/"));
    let both = np("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}");
    check(&cluster(vec![both], vec![]), Protocol::Tcp, 81, |from, to| !from.starts_with("x/") && !to.starts_with("x/"));
}

#[test]
fn allow_all_rule_after_default_deny_is_a_union() {
    let deny = np("metadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}");
    let allow = np("metadata: {name: allow, namespace: x}\nspec: {podSelector: {}, ingress: [{}], egress: [{}]}");
    check(&cluster(vec![deny, allow], vec![]), Protocol::Udp, 80, |_, _| true);
}

#[test]
fn pod_namespace_and_combined_selectors() {
    // Into x/a: from pod b of x; from every pod of namespace y; from pod c of namespace z only.
    let p = np(r#"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [z]}]}, podSelector: {matchLabels: {pod: c}}}]
"#);
    check(&cluster(vec![p], vec![]), Protocol::Tcp, 80, |from, to| {
        to != "x/a" || from == "x/b" || from.starts_with("y/") || from == "z/c"
    });
}

#[test]
fn ports_protocols_named_ports_and_ranges() {
    let p = np(r#"
metadata: {name: p, namespace: y}
spec:
  podSelector: {}
  ingress:
  - ports: [{port: serve-81-tcp}, {protocol: UDP, port: 80}]
"#);
    let inputs = cluster(vec![p], vec![]);
    check(&inputs, Protocol::Tcp, 80, |_, to| !to.starts_with("y/"));
    check(&inputs, Protocol::Tcp, 81, |_, _| true);
    check(&inputs, Protocol::Udp, 80, |_, _| true);
    let range = np(r#"
metadata: {name: p, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: 81, endPort: 90}]
  - to: [{namespaceSelector: {matchLabels: {ns: z}}}]
    ports: [{port: serve-80-udp, protocol: UDP}]
"#);
    let inputs = cluster(vec![range], vec![]);
    check(&inputs, Protocol::Tcp, 80, |from, _| !from.starts_with("y/"));
    check(&inputs, Protocol::Tcp, 81, |_, _| true);
    check(&inputs, Protocol::Udp, 80, |from, to| !from.starts_with("y/") || to.starts_with("z/"));
}

#[test]
fn ip_block_with_except() {
    // 10.0.0.0/16 covers every pod; except z's /24 and y/b.
    let p = np(r#"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.3.0/24, 10.0.2.2/32]}}]
"#);
    check(&cluster(vec![p], vec![]), Protocol::Tcp, 80, |from, to| {
        !to.starts_with("x/") || !(from.starts_with("z/") || from == "y/b")
    });
}

#[test]
fn equal_policies_share_chains_and_pods_are_set_elements() {
    let p = np(r#"
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
"#);
    let inputs = cluster(vec![p], vec![]);
    let before = compile(&inputs).ruleset;
    assert_eq!(before.chains.len(), 1, "the three pods of x share one chain: {:?}", before.chains.keys());
    assert_eq!(before.ingress.len(), 3);
    // A new pod b in x (another node) only adds a set element.
    let mut grown = inputs.clone();
    grown.pods.push(Pod {
        namespace: "x".into(),
        name: "b2".into(),
        labels: BTreeMap::from([("pod".into(), "b".into())]),
        ips: vec![ip("10.0.9.9")],
        ports: vec![],
    });
    let after = compile(&grown).ruleset;
    match after.update_from(&before) {
        super::ruleset::Update::Elements { added, deleted, script } => {
            assert_eq!((added, deleted), (1, 0));
            assert!(script.contains("10.0.9.9"), "{script}");
        }
        other => panic!("expected an element update, got {other:?}"),
    }
}

#[test]
fn global_default_deny_with_dns_allow_then_pass_to_kubernetes() {
    // Egress of every pod: DNS (UDP 53) to z/a allowed, everything in y passed to Kubernetes
    // policy, the rest denied by the end of the global policies.
    let dns = gnp(r#"
metadata: {name: allow-dns}
spec:
  order: 100
  selector: all()
  types: [Egress]
  egress:
  - action: Allow
    protocol: UDP
    destination: {selector: pod == "a" && projectcalico.org/namespace == "z", ports: [53]}
"#);
    let pass = gnp(r#"
metadata: {name: y-to-kubernetes}
spec:
  order: 10
  selector: projectcalico.org/namespace == "y"
  types: [Egress]
  egress: [{action: Log}, {action: Pass}]
"#);
    let deny = gnp("metadata: {name: default-deny}\nspec: {selector: all(), types: [Ingress, Egress]}");
    // Kubernetes: y/a may send to x only.
    let k8s = np(r#"
metadata: {name: ya, namespace: y}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}]}]
"#);
    let inputs = cluster(vec![k8s], vec![dns, pass, deny]);
    // Ingress is denied for everyone by default-deny; egress decides nothing here.
    check(&inputs, Protocol::Tcp, 80, |_, _| false);
    let r = compile(&inputs).ruleset;
    let egress_ok = |from: &str, to: &str, protocol: Protocol, port: u16| {
        let iif = format!("veth-{}", from.replace('/', "-"));
        let p = Packet {
            src: addr_of(from),
            dst: addr_of(to),
            protocol,
            sport: 40000,
            dport: port,
            iif: &iif,
            oif: "uplink",
        };
        forwarded(&r, &p)
    };
    assert!(egress_ok("x/b", "z/a", Protocol::Udp, 53), "DNS allowed");
    assert!(!egress_ok("x/b", "z/a", Protocol::Udp, 54));
    assert!(!egress_ok("x/b", "z/b", Protocol::Udp, 53), "DNS only to z/a");
    assert!(egress_ok("y/a", "x/c", Protocol::Tcp, 80), "passed, Kubernetes allows y/a → x");
    assert!(!egress_ok("y/a", "z/c", Protocol::Tcp, 80), "passed, Kubernetes isolates y/a");
    assert!(egress_ok("y/b", "z/c", Protocol::Tcp, 80), "passed, no Kubernetes policy selects y/b");
    // Pass comes before allow-dns (order 10 < 100): y/a's DNS goes to Kubernetes, which denies.
    assert!(!egress_ok("y/a", "z/a", Protocol::Udp, 53));
    assert!(
        r.chains.values().flatten().any(|l| matches!(&l.verdict, Verdict::Log(p) if p.contains("y-to-kubernetes")))
    );
}

#[test]
fn broken_selectors_are_warnings_not_panics() {
    let bad = gnp("metadata: {name: bad}\nspec: {selector: 'a ==', types: [Ingress]}");
    let p = np(r#"
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: a, operator: Gt, values: ["1"]}]}
"#);
    let compiled = compile(&cluster(vec![p], vec![bad]));
    assert_eq!(compiled.warnings.len(), 2, "{:?}", compiled.warnings);
    assert!(compiled.ruleset.ingress.is_empty());
}

#[test]
fn global_named_ports_resolve_in_the_policed_pod_and_in_the_peers() {
    // Into y: only the port named serve-81-tcp. Out of z: only serve-80-tcp of pods in x.
    let into_y = gnp(r#"
metadata: {name: into-y}
spec:
  selector: projectcalico.org/namespace == "y"
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [serve-81-tcp]}}]
"#);
    let out_of_z = gnp(r#"
metadata: {name: out-of-z}
spec:
  selector: projectcalico.org/namespace == "z"
  egress:
  - action: Allow
    protocol: TCP
    destination: {selector: projectcalico.org/namespace == "x", ports: [serve-80-tcp, "1000:1001"]}
"#);
    let inputs = cluster(vec![], vec![into_y, out_of_z]);
    check(&inputs, Protocol::Tcp, 80, |from, to| {
        !to.starts_with("y/") && (!from.starts_with("z/") || to.starts_with("x/"))
    });
    check(&inputs, Protocol::Tcp, 81, |from, _| !from.starts_with("z/"));
    check(&inputs, Protocol::Udp, 80, |from, to| !to.starts_with("y/") && !from.starts_with("z/"));
    check(&inputs, Protocol::Tcp, 1001, |from, to| {
        !to.starts_with("y/") && (!from.starts_with("z/") || to.starts_with("x/"))
    });
    // A name no pod has allows nothing (into-y still isolates y).
    let unknown = gnp(r#"
metadata: {name: into-y}
spec:
  selector: projectcalico.org/namespace == "y"
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [metrics]}}]
"#);
    check(&cluster(vec![], vec![unknown]), Protocol::Tcp, 81, |_, to| !to.starts_with("y/"));
}

#[test]
fn global_not_selector_not_ports_and_not_protocol() {
    // Into x: TCP from anyone but the pods labelled pod=a, on any port but 81.
    let into_x = gnp(r#"
metadata: {name: into-x}
spec:
  selector: projectcalico.org/namespace == "x"
  ingress: [{action: Allow, protocol: TCP, source: {notSelector: pod == "a"}, destination: {notPorts: [81]}}]
"#);
    // Into y: anything but UDP.
    let into_y = gnp(r#"
metadata: {name: into-y}
spec:
  selector: projectcalico.org/namespace == "y"
  ingress: [{action: Allow, notProtocol: UDP}]
"#);
    // Out of z: TCP to anything but a peer's port named serve-81-tcp.
    let out_of_z = gnp(r#"
metadata: {name: out-of-z}
spec:
  selector: projectcalico.org/namespace == "z"
  egress: [{action: Allow, protocol: TCP, destination: {notPorts: [serve-81-tcp]}}]
"#);
    let inputs = cluster(vec![], vec![into_x, into_y, out_of_z]);
    check(&inputs, Protocol::Tcp, 80, |from, to| !to.starts_with("x/") || !from.ends_with("/a"));
    check(&inputs, Protocol::Tcp, 81, |from, to| !to.starts_with("x/") && !from.starts_with("z/"));
    check(&inputs, Protocol::Udp, 80, |from, to| {
        !to.starts_with("x/") && !to.starts_with("y/") && !from.starts_with("z/")
    });
    // notSelector on the policed side: the rule does not apply to x/b.
    let not_b = gnp(r#"
metadata: {name: into-x}
spec:
  selector: projectcalico.org/namespace == "x"
  ingress: [{action: Allow, destination: {notSelector: pod == "b"}}]
"#);
    check(&cluster(vec![], vec![not_b]), Protocol::Udp, 80, |_, to| to != "x/b");
}

#[test]
fn rules_that_cannot_be_enforced_are_problems_of_their_policy() {
    let bad = gnp(r#"
metadata: {name: bad-range, uid: u-1, generation: 4}
spec:
  selector: all()
  ingress:
  - action: Allow
    protocol: TCP
    destination: {ports: ["90:80"]}
  - action: Allow
    destination: {ports: [http]}
"#);
    let compiled = compile(&cluster(vec![], vec![bad]));
    let messages: Vec<String> = compiled.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(messages[0].starts_with("GlobalNetworkPolicy bad-range: spec.ingress[0]: port \"90:80\""), "{messages:#?}");
    assert!(messages[0].ends_with("; rule ignored"), "{messages:#?}");
    assert_eq!(
        messages[1],
        "GlobalNetworkPolicy bad-range: spec.ingress[1]: named ports need the rule's protocol; rule ignored"
    );
    let policy = &compiled.warnings[0].policy;
    assert_eq!((policy.uid.as_deref(), policy.generation), (Some("u-1"), Some(4)));
    // Both rules left out: the selected pods are denied (end of the global policies).
    assert!(compiled.ruleset.chains.values().all(|lines| lines.iter().all(|l| l.verdict == Verdict::Drop)));
}
