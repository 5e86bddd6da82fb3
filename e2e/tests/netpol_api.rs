//! networking.k8s.io/v1 NetworkPolicy on the test bed's API server, as kube-apiserver serves it:
//! stored in etcd, discovered (`netpol`), listed and watched by label, written by create,
//! patch and server-side apply, defaulted (implied policyTypes, TCP) and validated like kube.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use trellis_e2e::apiserver::{ApiServer, unique_name};

const WATCH_WAIT: Duration = Duration::from_secs(20);

fn policy(name: &str, labels: Value, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels}, "spec": spec}))
    .unwrap()
}

/// Ingress from pods `role=client` in namespaces `team=x`, on TCP 80 (protocol left out), the
/// named port `http` and UDP 8000-8080; egress to 10.0.0.0/8 except 10.1.0.0/16. No policyTypes.
fn whitelist_spec() -> Value {
    json!({
        "podSelector": {"matchLabels": {"app": "a"}},
        "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"role": "client"}}}],
            "ports": [{"port": 80}, {"port": "http"}, {"protocol": "UDP", "port": 8000, "endPort": 8080}]
        }],
        "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]
    })
}

/// The next watch event that is not a bookmark.
async fn next_change(
    watch: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<NetworkPolicy>>> + Unpin),
) -> Result<Option<WatchEvent<NetworkPolicy>>> {
    loop {
        let event = tokio::time::timeout(WATCH_WAIT, watch.try_next()).await.context("no watch event")??;
        if !matches!(event, Some(WatchEvent::Bookmark(_))) {
            return Ok(event);
        }
    }
}

#[tokio::test]
#[ignore = "root: real API server (make test-root)"]
async fn network_policies_round_trip_with_labels_watch_apply_and_kubectl() -> Result<()> {
    let api = ApiServer::from_env().await?;
    let ns = unique_name("e2e-netpol");
    let suite = unique_name("suite");
    let policies: Api<NetworkPolicy> = Api::namespaced(api.client(), &ns);
    let selector = format!("suite={suite}");
    let mut watch = policies.watch(&WatchParams::default().labels(&selector), "0").await?.boxed();

    let created = policies
        .create(&PostParams::default(), &policy("whitelist", json!({"suite": suite}), whitelist_spec()))
        .await
        .context("creating a NetworkPolicy")?;
    let _other = policies
        .create(&PostParams::default(), &policy("deny-all", json!({}), json!({"podSelector": {}})))
        .await
        .context("creating an unlabelled NetworkPolicy")?;

    // Defaults as kube applies them, generation 1.
    let spec = created.spec.clone().unwrap();
    ensure!(spec.policy_types == Some(vec!["Ingress".into(), "Egress".into()]), "implied policyTypes: {spec:?}");
    let ports = spec.ingress.as_ref().unwrap()[0].ports.clone().unwrap();
    ensure!(ports[0].protocol.as_deref() == Some("TCP") && ports[2].protocol.as_deref() == Some("UDP"), "{ports:?}");
    ensure!(ports[2].end_port == Some(8080), "endPort kept: {ports:?}");
    ensure!(created.metadata.generation == Some(1), "generation {:?}", created.metadata.generation);
    let deny_all = policies.get("deny-all").await?.spec.unwrap();
    ensure!(deny_all.policy_types == Some(vec!["Ingress".into()]), "no egress rules: Ingress only: {deny_all:?}");

    // List and watch by label: only the labelled policy.
    let listed = policies.list(&ListParams::default().labels(&selector)).await?;
    let names: Vec<_> = listed.items.iter().filter_map(|p| p.metadata.name.clone()).collect();
    ensure!(names == ["whitelist"], "listed by label: {names:?}");
    let event = next_change(&mut watch).await?;
    match event {
        Some(WatchEvent::Added(p)) => {
            ensure!(p.metadata.name.as_deref() == Some("whitelist"), "added {:?}", p.metadata.name)
        }
        other => anyhow::bail!("expected Added(whitelist), got {other:?}"),
    }

    // A spec change bumps the generation; a label change does not. The watch sees both.
    let patched = policies
        .patch(
            "whitelist",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podSelector": {"matchLabels": {"app": "b"}}}})),
        )
        .await?;
    ensure!(patched.metadata.generation == Some(2), "spec change: generation {:?}", patched.metadata.generation);
    let relabelled = policies
        .patch("whitelist", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"extra": "yes"}}})))
        .await?;
    ensure!(relabelled.metadata.generation == Some(2), "label change: generation {:?}", relabelled.metadata.generation);
    let event = next_change(&mut watch).await?;
    ensure!(matches!(event, Some(WatchEvent::Modified(_))), "expected Modified, got {event:?}");

    // Server-side apply: a new object, owned by its field manager.
    let applied = policies
        .patch(
            "applied",
            &PatchParams::apply("trellis-e2e").force(),
            &Patch::Apply(policy(
                "applied",
                json!({"suite": suite}),
                json!({"podSelector": {"matchLabels": {"app": "c"}}, "policyTypes": ["Egress"]}),
            )),
        )
        .await
        .context("server-side apply")?;
    let managers: Vec<_> =
        applied.metadata.managed_fields.unwrap_or_default().into_iter().filter_map(|m| m.manager).collect();
    ensure!(managers.contains(&"trellis-e2e".to_string()), "managedFields: {managers:?}");
    ensure!(applied.spec.unwrap().policy_types == Some(vec!["Egress".into()]), "explicit policyTypes kept");

    // kubectl: discovery by short name and the table columns.
    let out = api.kubectl(&["get", "netpol", "-n", &ns, "-l", &selector])?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "kubectl get netpol: {}", String::from_utf8_lossy(&out.stderr));
    ensure!(table.contains("POD-SELECTOR") && table.contains("app=b") && table.contains("app=c"), "table:\n{table}");
    ensure!(!table.contains("deny-all"), "label selector applied by kubectl:\n{table}");
    let out = api.kubectl(&["explain", "networkpolicy.spec.ingress.ports.endPort"])?;
    ensure!(out.status.success(), "kubectl explain: {}", String::from_utf8_lossy(&out.stderr));

    for name in ["whitelist", "deny-all", "applied"] {
        policies.delete(name, &DeleteParams::default()).await?;
    }
    ensure!(policies.get_opt("whitelist").await?.is_none(), "deleted");
    Ok(())
}

