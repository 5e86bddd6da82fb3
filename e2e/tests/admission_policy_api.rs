//! admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy on the test bed's API server:
//! policies and bindings are validated when written (CEL compiled), and enforced on requests
//! as kube-apiserver enforces them (message, messageExpression, Deny and Warn, matchConstraints
//! with an object selector, the requesting user and its `extra` from impersonation).
//!
//! The server is shared by parallel tests, so every policy here matches only ConfigMaps
//! labelled for this test (objectSelector), in a namespace of its own.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Error as KubeError};
use serde_json::{Value, json};
use trellis_e2e::apiserver::{ApiServer, unique_name};

/// Policies take effect within about a second of being written.
const WAIT: Duration = Duration::from_secs(30);

/// A namespace, and a policy + binding that match only ConfigMaps labelled `e2e-vap=<namespace>`;
/// all deleted on drop.
struct Scoped {
    api: ApiServer,
    namespace: String,
    policy: String,
}

impl Scoped {
    async fn new(api: &ApiServer, validations: Value, actions: &[&str]) -> Result<Self> {
        let namespace = unique_name("e2e-vap");
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace, "labels": {"e2e-vap": namespace}}}))?;
        Api::<Namespace>::all(api.client()).create(&PostParams::default(), &ns).await?;
        let scoped = Scoped { api: api.clone(), policy: namespace.clone(), namespace };
        scoped.apply_policy(validations).await?;
        scoped.apply_binding(actions).await?;
        Ok(scoped)
    }

    async fn apply_policy(&self, validations: Value) -> Result<ValidatingAdmissionPolicy> {
        let policy = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": self.policy},
        "spec": {
            "matchConstraints": {
                "objectSelector": {"matchLabels": {"e2e-vap": self.namespace}},
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["configmaps"]}]
            },
            "validations": validations
        }});
        Ok(Api::<ValidatingAdmissionPolicy>::all(self.api.client())
            .patch(&self.policy, &PatchParams::apply("trellis-e2e").force(), &Patch::Apply(policy))
            .await?)
    }

    async fn apply_binding(&self, actions: &[&str]) -> Result<()> {
        let binding = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": self.policy}, "spec": {"policyName": self.policy, "validationActions": actions}});
        Api::<ValidatingAdmissionPolicyBinding>::all(self.api.client())
            .patch(&self.policy, &PatchParams::apply("trellis-e2e").force(), &Patch::Apply(binding))
            .await?;
        Ok(())
    }

    fn config_maps(&self, client: Client) -> Api<ConfigMap> {
        Api::namespaced(client, &self.namespace)
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        for args in [
            ["delete", "validatingadmissionpolicybinding", &self.policy, "--ignore-not-found"],
            ["delete", "validatingadmissionpolicy", &self.policy, "--ignore-not-found"],
            ["delete", "namespace", &self.namespace, "--ignore-not-found"],
        ] {
            if let Err(e) = self.api.kubectl(&args) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A ConfigMap the test's policy selects (labelled with the namespace of `api`).
fn config_map(api: &Api<ConfigMap>, name: &str, data: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"e2e-vap": api.namespace()}}, "data": data}))
        .unwrap()
}

/// The manifest of such a ConfigMap for kubectl.
fn config_map_yaml(namespace: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{e2e-vap: {namespace}}}}}\n"
    )
}

async fn create(api: &Api<ConfigMap>, name: &str, data: Value) -> Result<(), KubeError> {
    api.create(&PostParams::default(), &config_map(api, name, data)).await.map(|_| ())
}

/// A create that admission sees but nothing stores: for waiting until a policy is in force.
async fn dry_run(api: &Api<ConfigMap>, name: &str, data: Value) -> Result<(), KubeError> {
    api.create(&PostParams { dry_run: true, ..Default::default() }, &config_map(api, name, data)).await.map(|_| ())
}

/// The refusal of a request by an admission policy.
fn refusal(result: Result<(), KubeError>) -> Result<kube::core::Status, String> {
    match result {
        Err(KubeError::Api(status)) if status.message.contains("ValidatingAdmissionPolicy") => Ok(*status),
        Err(e) => Err(format!("failed otherwise: {e}")),
        Ok(()) => Err("was allowed".into()),
    }
}

