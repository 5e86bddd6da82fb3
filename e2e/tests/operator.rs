//! The operator against the real API server: the real `trellis-operator` binary, driven the way
//! users drive it (`kubectl apply` an Installation, `kubectl patch ippool ...`), observed through
//! the objects it writes, their status and Events.
//!
//! The Installation is a cluster singleton (`default`), so every test here holds one lock and
//! starts from a clean slate (no Installation, no operator-created pools, no agent RBAC); each
//! test runs its operators in a namespace of its own, which the operator creates. Test binaries
//! run one after another under `cargo test`, so no other binary's operator runs meanwhile.
//! The test bed has no controllers: where a test needs the DaemonSet controller's verdict it
//! plays that controller by writing the DaemonSet status.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use trellis_api::{IPPool, Installation};
use trellis_e2e::apiserver::{ApiServer, unique_name};
use trellis_e2e::operator::OperatorProcess;

/// Upper bound for the operator to react; every poll ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(30);
const AGENT: &str = "trellis-agent";
const CREATED_BY: &str = "trellis.dev/created-by=installation";

/// Serializes the tests of this binary: they all use the Installation `default`.
static SINGLETON: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world: the API server, a fresh namespace name, and cleanup of every cluster-scoped
/// thing the operator creates (run on drop, after the operators are gone).
struct Bed {
    api: ApiServer,
    namespace: String,
    started: Timestamp,
}

impl Bed {
    async fn new() -> Result<Self> {
        let api = ApiServer::from_env().await?;
        api.apply_crds().await.context("applying crds/yaml")?;
        let bed = Bed { api, namespace: unique_name("trellis-e2e-op"), started: Timestamp::now() };
        bed.wipe();
        Ok(bed)
    }

    /// Deletes the Installation, the pools it created and the agent's cluster-wide RBAC.
    fn wipe(&self) {
        for args in [
            &["delete", "installation", "default", "--ignore-not-found", "--wait=false"][..],
            &["delete", "ippools", "-l", CREATED_BY, "--ignore-not-found", "--wait=false"],
            &["delete", "clusterrolebinding", AGENT, "--ignore-not-found", "--wait=false"],
            &["delete", "clusterrole", AGENT, "--ignore-not-found", "--wait=false"],
        ] {
            match self.api.kubectl(args) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("cleanup: kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)),
                Err(e) => eprintln!("cleanup: {e}"),
            }
        }
    }

    /// An operator replica in this test's namespace.
    fn operator(&self, identity: &str, extra: &[&str]) -> Result<OperatorProcess> {
        let mut args = vec!["--namespace", self.namespace.as_str()];
        args.extend_from_slice(extra);
        Ok(OperatorProcess::start(self.api.kubeconfig(), identity, &args)?)
    }