#[tokio::test]
#[ignore = "root: real API server (make test-root)"]
async fn invalid_network_policies_are_refused_as_kube_refuses_them() -> Result<()> {
    let api = ApiServer::from_env().await?;
    let ns = unique_name("e2e-netpol");
    let policies: Api<NetworkPolicy> = Api::namespaced(api.client(), &ns);
    let cases = [
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]}),
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\"",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "spec.ingress[0].ports[0].endPort: Invalid value: 90: must be greater than or equal to `port`",
        ),
        (
            json!({"podSelector": {}, "egress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
            "spec.egress[0].ports[0].endPort: Invalid value: 80: may not be specified when `port` is non-numeric",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}),
            "spec.ingress[0].ports[0].port: Invalid value: 70000",
        ),
        (
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
            "spec.egress[0].to[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]}),
            "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{}]}]}),
            "spec.ingress[0].from[0]: Required value: must specify a peer",
        ),
        (
            json!({"podSelector": {}, "policyTypes": ["Sideways"]}),
            "spec.policyTypes[0]: Unsupported value: \"Sideways\"",
        ),
        (
            json!({"podSelector": {"matchLabels": {"bad key!": "x"}}}),
            "spec.podSelector.matchLabels: Invalid value: \"bad key!\"",
        ),
    ];
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let name = format!("bad-{i}");
        let err = policies
            .create(&PostParams::default(), &policy(&name, json!({}), spec.clone()))
            .await
            .err()
            .with_context(|| format!("{spec} was accepted"))?;
        let kube::Error::Api(status) = err else { anyhow::bail!("{spec}: {err}") };
        ensure!(status.code == 422, "{spec}: code {}", status.code);
        ensure!(status.message.contains(expected), "{spec}: message {:?} lacks {expected:?}", status.message);
        ensure!(policies.get_opt(&name).await?.is_none(), "{spec}: nothing stored");
    }
    Ok(())
}
