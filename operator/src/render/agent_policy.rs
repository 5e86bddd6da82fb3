//! The admission policy that keeps each node agent to its own NodeNetwork. Pure: unit-tested
//! without an API server, enforced by the API server (tested in e2e/tests/agent_policy.rs).
//!
//! RBAC cannot say "only the object named like my node": the agent's ClusterRole lets it write
//! every NodeNetwork. A ValidatingAdmissionPolicy narrows that down with the node name claim
//! that Kubernetes (1.30+) puts into service-account tokens bound to a pod:
//! `request.userInfo.extra["authentication.kubernetes.io/node-name"]`. Requests of the agent's
//! ServiceAccount that create or update a NodeNetwork (or its status) of another node, or come
//! without the claim (a token not bound to a pod), are denied; everybody else is not matched.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec, Validation,
    Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::agent::{AGENT_NAME, labels};

/// Name of the ValidatingAdmissionPolicy and of its binding.
pub const POLICY_NAME: &str = "trellis-agent-own-nodenetwork";
/// The user-info extra key Kubernetes fills with the node of the pod a token is bound to.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// The `message` of a denial (the `messageExpression` says which node and object).
pub const MESSAGE: &str = "the trellis-agent ServiceAccount may write only the NodeNetwork of its own node";

/// What the rendering depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyInputs {
    /// The namespace of the agent's ServiceAccount.
    pub namespace: String,
    /// Owner reference to the Installation.
    pub owner: Option<OwnerReference>,
}

/// The rendered policy and its binding, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyObjects {
    pub policy: ValidatingAdmissionPolicy,
    pub binding: ValidatingAdmissionPolicyBinding,
}

/// The username the API server gives the agent's ServiceAccount.
pub fn agent_username(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{AGENT_NAME}")
}

fn meta(owner: &Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(POLICY_NAME.into()),
        labels: Some(labels()),
        owner_references: owner.clone().map(|o| vec![o]),
        ..Default::default()
    }
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

/// CEL string literal (single quotes; the names are DNS labels, the key has no quotes).
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Renders the policy and its binding.
pub fn render(inputs: &PolicyInputs) -> PolicyObjects {
    let extra = format!("request.userInfo.extra[{}]", quoted(NODE_NAME_EXTRA));
    let node_name = format!(
        "has(request.userInfo.extra) && {key} in request.userInfo.extra && size({extra}) > 0 ? {extra}[0] : ''",
        key = quoted(NODE_NAME_EXTRA),
    );
    let policy = ValidatingAdmissionPolicy {
        metadata: meta(&inputs.owner),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: strings(&[trellis_api::GROUP]),
                    api_versions: strings(&["*"]),
                    operations: strings(&["CREATE", "UPDATE"]),
                    resources: strings(&["nodenetworks", "nodenetworks/status"]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "agent-service-account".into(),
                expression: format!("request.userInfo.username == {}", quoted(&agent_username(&inputs.namespace))),
            }]),
            variables: Some(vec![Variable { name: "nodeName".into(), expression: node_name }]),
            validations: Some(vec![Validation {
                expression: "variables.nodeName != '' && object.metadata.name == variables.nodeName".into(),
                message: Some(MESSAGE.into()),
                message_expression: Some(format!(
                    "variables.nodeName == '' ? {no_claim} : {own} + variables.nodeName + {only} + variables.nodeName + ', not ' + object.metadata.name",
                    no_claim = quoted(&format!(
                        "{MESSAGE}: its credentials carry no {NODE_NAME_EXTRA} (a token not bound to a pod)"
                    )),
                    own = quoted(&format!("{MESSAGE}: the agent on node ")),
                    only = quoted(" may write NodeNetwork "),
                )),
                reason: Some("Forbidden".into()),
            }]),
            ..Default::default()
        }),
        status: None,
    };
    let binding = ValidatingAdmissionPolicyBinding {
        metadata: meta(&inputs.owner),
        spec: ValidatingAdmissionPolicyBindingSpec {
            policy_name: POLICY_NAME.into(),
            validation_actions: vec!["Deny".into()],
            ..Default::default()
        },
    };
    PolicyObjects { policy, binding }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects() -> PolicyObjects {
        render(&PolicyInputs { namespace: "trellis-system".into(), owner: None })
    }

    #[test]
    fn policy_matches_only_the_agents_writes_of_nodenetworks() {
        let spec = objects().policy.spec.unwrap();
        let rules = spec.match_constraints.unwrap().resource_rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].api_groups, strings(&["trellis.dev"]));
        assert_eq!(rules[0].operations, strings(&["CREATE", "UPDATE"]));
        assert_eq!(rules[0].resources, strings(&["nodenetworks", "nodenetworks/status"]));
        let conditions = spec.match_conditions.unwrap();
        assert_eq!(
            conditions[0].expression,
            "request.userInfo.username == 'system:serviceaccount:trellis-system:trellis-agent'"
        );
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    }

    #[test]
    fn validation_compares_the_object_name_with_the_node_name_claim() {
        let spec = objects().policy.spec.unwrap();
        let node_name = &spec.variables.unwrap()[0];
        assert_eq!(node_name.name, "nodeName");
        assert!(node_name.expression.contains("request.userInfo.extra['authentication.kubernetes.io/node-name'][0]"));
        let v = &spec.validations.unwrap()[0];
        assert_eq!(v.expression, "variables.nodeName != '' && object.metadata.name == variables.nodeName");
        assert_eq!(v.message.as_deref(), Some(MESSAGE));
        assert_eq!(v.reason.as_deref(), Some("Forbidden"));
    }

    #[test]
    fn binding_denies_with_the_policy_and_follows_the_namespace() {
        let o = render(&PolicyInputs { namespace: "other".into(), owner: None });
        let b = o.binding.spec;
        assert_eq!(b.policy_name, POLICY_NAME);
        assert_eq!(b.validation_actions, ["Deny"]);
        assert!(b.param_ref.is_none() && b.match_resources.is_none());
        let conditions = o.policy.spec.unwrap().match_conditions.unwrap();
        assert!(conditions[0].expression.ends_with("'system:serviceaccount:other:trellis-agent'"));
    }

    #[test]
    fn cel_literals_are_escaped() {
        assert_eq!(quoted("a'b\\c"), "'a\\'b\\\\c'");
    }
}
