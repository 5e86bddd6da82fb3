//! The admission policy the operator renders so that a node agent writes only its own
//! NodeNetwork, enforced by the real API server's ValidatingAdmissionPolicy plugin.
//!
//! The real `trellis-operator` reconciles an Installation and applies the policy; requests then
//! act as the agent's ServiceAccount through impersonation, with the node name claim a token
//! bound to a pod carries (`authentication.kubernetes.io/node-name`). Like the operator tests,
//! these use the Installation `default` (a cluster singleton): one test at a time, each with
//! its own namespace, and the cluster-wide objects are removed before and after.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::json;
use trellis_api::NodeNetwork;
use trellis_e2e::apiserver::{ApiServer, unique_name};
use trellis_e2e::operator::OperatorProcess;

/// Upper bound for the operator to react and for a policy change to take effect (the API
/// server recompiles policies within about a second); every poll ends once its condition holds.
const WAIT: Duration = Duration::from_secs(30);
const POLICY: &str = "trellis-agent-own-nodenetwork";
const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const MESSAGE: &str = "the trellis-agent ServiceAccount may write only the NodeNetwork of its own node";

/// The tests share the Installation `default`.
static SINGLETON: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Bed {
    api: ApiServer,
    namespace: String,
    nodes: [String; 2],
    _operator: OperatorProcess,
}