async fn wait_for<T, F, Fut>(what: &str, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    Ok(trellis_e2e::probe::wait_until_async(what, WAIT, probe).await?)
}

#[tokio::test]
#[ignore = "root: real API server (make test-root)"]
async fn policy_denies_with_its_message_and_message_expression_only_where_it_matches() -> Result<()> {
    let api = ApiServer::from_env().await?;
    let scoped = Scoped::new(
        &api,
        json!([
            {"expression": "!has(object.data) || !('forbidden' in object.data)", "message": "no key may be named forbidden"},
            {"expression": "object.metadata.name.startsWith('ok-')", "messageExpression": "'name ' + object.metadata.name + ' must start with ok-'"}
        ]),
        &["Deny"],
    )
    .await?;
    let cms = scoped.config_maps(api.client());
    let status = wait_for("the policy to deny a ConfigMap named bad", || async {
        refusal(dry_run(&cms, "bad", json!({})).await)
    })
    .await?;
    let policy = &scoped.policy;
    ensure!(status.code == 422, "Invalid by default: {status:?}");
    ensure!(
        status.message.contains(&format!(
            "ValidatingAdmissionPolicy '{policy}' with binding '{policy}' denied request: name bad must start with ok-"
        )),
        "messageExpression: {}",
        status.message
    );
    let status = refusal(create(&cms, "ok-1", json!({"forbidden": "x"})).await).map_err(anyhow::Error::msg)?;
    ensure!(status.message.contains("no key may be named forbidden"), "message: {}", status.message);
    create(&cms, "ok-2", json!({"fine": "x"})).await.context("a ConfigMap the policy allows")?;
    // UPDATE is matched too.
    let update = cms.patch("ok-2", &PatchParams::default(), &Patch::Merge(json!({"data": {"forbidden": "y"}}))).await;
    ensure!(refusal(update.map(|_| ())).is_ok(), "an update adding the key is denied");

    // Objects the policy's objectSelector does not select are not affected.
    let unlabelled: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "data": {"forbidden": "x"}}))?;
    cms.create(&PostParams::default(), &unlabelled).await.context("an object the policy does not select")?;

    // Warn instead of Deny: the request passes, the client gets the message as a warning.
    scoped.apply_binding(&["Warn"]).await?;
    let out = wait_for("the binding's Warn to let a ConfigMap named bad-2 in", || async {
        let out = api
            .kubectl_stdin(&["create", "-f", "-"], &config_map_yaml(&scoped.namespace, "bad-2"))
            .map_err(|e| e.to_string())?;
        if out.status.success() { Ok(out) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    })
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("Warning:") && stderr.contains("name bad-2 must start with ok-"),
        "kubectl warning: {stderr}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "root: real API server (make test-root)"]
async fn impersonated_users_and_their_extra_reach_the_policy() -> Result<()> {
    let api = ApiServer::from_env().await?;
    let user = unique_name("e2e-user");
    let scoped = Scoped::new(
        &api,
        json!([{
            "expression": format!("request.userInfo.username != '{user}' || (has(request.userInfo.extra) && 'example.com/color' in request.userInfo.extra && request.userInfo.extra['example.com/color'] == ['blue'])"),
            "messageExpression": "request.userInfo.username + ' is not blue'"
        }]),
        &["Deny"],
    )
    .await?;
    let red = scoped.config_maps(api.impersonating(&user, &[("example.com/color", "red")]).await?);
    let status =
        wait_for("the policy to deny the red user", || async { refusal(dry_run(&red, "red", json!({})).await) })
            .await?;
    refusal(create(&red, "red", json!({})).await).map_err(anyhow::Error::msg).context("the red user")?;
    ensure!(status.message.contains(&format!("{user} is not blue")), "message: {}", status.message);
    let blue = scoped.config_maps(api.impersonating(&user, &[("example.com/color", "blue")]).await?);
    create(&blue, "blue", json!({})).await.context("the blue user")?;
    let stored = scoped.config_maps(api.client()).get("blue").await?;
    ensure!(stored.metadata.name.as_deref() == Some("blue"), "stored");

    // kubectl --as sends the same headers; without the extra the user is refused.
    let out = api.kubectl_stdin(&["create", "-f", "-", "--as", &user], &config_map_yaml(&scoped.namespace, "plain"))?;
    ensure!(!out.status.success(), "kubectl --as without the extra is denied");
    ensure!(String::from_utf8_lossy(&out.stderr).contains("is not blue"), "{}", String::from_utf8_lossy(&out.stderr));
    // The admin (not matched by the expression's user) is not affected.
    create(&scoped.config_maps(api.client()), "admin", json!({})).await.context("admin")?;
    Ok(())
}

#[tokio::test]
#[ignore = "root: real API server (make test-root)"]
async fn bad_policies_and_bindings_are_refused_when_written() -> Result<()> {
    let api = ApiServer::from_env().await?;
    let name = unique_name("e2e-vap-bad");
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(api.client());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(api.client());
    let rules = json!({"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}]});
    let cases = [
        (
            json!({"matchConstraints": rules, "validations": [{"expression": "object.metadata.name.("}]}),
            "spec.validations[0].expression: Invalid value: \"object.metadata.name.(\": compilation failed",
        ),
        (
            json!({"matchConstraints": rules, "validations": [{"expression": "object.metadata.name"}]}),
            "must evaluate to bool",
        ),
        (
            json!({"matchConstraints": rules, "validations": [{"expression": "true", "messageExpression": "1"}]}),
            "spec.validations[0].messageExpression",
        ),
        (json!({"validations": [{"expression": "true"}]}), "spec.matchConstraints.resourceRules: Required value"),
        (json!({"matchConstraints": rules}), "spec.validations: Required value"),
        (
            json!({"matchConstraints": rules, "failurePolicy": "Maybe", "validations": [{"expression": "true"}]}),
            "spec.failurePolicy: Unsupported value: \"Maybe\"",
        ),
    ];
    for (spec, expected) in cases {
        let policy: ValidatingAdmissionPolicy =
            serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
        let err = policies
            .create(&PostParams::default(), &policy)
            .await
            .err()
            .with_context(|| format!("{spec} was accepted"))?;
        let KubeError::Api(status) = err else { bail!("{spec}: {err}") };
        ensure!(
            status.code == 422 && status.message.contains(expected),
            "{spec}: {:?} lacks {expected:?}",
            status.message
        );
    }
    for (actions, expected) in [
        (json!([]), "spec.validationActions: Required value"),
        (json!(["Deny", "Warn"]), "must not contain both Deny and Warn"),
        (json!(["Deny", "Deny"]), "spec.validationActions[1]: Duplicate value"),
        (json!(["Shout"]), "spec.validationActions[0]: Unsupported value: \"Shout\""),
    ] {
        let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"policyName": name, "validationActions": actions}}),
        )?;
        let err = bindings
            .create(&PostParams::default(), &binding)
            .await
            .err()
            .with_context(|| format!("{actions} was accepted"))?;
        let KubeError::Api(status) = err else { bail!("{actions}: {err}") };
        ensure!(
            status.code == 422 && status.message.contains(expected),
            "{actions}: {:?} lacks {expected:?}",
            status.message
        );
    }
    ensure!(policies.get_opt(&name).await?.is_none() && bindings.get_opt(&name).await?.is_none(), "nothing stored");

    // A valid one is defaulted like kube does and shown by kubectl.
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(
        json!({"metadata": {"name": name}, "spec": {"matchConstraints": rules, "validations": [{"expression": "true"}]}}),
    )?;
    let stored = policies.create(&PostParams::default(), &policy).await?;
    let spec = stored.spec.clone().unwrap();
    let constraints = spec.match_constraints.unwrap();
    ensure!(spec.failure_policy.as_deref() == Some("Fail"), "failurePolicy default");
    ensure!(constraints.match_policy.as_deref() == Some("Equivalent"), "matchPolicy default");
    ensure!(constraints.namespace_selector.is_some() && constraints.object_selector.is_some(), "selectors default");
    ensure!(constraints.resource_rules.unwrap()[0].scope.as_deref() == Some("*"), "scope default");
    ensure!(stored.metadata.generation == Some(1), "generation");
    let out = api.kubectl(&["get", "validatingadmissionpolicy", &name])?;
    let table = String::from_utf8_lossy(&out.stdout);
    ensure!(table.contains("VALIDATIONS") && table.contains("PARAMKIND"), "table: {table}");
    policies.delete(&name, &DeleteParams::default()).await?;
    Ok(())
}