    /// `kubectl patch installation default --type merge -p PATCH`, as a user would.
    fn patch_installation(&self, patch: &str) -> Result<String> {
        self.kubectl(&["patch", "installation", "default", "--type", "merge", "-p", patch])
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.api.kubectl(args)?;
        ensure!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl apply -f -` of an Installation `default` with this spec.
    fn apply_installation(&self, spec: Value) -> Result<()> {
        let manifest = json!({"apiVersion": "trellis.dev/v1", "kind": "Installation", "metadata": {"name": "default"}, "spec": spec});
        let out = self.api.kubectl_stdin(&["apply", "-f", "-"], &serde_yaml::to_string(&manifest)?)?;
        ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    fn installations(&self) -> Api<Installation> {
        Api::all(self.api.client())
    }

    fn pools(&self) -> Api<IPPool> {
        Api::all(self.api.client())
    }

    fn daemon_sets(&self) -> Api<DaemonSet> {
        Api::namespaced(self.api.client(), &self.namespace)
    }

    /// Waits until the operator has reconciled the Installation's current generation.
    async fn reconciled(&self) -> Result<Installation> {
        let api = self.installations();
        wait_for("the Installation's status.observedGeneration to reach its generation", WAIT, || async {
            let inst = api.get("default").await.map_err(|e| e.to_string())?;
            let observed = inst.status.as_ref().and_then(|s| s.observed_generation);
            if observed.is_some() && observed == inst.metadata.generation {
                Ok(inst)
            } else {
                Err(format!("generation {:?}, observed {observed:?}", inst.metadata.generation))
            }
        })
        .await
    }

    async fn pool(&self, name: &str) -> Result<IPPool> {
        let api = self.pools();
        wait_for(&format!("IPPool {name}"), WAIT, || async {
            api.get_opt(name).await.map_err(|e| e.to_string())?.ok_or_else(|| "absent".to_string())
        })
        .await
    }

    /// Events on the Installation with this reason since the test started, as "reason: note".
    async fn events(&self, reason: &str) -> Result<Vec<String>> {
        let api: Api<Event> = Api::namespaced(self.api.client(), "default");
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some("Installation")))
            .filter(|e| e.event_time.as_ref().is_some_and(|t| t.0 >= self.started))
            .map(|e| format!("{reason}: {}", e.note.unwrap_or_default()))
            .collect())
    }

    async fn wait_event(&self, reason: &str, contains: &str) -> Result<String> {
        wait_for(&format!("an Event {reason} mentioning {contains:?}"), WAIT, || async {
            let events = self.events(reason).await.map_err(|e| e.to_string())?;
            events.iter().find(|e| e.contains(contains)).cloned().ok_or_else(|| format!("{events:?}"))
        })
        .await
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        self.wipe();
    }
}

/// Polls `probe` until it returns Ok or `timeout` passes; the error names the last observation.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    Ok(trellis_e2e::probe::wait_until_async(what, timeout, probe).await?)
}

fn spec_json(pool: &IPPool) -> Value {
    serde_json::to_value(&pool.spec).unwrap()
}

/// Each field of `expected` has that value in the pool's spec (fields not named are not checked).
fn assert_fields(pool: &IPPool, expected: Value) {
    let spec = spec_json(pool);
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&spec[k], v, "IPPool {:?} spec.{k}: {spec}", pool.metadata.name);
    }
}

fn condition<'a>(
    inst: &'a Installation,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    inst.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn env_of(ds: &DaemonSet, name: &str) -> Option<String> {
    ds.spec.as_ref()?.template.spec.as_ref()?.containers[0].env.as_ref()?.iter().find(|e| e.name == name)?.value.clone()
}

fn config_hash(ds: &DaemonSet) -> Option<String> {
    ds.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get("trellis.dev/config-hash").cloned()
}

/// Plays the DaemonSet controller: every one of `n` agents scheduled, updated and ready.
async fn report_agents_ready(bed: &Bed, n: i32) -> Result<()> {
    let ds = bed.daemon_sets().get(AGENT).await?;
    let status = json!({"status": {
        "observedGeneration": ds.metadata.generation,
        "currentNumberScheduled": n, "desiredNumberScheduled": n, "numberMisscheduled": 0,
        "numberReady": n, "updatedNumberScheduled": n, "numberAvailable": n,
    }});
    bed.daemon_sets().patch_status(AGENT, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn installation_creates_pools_daemonset_and_rbac() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    let namespaces: Api<Namespace> = Api::all(bed.api.client());
    ensure!(namespaces.get_opt(&bed.namespace).await?.is_none(), "namespace exists before the operator ran");
    bed.apply_installation(json!({
        "registry": "registry.example.com/",
        "cni": {"confDir": "/etc/cni/trellis-e2e.d"},
        "network": {"ipPools": [
            {"cidr": "10.96.0.0/16", "encapsulation": "VXLAN", "natOutgoing": "Enabled"},
            {"cidr": "10.97.0.0/16", "encapsulation": "None", "natOutgoing": "Disabled", "blockSize": 24},
            {"cidr": "fd00:96::/56", "encapsulation": "VXLANCrossSubnet"},
        ]},
    }))?;
    let op = bed.operator("op-a", &["--no-leader-election"])?;

    // Pools: Calico's names for the first of each family, the CIDR for the others.
    let p = bed.pool("default-ipv4-ippool").await?;
    assert_fields(
        &p,
        json!({"cidr": "10.96.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "Always",
               "natOutgoing": true, "nodeSelector": "all()", "disabled": false}),
    );
    assert_eq!(
        p.metadata.labels.as_ref().and_then(|l| l.get("trellis.dev/created-by")).map(String::as_str),
        Some("installation")
    );
    let p = bed.pool("ipv4-ippool-10-97-0-0-16").await?;
    assert_fields(
        &p,
        json!({"cidr": "10.97.0.0/16", "blockSize": 24, "ipipMode": "Never", "vxlanMode": "Never",
               "natOutgoing": false, "nodeSelector": "all()", "disabled": false}),
    );
    let p = bed.pool("default-ipv6-ippool").await?;
    assert_eq!(spec_json(&p)["blockSize"], 122);
    assert_eq!(spec_json(&p)["vxlanMode"], "CrossSubnet");

    // The agent's objects in the namespace the operator created.
    let inst = bed.reconciled().await?;
    ensure!(namespaces.get_opt(&bed.namespace).await?.is_some(), "the operator did not create its namespace");
    let sa: Api<ServiceAccount> = Api::namespaced(bed.api.client(), &bed.namespace);
    sa.get(AGENT).await.context("ServiceAccount trellis-agent")?;
    let role = Api::<ClusterRole>::all(bed.api.client()).get(AGENT).await?;
    let rules = role.rules.unwrap_or_default();
    ensure!(
        rules.iter().any(|r| r.resources.as_ref().is_some_and(|x| x.iter().any(|x| x == "nodenetworks/status"))
            && r.verbs.iter().any(|v| v == "patch")),
        "agent role cannot patch nodenetworks/status: {rules:?}"
    );
    let binding = Api::<ClusterRoleBinding>::all(bed.api.client()).get(AGENT).await?;
    let subject = &binding.subjects.unwrap_or_default()[0];
    assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), (AGENT, Some(bed.namespace.as_str())));

    let ds = bed.daemon_sets().get(AGENT).await?;
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(format!("registry.example.com/trellis/agent:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
    assert_eq!(c.command.as_deref(), Some(&["trellis-agent".to_string(), "run".to_string()][..]));
    assert_eq!(env_of(&ds, "TRELLIS_CNI_CONF_DIR").as_deref(), Some("/etc/cni/trellis-e2e.d"));
    assert_eq!(env_of(&ds, "TRELLIS_HEALTH_ADDR").as_deref(), Some("0.0.0.0:9099"));
    assert_eq!(pod.host_network, Some(true));
    ensure!(config_hash(&ds).is_some(), "no config hash on the pod template");
    let owner = &ds.metadata.owner_references.as_ref().context("DaemonSet without owner")?[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Installation", "default"));

    // Events for each decision.
    for cidr in ["10.96.0.0/16", "10.97.0.0/16", "fd00:96::/56"] {
        bed.wait_event("PoolCreated", cidr).await?;
    }
    bed.wait_event("DaemonSetCreated", AGENT).await?;

    // Status: nothing ready until the DaemonSet controller says so; then Ready.
    let ready = condition(&inst, "Ready").context("no Ready condition")?;
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "WaitingForDaemonSet"));
    assert_eq!(condition(&inst, "Degraded").map(|c| c.status.as_str()), Some("False"));
    report_agents_ready(&bed, 3).await?;
    wait_for("Ready=True after all agents report ready", WAIT, || async {
        let inst = bed.installations().get("default").await.map_err(|e| e.to_string())?;
        match condition(&inst, "Ready") {
            Some(c) if c.status == "True" => Ok(c.message.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // The replica serves its health and metrics.
    assert_eq!(op.http_get("/healthz")?.0, 200);
    assert_eq!(op.http_get("/readyz")?.0, 200);
    let (_, metrics) = op.http_get("/metrics")?;
    ensure!(metrics.contains(r#"trellis_operator_reconciliations_total{controller="installation"}"#), "{metrics}");
    ensure!(metrics.contains("trellis_operator_leader 1"), "{metrics}");
    drop(op);
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn defaults_only_in_status_never_in_spec() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    let spec = json!({"network": {"ipPools": [{"cidr": "10.98.0.0/16"}]}});
    bed.apply_installation(spec.clone())?;
    let _op = bed.operator("op-a", &["--no-leader-election"])?;
    let inst = bed.reconciled().await?;

    assert_eq!(serde_json::to_value(&inst.spec)?, spec, "the spec is exactly what the user applied");
    for entry in inst.metadata.managed_fields.as_deref().unwrap_or_default() {
        if entry.manager.as_deref().is_some_and(|m| m.starts_with("trellis-operator")) {
            assert_eq!(entry.subresource.as_deref(), Some("status"), "the operator wrote outside status: {entry:?}");
        }
    }
    let computed =
        serde_json::to_value(inst.status.as_ref().and_then(|s| s.computed.as_ref()).context("no status.computed")?)?;
    assert_eq!(
        computed["network"]["ipPools"],
        json!([{"cidr": "10.98.0.0/16", "encapsulation": "IPIP", "natOutgoing": "Enabled", "blockSize": 26, "nodeSelector": "all()"}])
    );
    let p = bed.pool("default-ipv4-ippool").await?;
    assert_eq!(spec_json(&p)["ipipMode"], "Always", "the pool follows the computed default");

    // No pool given at all: Calico's default pool, again only in status.
    bed.kubectl(&[
        "patch",
        "installation",
        "default",
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/network"}]"#,
    ])?;
    let inst = bed.reconciled().await?;
    assert_eq!(serde_json::to_value(&inst.spec)?, json!({}));
    let computed =
        serde_json::to_value(inst.status.as_ref().and_then(|s| s.computed.as_ref()).context("no computed")?)?;
    assert_eq!(computed["network"]["ipPools"][0]["cidr"], "192.168.0.0/16");
    let pools = bed.pools().list(&ListParams::default().labels(CREATED_BY)).await?;
    ensure!(
        pools.items.iter().any(|p| p.spec.cidr == "192.168.0.0/16"),
        "no pool for the default CIDR: {:?}",
        pools.items.iter().map(|p| &p.spec.cidr).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn user_patch_of_operator_created_pool_sticks() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    let pool = |nat: &str| json!({"cidr": "10.99.0.0/16", "encapsulation": "IPIP", "natOutgoing": nat});
    bed.apply_installation(json!({"network": {"ipPools": [pool("Enabled")]}}))?;
    let _op = bed.operator("op-a", &["--no-leader-election"])?;
    let p = bed.pool("default-ipv4-ippool").await?;
    assert_eq!(
        (spec_json(&p)["ipipMode"].clone(), spec_json(&p)["vxlanMode"].clone()),
        (json!("Always"), json!("Never"))
    );
    bed.reconciled().await?;

    // What Calico users type.
    bed.kubectl(&[
        "patch",
        "ippool",
        "default-ipv4-ippool",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"ipipMode":"Never","vxlanMode":"Always"}}"#,
    ])?;
    // Another field of the same Installation entry changes: that one is carried...
    bed.patch_installation(&json!({"spec": {"network": {"ipPools": [pool("Disabled")]}}}).to_string())?;
    bed.reconciled().await?;
    let api = bed.pools();
    let p = wait_for("natOutgoing=false carried to the pool", WAIT, || async {
        let p = api.get("default-ipv4-ippool").await.map_err(|e| e.to_string())?;
        if p.spec.nat_outgoing == Some(false) { Ok(p) } else { Err(format!("{:?}", p.spec)) }
    })
    .await?;
    // ... and the user's patch is still there.
    assert_eq!(spec_json(&p)["ipipMode"], "Never", "the operator reverted the user's patch: {:?}", p.spec);
    assert_eq!(spec_json(&p)["vxlanMode"], "Always", "the operator reverted the user's patch: {:?}", p.spec);

    // More reconciles (an unrelated Installation change, then a restarted operator) keep it too.
    bed.patch_installation(r#"{"spec":{"network":{"mtu":1400}}}"#)?;
    let inst = bed.reconciled().await?;
    assert_eq!(inst.status.as_ref().and_then(|s| s.mtu), Some(1400));
    drop(_op);
    let op_b = bed.operator("op-b", &["--no-leader-election"])?;
    wait_for("op-b to reconcile", WAIT, || async {
        let (_, m) = op_b.http_get("/metrics").map_err(|e| e.to_string())?;
        if m.contains(r#"trellis_operator_reconciliations_total{controller="installation"}"#) { Ok(()) } else { Err(m) }
    })
    .await?;
    let p = api.get("default-ipv4-ippool").await?;
    assert_eq!(
        (spec_json(&p)["ipipMode"].clone(), spec_json(&p)["vxlanMode"].clone()),
        (json!("Never"), json!("Always"))
    );
    assert_eq!(spec_json(&p)["natOutgoing"], false);
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn installation_pool_change_is_carried_to_the_ippool() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    bed.apply_installation(json!({"network": {"ipPools": [{"cidr": "10.100.0.0/16", "encapsulation": "IPIP"}]}}))?;
    let _op = bed.operator("op-a", &["--no-leader-election"])?;
    bed.pool("default-ipv4-ippool").await?;
    bed.reconciled().await?;

    bed.apply_installation(json!({"network": {"ipPools": [{
        "cidr": "10.100.0.0/16", "encapsulation": "VXLANCrossSubnet", "nodeSelector": "kubernetes.io/os == 'linux'",
    }]}}))?;
    let api = bed.pools();
    let p = wait_for("the Installation's change on the IPPool", WAIT, || async {
        let p = api.get("default-ipv4-ippool").await.map_err(|e| e.to_string())?;
        let s = spec_json(&p);
        if s["vxlanMode"] == "CrossSubnet" && s["nodeSelector"] == "kubernetes.io/os == 'linux'" {
            Ok(p)
        } else {
            Err(s.to_string())
        }
    })
    .await?;
    assert_eq!(spec_json(&p)["ipipMode"], "Never", "both modes move together");
    assert_eq!(spec_json(&p)["natOutgoing"], true, "unchanged fields stay");
    let event = bed.wait_event("PoolChangeCarried", "default-ipv4-ippool").await?;
    ensure!(event.contains("encapsulation") && event.contains("nodeSelector"), "{event}");

    // blockSize cannot change on an existing pool: refused with a reason, nothing else broken.
    bed.apply_installation(json!({"network": {"ipPools": [{
        "cidr": "10.100.0.0/16", "encapsulation": "VXLANCrossSubnet", "nodeSelector": "kubernetes.io/os == 'linux'", "blockSize": 24,
    }]}}))?;
    let inst = bed.reconciled().await?;
    let degraded = condition(&inst, "Degraded").context("no Degraded")?;
    assert_eq!(degraded.status, "True");
    ensure!(degraded.message.contains("blockSize"), "{degraded:?}");
    assert_eq!(api.get("default-ipv4-ippool").await?.spec.block_size, Some(26));
    bed.wait_event("PoolChangeRefused", "blockSize").await?;
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn changed_template_rolls_the_daemonset() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    bed.apply_installation(json!({"network": {"ipPools": [{"cidr": "10.101.0.0/16"}]}}))?;
    let _op = bed.operator("op-a", &["--no-leader-election"])?;
    bed.reconciled().await?;
    let before = bed.daemon_sets().get(AGENT).await?;
    let hash = config_hash(&before).context("no hash")?;

    // A change that does not touch the template: no roll.
    bed.patch_installation(r#"{"spec":{"network":{"mtu":1350}}}"#)?;
    bed.reconciled().await?;
    let same = bed.daemon_sets().get(AGENT).await?;
    assert_eq!(config_hash(&same), Some(hash.clone()));
    assert_eq!(same.metadata.generation, before.metadata.generation, "the DaemonSet was rewritten without a change");

    // The CNI conf dir is in the template: the DaemonSet rolls.
    bed.patch_installation(r#"{"spec":{"cni":{"confDir":"/etc/cni/rolled.d"}}}"#)?;
    let ds = wait_for("a new pod template", WAIT, || async {
        let ds = bed.daemon_sets().get(AGENT).await.map_err(|e| e.to_string())?;
        if config_hash(&ds).as_ref() != Some(&hash) { Ok(ds) } else { Err("same hash".into()) }
    })
    .await?;
    assert_eq!(env_of(&ds, "TRELLIS_CNI_CONF_DIR").as_deref(), Some("/etc/cni/rolled.d"));
    ensure!(ds.metadata.generation > before.metadata.generation, "generation did not move");
    let event = bed.wait_event("DaemonSetRolled", &hash).await?;
    ensure!(event.contains(config_hash(&ds).unwrap().as_str()), "{event}");

    // Progressing while the new template rolls out.
    report_agents_ready(&bed, 2).await?;
    let status = json!({"status": {"observedGeneration": ds.metadata.generation, "desiredNumberScheduled": 2,
        "currentNumberScheduled": 2, "numberMisscheduled": 0, "numberReady": 2, "updatedNumberScheduled": 1}});
    bed.daemon_sets().patch_status(AGENT, &PatchParams::default(), &Patch::Merge(&status)).await?;
    wait_for("Progressing=True while 1 of 2 agents run the new template", WAIT, || async {
        let inst = bed.installations().get("default").await.map_err(|e| e.to_string())?;
        match condition(&inst, "Progressing") {
            Some(c) if c.status == "True" && c.message.contains("1 of 2") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn leader_failover_between_two_operator_processes() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    const LEASE_SECONDS: u64 = 4;
    let lease_args = ["--lease-duration", "4"];
    let leases: Api<Lease> = Api::namespaced(bed.api.client(), &bed.namespace);
    let holder = || async {
        let lease = leases.get_opt("trellis-operator").await.map_err(|e| e.to_string())?;
        Ok::<_, String>(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).unwrap_or_default())
    };
    let pool = |encapsulation: &str| json!({"network": {"ipPools": [{"cidr": "10.102.0.0/16", "encapsulation": encapsulation}]}});
    bed.apply_installation(pool("IPIP"))?;

    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1?}] {what}", t0.elapsed());
    let mut a = bed.operator("replica-a", &lease_args)?;
    step("replica-a started");
    wait_for("replica-a to hold the Lease", WAIT, || async {
        let h = holder().await?;
        if h == "replica-a" { Ok(()) } else { Err(h) }
    })
    .await?;
    bed.reconciled().await?;
    step("replica-a leads and reconciled");
    let b = bed.operator("replica-b", &lease_args)?;
    wait_for("replica-b to be ready (joined, standing by)", WAIT, || async {
        match b.http_get("/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    step("replica-b ready");
    // Two renewals later replica-a still leads and replica-b only stands by.
    tokio::time::sleep(Duration::from_secs(LEASE_SECONDS)).await;
    assert_eq!(holder().await.map_err(anyhow::Error::msg)?, "replica-a");
    let (_, m) = b.http_get("/metrics")?;
    ensure!(m.contains("trellis_operator_leader 0"), "replica-b claims to lead:\n{m}");
    ensure!(!m.contains(r#"reconciliations_total{controller="installation"}"#), "the standby reconciled:\n{m}");

    // The leader dies without releasing: replica-b takes over once the Lease expires.
    a.kill();
    let killed = Instant::now();
    let bound = Duration::from_secs(2 * LEASE_SECONDS + 3);
    wait_for("replica-b to take the Lease over", bound, || async {
        let h = holder().await?;
        if h == "replica-b" { Ok(()) } else { Err(h) }
    })
    .await?;
    eprintln!("replica-b took over {:?} after replica-a was killed (lease {LEASE_SECONDS}s)", killed.elapsed());

    step("replica-b took over");
    // And it does the work: an Installation change reaches the pool.
    bed.apply_installation(pool("VXLAN"))?;
    let api = bed.pools();
    wait_for("replica-b to carry the change", WAIT, || async {
        let p = api.get("default-ipv4-ippool").await.map_err(|e| e.to_string())?;
        if p.spec.vxlan_mode == Some(trellis_api::EncapMode::Always) { Ok(()) } else { Err(format!("{:?}", p.spec)) }
    })
    .await?;
    let (_, m) = b.http_get("/metrics")?;
    ensure!(m.contains("trellis_operator_leader 1"), "{m}");

    step("replica-b carried the change");
    // A graceful stop releases the Lease (no stale lock to break); the standby takes it at its
    // next check, within one lease duration.
    let c = bed.operator("replica-c", &lease_args)?;
    wait_for("replica-c to be ready", WAIT, || async {
        match c.http_get("/readyz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    step("replica-c ready");
    let mut b = b;
    ensure!(b.terminate(Duration::from_secs(10)), "replica-b did not stop on SIGTERM:\n{}", b.log());
    ensure!(b.log().contains("released the Lease"), "replica-b did not release:\n{}", b.log());
    wait_for("replica-c to take the released Lease", Duration::from_secs(2 * LEASE_SECONDS + 3), || async {
        let h = holder().await?;
        if h == "replica-c" { Ok(()) } else { Err(h) }
    })
    .await?;
    step("replica-c took the released Lease");
    drop(c);
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn overlapping_installation_pools_are_refused_with_a_reason() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    bed.apply_installation(json!({"network": {"ipPools": [{"cidr": "10.0.0.0/8"}, {"cidr": "10.244.0.0/16"}]}}))?;
    let _op = bed.operator("op-a", &["--no-leader-election"])?;
    let inst = bed.reconciled().await?;
    let degraded = condition(&inst, "Degraded").context("no Degraded")?;
    assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", "InvalidConfiguration"));
    ensure!(degraded.message.contains("10.0.0.0/8 and 10.244.0.0/16 overlap"), "{degraded:?}");
    assert_eq!(condition(&inst, "Ready").map(|c| c.status.as_str()), Some("False"));
    bed.wait_event("InvalidConfiguration", "overlap").await?;
    // Nothing half-applied: no pool, no DaemonSet.
    let pools = bed.pools().list(&ListParams::default().labels(CREATED_BY)).await?;
    ensure!(pools.items.is_empty(), "pools created from an invalid Installation: {:?}", pools.items);
    ensure!(bed.daemon_sets().get_opt(AGENT).await?.is_none(), "DaemonSet applied for an invalid Installation");

    // Fixed: everything follows, and Degraded clears.
    bed.apply_installation(json!({"network": {"ipPools": [{"cidr": "10.244.0.0/16"}]}}))?;
    let inst = bed.reconciled().await?;
    assert_eq!(condition(&inst, "Degraded").map(|c| c.status.as_str()), Some("False"));
    bed.pool("default-ipv4-ippool").await?;
    ensure!(bed.daemon_sets().get_opt(AGENT).await?.is_some(), "no DaemonSet after the fix");
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn effective_mtu_is_the_installation_value_else_the_smallest_node_mtu() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    bed.apply_installation(json!({"network": {"ipPools": [{"cidr": "10.103.0.0/16"}]}}))?;
    let _op = bed.operator("op-a", &["--no-leader-election"])?;
    bed.reconciled().await?;

    // Two nodes whose agents report their MTU (the test bed plays the agents).
    let mut guards = Vec::new();
    for (i, mtu) in [(1, 1450), (2, 1201)] {
        let name = unique_name(&format!("mtu-node{i}"));
        let node = format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
        let nn = format!(
            "apiVersion: trellis.dev/v1\nkind: NodeNetwork\nmetadata:\n  name: {name}\nspec:\n  address: 10.0.9.{i}/24\n"
        );
        for manifest in [&node, &nn] {
            guards.push(bed.api.cleanup(manifest)?);
            bed.api.create_yaml(manifest, trellis_e2e::apiserver::FieldValidation::Strict, false).await?;
        }
        bed.api.merge_patch_status(&nn, &json!({"status": {"mtu": mtu}})).await?;
    }
    let all = Api::<trellis_api::NodeNetwork>::all(bed.api.client());
    let expected = wait_for("status.mtu = the smallest NodeNetwork MTU", WAIT, || async {
        let smallest = all
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .filter_map(|n| n.status.as_ref()?.mtu)
            .min();
        let inst = bed.installations().get("default").await.map_err(|e| e.to_string())?;
        let mtu = inst.status.as_ref().and_then(|s| s.mtu);
        if mtu.is_some() && mtu == smallest {
            Ok(mtu)
        } else {
            Err(format!("status {mtu:?}, smallest node {smallest:?}"))
        }
    })
    .await?;
    ensure!(expected <= Some(1201), "our 1201 is not the minimum: {expected:?}");

    bed.patch_installation(r#"{"spec":{"network":{"mtu":1300}}}"#)?;
    let inst = bed.reconciled().await?;
    assert_eq!(inst.status.as_ref().and_then(|s| s.mtu), Some(1300), "the Installation's MTU wins");
    drop(guards);
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn tigera_installation_manifest_creates_its_pool() -> Result<()> {
    let _one = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    // The lab notes' Installation, only the apiVersion changed (docs/manifests/).
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/manifests/installation-tigera.yaml");
    bed.kubectl(&["apply", "-f", manifest.to_str().context("path")?])?;
    let _op = bed.operator("op-a", &["--no-leader-election"])?;
    let p = bed.pool("default-ipv4-ippool").await?;
    assert_fields(
        &p,
        json!({"cidr": "10.244.0.0/16", "blockSize": 24, "ipipMode": "CrossSubnet", "vxlanMode": "Never",
               "natOutgoing": true, "nodeSelector": "all()"}),
    );
    let inst = bed.reconciled().await?;
    let status = inst.status.as_ref().context("no status")?;
    assert_eq!(status.mtu, Some(1440));
    let computed = serde_json::to_value(status.computed.as_ref().context("no computed")?)?;
    assert_eq!(computed["network"]["nodeAddressAutodetection"], json!({"interface": "eth1"}), "{computed}");
    ensure!(computed.get("calicoNetwork").is_none(), "computed keeps the Tigera spelling: {computed}");
    assert_eq!(condition(&inst, "IgnoredSettings").map(|c| c.status.as_str()), Some("False"));

    // A setting Trellis accepts but does not use is said, not silently dropped.
    bed.patch_installation(r#"{"spec":{"calicoNetwork":{"nodeAddressAutodetectionV6":{"firstFound":true}}}}"#)?;
    let inst = bed.reconciled().await?;
    let ignored = condition(&inst, "IgnoredSettings").context("no IgnoredSettings")?;
    assert_eq!(ignored.status, "True");
    ensure!(ignored.message.contains("nodeAddressAutodetectionV6"), "{ignored:?}");
    bed.wait_event("SettingsIgnored", "nodeAddressAutodetectionV6").await?;
    Ok(())
}