impl Bed {
    /// A running operator in a fresh namespace, with an Installation it has reconciled
    /// (the policy and its binding exist).
    async fn new() -> Result<Self> {
        let api = ApiServer::from_env().await?;
        api.apply_crds().await.context("applying crds/yaml")?;
        wipe(&api);
        let namespace = unique_name("trellis-e2e-vap");
        let operator = OperatorProcess::start(api.kubeconfig(), "vap", &["--namespace", &namespace])?;
        let installation = json!({"apiVersion": "trellis.dev/v1", "kind": "Installation", "metadata": {"name": "default"},
            "spec": {"network": {"ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "VXLAN"}]}}});
        let out = api.kubectl_stdin(&["apply", "-f", "-"], &serde_yaml::to_string(&installation)?)?;
        ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
        let bed = Bed { api, namespace, nodes: [unique_name("node-a"), unique_name("node-b")], _operator: operator };
        // Nodes, so that the operator keeps their NodeNetworks (it deletes those of absent nodes).
        for node in &bed.nodes {
            let node: Node = serde_json::from_value(json!({"metadata": {"name": node}}))?;
            Api::<Node>::all(bed.api.client()).create(&PostParams::default(), &node).await?;
        }
        bed.policy_applied().await?;
        Ok(bed)
    }

    /// Waits until the operator has applied the policy and its binding.
    async fn policy_applied(&self) -> Result<ValidatingAdmissionPolicy> {
        let policies: Api<ValidatingAdmissionPolicy> = Api::all(self.api.client());
        let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(self.api.client());
        wait_for("the operator to apply the policy and its binding", WAIT, || async {
            let policy = policies.get_opt(POLICY).await.map_err(|e| e.to_string())?.ok_or("no policy")?;
            bindings.get_opt(POLICY).await.map_err(|e| e.to_string())?.ok_or("no binding")?;
            Ok(policy)
        })
        .await
    }

    fn agent(&self) -> String {
        format!("system:serviceaccount:{}:trellis-agent", self.namespace)
    }

    /// A client acting as the agent's ServiceAccount with a token bound to a pod on `node`.
    async fn agent_on(&self, node: &str) -> Result<Client> {
        Ok(self.api.impersonating(&self.agent(), &[(NODE_NAME_EXTRA, node)]).await?)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.api.kubectl(args)?;
        ensure!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        wipe(&self.api);
        for node in &self.nodes {
            let _ = self.api.kubectl(&["delete", "node", node, "--ignore-not-found", "--wait=false"]);
            let _ = self.api.kubectl(&["delete", "nodenetwork", node, "--ignore-not-found", "--wait=false"]);
            // The blocks the operator gave the node (it may be gone before it releases them).
            let query =
                format!("jsonpath={{range .items[?(@.spec.node==\"{node}\")]}}{{.metadata.name}}{{\"\\n\"}}{{end}}");
            if let Ok(out) = self.api.kubectl(&["get", "ipamblocks", "-o", &query]) {
                for block in String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()) {
                    let _ = self.api.kubectl(&["delete", "ipamblock", block, "--ignore-not-found", "--wait=false"]);
                }
            }
        }
    }
}

/// Removes the Installation, its pools and the cluster-wide objects the operator applies.
fn wipe(api: &ApiServer) {
    for args in [
        &["delete", "installation", "default", "--ignore-not-found", "--wait=false"][..],
        &["delete", "ippools", "-l", "trellis.dev/created-by=installation", "--ignore-not-found", "--wait=false"],
        &["delete", "clusterrolebinding", "trellis-agent", "--ignore-not-found", "--wait=false"],
        &["delete", "clusterrole", "trellis-agent", "--ignore-not-found", "--wait=false"],
        &["delete", "validatingadmissionpolicybinding", POLICY, "--ignore-not-found", "--wait=false"],
        &["delete", "validatingadmissionpolicy", POLICY, "--ignore-not-found", "--wait=false"],
    ] {
        match api.kubectl(args) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("cleanup: kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)),
            Err(e) => eprintln!("cleanup: {e}"),
        }
    }
}

/// What the agent does: server-side apply of its NodeNetwork, then of its status.
async fn publish(client: &Client, node: &str) -> Result<(), kube::Error> {
    write_node_network(client, node, false).await
}

/// [`publish`]; with `dry_run` admission sees the requests but nothing is stored.
async fn write_node_network(client: &Client, node: &str, dry_run: bool) -> Result<(), kube::Error> {
    let api: Api<NodeNetwork> = Api::all(client.clone());
    let mut pp = PatchParams::apply("trellis-agent").force();
    pp.dry_run = dry_run;
    let object = json!({"apiVersion": "trellis.dev/v1", "kind": "NodeNetwork", "metadata": {"name": node},
        "spec": {"address": "10.0.1.11/24"}});
    api.patch(node, &pp, &Patch::Apply(&object)).await?;
    let status = json!({"apiVersion": "trellis.dev/v1", "kind": "NodeNetwork", "metadata": {"name": node},
        "status": {"mtu": 1450}});
    api.patch_status(node, &pp, &Patch::Apply(&status)).await?;
    Ok(())
}

/// The refusal of a write, or a description of what happened instead.
fn denial(result: Result<(), kube::Error>) -> Result<kube::core::Status, String> {
    match result {
        Err(kube::Error::Api(status)) if status.message.contains("ValidatingAdmissionPolicy") => Ok(*status),
        Err(e) => Err(format!("failed otherwise: {e}")),
        Ok(()) => Err("was allowed".into()),
    }
}

/// Waits until the policy denies the agent of `own` writing `other`'s NodeNetwork (a new or
/// changed policy takes effect within about a second; the probes are dry runs, so nothing is
/// written meanwhile), then returns the denial of the real write.
async fn denied(bed: &Bed, own: &str, other: &str) -> Result<kube::core::Status> {
    let agent = bed.agent_on(own).await?;
    wait_for(&format!("the agent on {own} to be denied writing NodeNetwork {other}"), WAIT, || async {
        denial(write_node_network(&agent, other, true).await)
    })
    .await?;
    denial(publish(&agent, other).await).map_err(anyhow::Error::msg)
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    Ok(trellis_e2e::probe::wait_until_async(what, timeout, probe).await?)
}

#[tokio::test]
#[ignore = "root: real API server (make test-root)"]
async fn agent_writes_its_own_node_network_and_is_denied_any_other() -> Result<()> {
    let _serial = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    let [a, b] = &bed.nodes;

    let refusal = denied(&bed, a, b).await?;
    ensure!(refusal.code == 403, "a Forbidden denial, got {refusal:?}");
    let expected = format!("{MESSAGE}: the agent on node {a} may write NodeNetwork {a}, not {b}");
    ensure!(refusal.message.contains(&expected), "the policy's message names both nodes: {}", refusal.message);
    ensure!(refusal.message.contains(POLICY), "the message names the policy: {}", refusal.message);
    let nn: Api<NodeNetwork> = Api::all(bed.api.client());
    ensure!(nn.get_opt(b).await?.is_none(), "nothing of the denied write was stored");

    // Its own NodeNetwork, object and status.
    publish(&bed.agent_on(a).await?, a).await.context("the agent writing its own NodeNetwork")?;
    let own = nn.get(a).await?;
    ensure!(own.status.as_ref().and_then(|s| s.mtu) == Some(1450), "status written: {:?}", own.status);

    // An existing NodeNetwork of another node: neither update nor status update.
    publish(&bed.api.client(), b).await.context("an admin writes any NodeNetwork")?;
    denial(publish(&bed.agent_on(a).await?, b).await).map_err(anyhow::Error::msg).context("updating B as A")?;
    let status_only = Api::<NodeNetwork>::all(bed.agent_on(a).await?)
        .patch_status(
            b,
            &PatchParams::apply("trellis-agent").force(),
            &Patch::Apply(json!({"apiVersion": "trellis.dev/v1", "kind": "NodeNetwork", "status": {"mtu": 9000}})),
        )
        .await
        .map(|_| ());
    denial(status_only).map_err(anyhow::Error::msg).context("writing B's status as A")?;
    ensure!(nn.get(b).await?.status.and_then(|s| s.mtu) == Some(1450), "B's status unchanged");

    // A token without the node claim (not bound to a pod) writes nothing.
    let unbound = bed.api.impersonating(&bed.agent(), &[]).await?;
    let refusal = denial(publish(&unbound, a).await).map_err(anyhow::Error::msg).context("agent without node claim")?;
    ensure!(refusal.message.contains(NODE_NAME_EXTRA), "the message says what is missing: {}", refusal.message);

    // Other users are not matched: the same write as another ServiceAccount of the namespace.
    let other = format!("system:serviceaccount:{}:someone-else", bed.namespace);
    publish(&bed.api.impersonating(&other, &[(NODE_NAME_EXTRA, a)]).await?, b)
        .await
        .context("another ServiceAccount is not limited by the agent's policy")?;
    Ok(())
}

#[tokio::test]
#[ignore = "root: real API server (make test-root)"]
async fn deleted_policy_and_binding_are_applied_again() -> Result<()> {
    let _serial = SINGLETON.lock().await;
    let bed = Bed::new().await?;
    let [a, b] = &bed.nodes;
    let first = bed.policy_applied().await?;
    denied(&bed, a, b).await?;

    bed.kubectl(&["delete", "validatingadmissionpolicy", POLICY])?;
    let again = bed.policy_applied().await?;
    ensure!(again.meta().uid != first.meta().uid, "a new policy object, not the deleted one");
    denied(&bed, a, b).await.context("enforced again after the policy was re-applied")?;

    let binding: Api<ValidatingAdmissionPolicyBinding> = Api::all(bed.api.client());
    let first_binding = binding.get(POLICY).await?;
    bed.kubectl(&["delete", "validatingadmissionpolicybinding", POLICY])?;
    let again = wait_for("the binding to be applied again", WAIT, || async {
        match binding.get_opt(POLICY).await.map_err(|e| e.to_string())? {
            Some(b) if b.meta().uid != first_binding.meta().uid => Ok(b),
            _ => Err("not yet".to_string()),
        }
    })
    .await?;
    ensure!(again.spec.validation_actions == ["Deny"], "binding as rendered: {:?}", again.spec);
    denied(&bed, a, b).await.context("enforced again after the binding was re-applied")?;

    let table = bed.kubectl(&["get", "validatingadmissionpolicies", POLICY])?;
    ensure!(table.contains("VALIDATIONS") && table.contains(POLICY), "kubectl table: {table}");
    Ok(())
}
