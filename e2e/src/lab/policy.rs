//! Chapter: network policy, the lab notes' way — a default deny, then the whitelist example
//! (only pods labelled `access: "true"` may reach the web pod on TCP 80), in Kubernetes'
//! flavour (NetworkPolicy) and in Calico's (GlobalNetworkPolicy with `order`), with the
//! TCP 80 matrix between the three pods (two nodes of one subnet and one behind the router)
//! before and after. Every matrix is probed with real connections until it equals what the
//! policies say (or the wait ends) and printed as seen. Policies and labels are removed at the
//! end, so every pod reaches every other again.

use std::time::Duration;

use anyhow::Result;

use super::Lab;
use crate::policy::{self, Matrix, Port, Target};
use crate::probe;

/// How long a policy change may take to hold on every node.
const ENFORCED: Duration = Duration::from_secs(45);
const PORT: Port = Port::Tcp(80);

const DEFAULT_DENY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
"#;

const WHITELIST: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: access-web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {access: "true"}}}]
    ports: [{protocol: TCP, port: 80}]
"#;

const CALICO: &str = r#"apiVersion: trellis.dev/v1
kind: GlobalNetworkPolicy
metadata: {name: access-web}
spec:
  order: 100
  selector: app == "web"
  ingress: [{action: Allow, protocol: TCP, source: {selector: access == "true"}, destination: {ports: [80]}}]
---
apiVersion: trellis.dev/v1
kind: GlobalNetworkPolicy
metadata: {name: default-deny}
spec:
  order: 1000
  selector: projectcalico.org/namespace == "default"
  types: [Ingress]
"#;

/// The open pairs of a matrix (`pod-b -> pod-a`), `none` or `all N pairs`.
fn open_pairs(m: &Matrix) -> String {
    let open: Vec<String> = m.cells.iter().filter(|(_, ok)| **ok).map(|((f, t), _)| format!("{f} -> {t}")).collect();
    match open.len() {
        0 => "none".to_string(),
        n if n == m.cells.len() => format!("all {n} pairs"),
        _ => open.join(", "),
    }
}

/// Probes until the matrix equals `allowed` (or the wait ends), prints it and records a row.
fn matrix(lab: &mut Lab, targets: &[Target], case: &str, allowed: impl Fn(&str, &str) -> bool) {
    let want = Matrix::expected(targets, PORT, &allowed);
    let seen = probe::wait_until(case, ENFORCED, || {
        let got = Matrix::probe(targets, PORT);
        if got == want { Ok(got) } else { Err(got.to_string()) }
    })
    .unwrap_or_else(|_| Matrix::probe(targets, PORT));
    println!("  {case} (rows: from, columns: to):\n{}", super::indent(&seen.to_string()));
    lab.summary.equal(&format!("policy: {case}, open on TCP 80"), open_pairs(&want), open_pairs(&seen));
}

pub fn run(lab: &mut Lab) -> Result<()> {
    let mut targets = Vec::new();
    for p in &lab.pods {
        policy::serve(&p.netns)?;
        targets.push(Target { name: p.name.clone(), netns: p.netns.clone(), ip: p.ip.into() });
    }
    let c = &lab.cluster;
    c.kubectl(&["label", "pod", "pod-a", "app=web", "--overwrite"])?;
    c.kubectl(&["label", "pod", "pod-b", "access=true", "--overwrite"])?;
    println!("  pod-a: app=web; pod-b: access=true; pod-c: no labels; every pod serves TCP 80");
    matrix(lab, &targets, "no policy", |_, _| true);

    println!("  kubectl apply -f -\n{}", super::indent(DEFAULT_DENY));
    lab.cluster.kubectl_stdin(&["apply", "-f", "-"], DEFAULT_DENY)?;
    matrix(lab, &targets, "default deny (NetworkPolicy)", |_, _| false);

    println!("  kubectl apply -f -\n{}", super::indent(WHITELIST));
    lab.cluster.kubectl_stdin(&["apply", "-f", "-"], WHITELIST)?;
    let whitelist = |from: &str, to: &str| from == "pod-b" && to == "pod-a";
    matrix(lab, &targets, "default deny + whitelist (NetworkPolicy)", whitelist);

    println!(
        "  the same in Calico's flavour: kubectl delete networkpolicy default-deny access-web; kubectl apply -f -\n{}",
        super::indent(CALICO)
    );
    lab.cluster.kubectl(&["delete", "networkpolicy", "default-deny", "access-web"])?;
    lab.cluster.kubectl_stdin(&["apply", "-f", "-"], CALICO)?;
    matrix(lab, &targets, "default deny + whitelist (GlobalNetworkPolicy)", whitelist);

    lab.cluster.kubectl(&["delete", "globalnetworkpolicy", "default-deny", "access-web"])?;
    lab.cluster.kubectl(&["label", "pod", "pod-a", "app-"])?;
    lab.cluster.kubectl(&["label", "pod", "pod-b", "access-"])?;
    matrix(lab, &targets, "policies deleted", |_, _| true);
    Ok(())
}
