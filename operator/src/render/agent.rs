//! The node agent's objects, rendered from the (defaulted) Installation: ServiceAccount,
//! ClusterRole, ClusterRoleBinding and the DaemonSet. Pure: unit-tested without an API server.
//!
//! The DaemonSet is a contract with `trellis-agent run`: the agent reads exactly the variables
//! named by the `ENV_*` constants below, and the test bed starts agents "exactly as the
//! DaemonSet says" from this rendering. Change them together.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, SecurityContext, ServiceAccount, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

/// Name of the agent's DaemonSet, ServiceAccount, ClusterRole and ClusterRoleBinding.
pub const AGENT_NAME: &str = "trellis-agent";
/// Name of the agent's container in the pod.
pub const CONTAINER_NAME: &str = "agent";
/// The agent's command line in Kubernetes mode.
pub const AGENT_COMMAND: [&str; 2] = ["trellis-agent", "run"];

/// The node's name (downward API `spec.nodeName`).
pub const ENV_NODE_NAME: &str = "NODE_NAME";
/// Where the agent writes the CNI conflist (the host's CNI conf dir, mounted at the same path).
pub const ENV_CNI_CONF_DIR: &str = "TRELLIS_CNI_CONF_DIR";
/// The host-local IPAM data dir the conflist names (mounted at the same path).
pub const ENV_IPAM_DATA_DIR: &str = "TRELLIS_IPAM_DATA_DIR";
/// Address of the agent's /healthz, /readyz and /metrics.
pub const ENV_HEALTH_ADDR: &str = "TRELLIS_HEALTH_ADDR";
/// Where the agent reads and writes the `net.*` sysctls: the host's `/proc/sys/net`, mounted
/// writable at [`SYSCTL_NET_MOUNT`] (an unprivileged container's own `/proc/sys` is read-only;
/// the entries follow the opener's network namespace, the host's on the host network).
pub const ENV_SYSCTL_NET_DIR: &str = "TRELLIS_SYSCTL_NET_DIR";
/// Where the host's `/proc/sys/net` is mounted in the agent's container (Cilium's place).
pub const SYSCTL_NET_MOUNT: &str = "/host/proc/sys/net";
/// Optional: the agent's periodic resync (e.g. `30s`); the DaemonSet leaves it unset.
pub const ENV_RESYNC_INTERVAL: &str = "TRELLIS_RESYNC_INTERVAL";

/// Port of the agent's health endpoints on the host network.
pub const AGENT_HEALTH_PORT: i32 = 9099;
/// host-local IPAM's data directory on the nodes.
pub const IPAM_DATA_DIR: &str = "/var/lib/cni/networks";
/// Default CNI configuration directory on the nodes.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// Default CNI plugin binary directory on the nodes.
pub const DEFAULT_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// Pod-template annotation with the hash of everything rendered into the template: a change of
/// the rendering changes the template, and the DaemonSet controller rolls the agents.
pub const CONFIG_HASH_ANNOTATION: &str = "trellis.dev/config-hash";

/// What the rendering depends on.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentInputs {
    pub namespace: String,
    /// Full image reference (registry already applied, see [`image`]).
    pub image: String,
    pub cni_conf_dir: String,
    pub cni_bin_dir: String,
    /// Owner reference to the Installation, so the objects go when it goes.
    pub owner: Option<OwnerReference>,
}

/// The rendered objects, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentObjects {
    pub service_account: ServiceAccount,
    pub cluster_role: ClusterRole,
    pub cluster_role_binding: ClusterRoleBinding,
    pub daemon_set: DaemonSet,
}

/// `registry` (Installation `spec.registry`, e.g. `registry.example.com/`) in front of `image`.
pub fn image(registry: Option<&str>, image: &str) -> String {
    match registry.map(|r| r.trim_end_matches('/')).filter(|r| !r.is_empty()) {
        Some(r) => format!("{r}/{image}"),
        None => image.to_string(),
    }
}

/// Labels of the agent's pods (and the DaemonSet's selector).
pub fn selector_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".to_string(), AGENT_NAME.to_string())])
}

pub(crate) fn labels() -> BTreeMap<String, String> {
    let mut l = selector_labels();
    l.insert(crate::MANAGED_BY_LABEL.into(), crate::MANAGED_BY.into());
    l
}

fn meta(name: &str, namespace: Option<&str>, owner: &Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels()),
        owner_references: owner.clone().map(|o| vec![o]),
        ..Default::default()
    }
}

/// Renders every object of the node agent.
pub fn render(inputs: &AgentInputs) -> AgentObjects {
    let ns = inputs.namespace.as_str();
    AgentObjects {
        service_account: ServiceAccount { metadata: meta(AGENT_NAME, Some(ns), &inputs.owner), ..Default::default() },
        cluster_role: ClusterRole {
            metadata: meta(AGENT_NAME, None, &inputs.owner),
            rules: Some(cluster_role_rules()),
            ..Default::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: meta(AGENT_NAME, None, &inputs.owner),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: AGENT_NAME.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: AGENT_NAME.into(),
                namespace: Some(ns.into()),
                ..Default::default()
            }]),
        },
        daemon_set: daemon_set(inputs),
    }
}

/// Least privilege for the agent: read the cluster's network state, write only its own
/// NodeNetwork (and its status) and Events.
pub fn cluster_role_rules() -> Vec<PolicyRule> {
    let rule = |groups: &[&str], resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let read = ["get", "list", "watch"];
    vec![
        rule(
            &[trellis_api::GROUP],
            &["ippools", "ipamblocks", "nodenetworks", "installations", "globalnetworkpolicies"],
            &read,
        ),
        // Nodes for the node's identity; pods, namespaces and network policies for policy.
        rule(&[""], &["nodes", "pods", "namespaces"], &read),
        rule(&["networking.k8s.io"], &["networkpolicies"], &read),
        rule(&[trellis_api::GROUP], &["nodenetworks", "nodenetworks/status"], &["create", "update", "patch"]),
        rule(&["", "events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource { path: path.into(), type_: Some(type_.into()) }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(AGENT_HEALTH_PORT),
            host: Some("127.0.0.1".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(6),
        ..Default::default()
    }
}

/// The pod template without the config hash.
fn pod_template(inputs: &AgentInputs) -> PodTemplateSpec {
    let health_addr = format!("0.0.0.0:{AGENT_HEALTH_PORT}");
    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(inputs.image.clone()),
        command: Some(AGENT_COMMAND.iter().map(|s| s.to_string()).collect()),
        env: Some(vec![
            EnvVar {
                name: ENV_NODE_NAME.into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector { field_path: "spec.nodeName".into(), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            },
            env(ENV_CNI_CONF_DIR, &inputs.cni_conf_dir),
            env(ENV_IPAM_DATA_DIR, IPAM_DATA_DIR),
            env(ENV_HEALTH_ADDR, &health_addr),
            env(ENV_SYSCTL_NET_DIR, SYSCTL_NET_MOUNT),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("health".into()),
            container_port: AGENT_HEALTH_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            ..Default::default()
        }),
        liveness_probe: Some(probe("/healthz")),
        readiness_probe: Some(probe("/readyz")),
        volume_mounts: Some(vec![
            mount("cni-conf-dir", &inputs.cni_conf_dir, false),
            mount("cni-bin-dir", &inputs.cni_bin_dir, false),
            mount("ipam-data-dir", IPAM_DATA_DIR, false),
            mount("lib-modules", "/lib/modules", true),
            mount("proc-sys-net", SYSCTL_NET_MOUNT, false),
        ]),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels()), ..Default::default() }),
        spec: Some(PodSpec {
            host_network: Some(true),
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            priority_class_name: Some("system-node-critical".into()),
            service_account_name: Some(AGENT_NAME.into()),
            tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
            containers: vec![container],
            volumes: Some(vec![
                host_path("cni-conf-dir", &inputs.cni_conf_dir, "DirectoryOrCreate"),
                host_path("cni-bin-dir", &inputs.cni_bin_dir, "DirectoryOrCreate"),
                host_path("ipam-data-dir", IPAM_DATA_DIR, "DirectoryOrCreate"),
                host_path("lib-modules", "/lib/modules", "Directory"),
                host_path("proc-sys-net", "/proc/sys/net", "Directory"),
            ]),
            ..Default::default()
        }),
    }
}

/// Hash of a pod template (hex, 16 digits): equal renderings, equal hashes.
pub fn config_hash(template: &PodTemplateSpec) -> String {
    // Serializing plain k8s-openapi structs cannot fail.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn daemon_set(inputs: &AgentInputs) -> DaemonSet {
    let mut template = pod_template(inputs);
    let hash = config_hash(&template);
    if let Some(meta) = template.metadata.as_mut() {
        meta.annotations = Some(BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), hash)]));
    }
    DaemonSet {
        metadata: meta(AGENT_NAME, Some(&inputs.namespace), &inputs.owner),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector_labels()), ..Default::default() },
            template,
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The config hash a DaemonSet's pod template carries, if any.
pub fn template_hash(ds: &DaemonSet) -> Option<&str> {
    ds.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(CONFIG_HASH_ANNOTATION).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> AgentInputs {
        AgentInputs {
            namespace: "trellis-system".into(),
            image: image(None, "trellis/agent:0.1.0"),
            cni_conf_dir: DEFAULT_CNI_CONF_DIR.into(),
            cni_bin_dir: DEFAULT_CNI_BIN_DIR.into(),
            owner: None,
        }
    }

    fn container(ds: &DaemonSet) -> &Container {
        &ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
    }

    fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
        c.env.as_ref().unwrap().iter().find(|e| e.name == name)
    }

    #[test]
    fn registry_goes_in_front_of_the_image() {
        assert_eq!(image(Some("registry.example.com/"), "trellis/agent:1"), "registry.example.com/trellis/agent:1");
        assert_eq!(image(Some("registry.example.com"), "trellis/agent:1"), "registry.example.com/trellis/agent:1");
        assert_eq!(image(Some(""), "trellis/agent:1"), "trellis/agent:1");
        assert_eq!(image(None, "trellis/agent:1"), "trellis/agent:1");
    }

    #[test]
    fn daemonset_carries_the_agent_contract() {
        let ds = render(&inputs()).daemon_set;
        let spec = ds.spec.as_ref().unwrap();
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.priority_class_name.as_deref(), Some("system-node-critical"));
        assert_eq!(pod.service_account_name.as_deref(), Some(AGENT_NAME));
        let tolerations = pod.tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tolerations[0].key, None, "tolerates every taint");

        let c = container(&ds);
        assert_eq!(c.name, "agent");
        assert_eq!(c.image.as_deref(), Some("trellis/agent:0.1.0"));
        assert_eq!(c.command.as_deref(), Some(&["trellis-agent".to_string(), "run".to_string()][..]));
        let names: Vec<&str> = c.env.as_ref().unwrap().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "NODE_NAME",
                "TRELLIS_CNI_CONF_DIR",
                "TRELLIS_IPAM_DATA_DIR",
                "TRELLIS_HEALTH_ADDR",
                "TRELLIS_SYSCTL_NET_DIR"
            ]
        );
        let node = env_value(c, ENV_NODE_NAME).unwrap();
        assert_eq!(node.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "spec.nodeName");
        assert_eq!(env_value(c, ENV_CNI_CONF_DIR).unwrap().value.as_deref(), Some("/etc/cni/net.d"));
        assert_eq!(env_value(c, ENV_IPAM_DATA_DIR).unwrap().value.as_deref(), Some("/var/lib/cni/networks"));
        assert_eq!(env_value(c, ENV_HEALTH_ADDR).unwrap().value.as_deref(), Some("0.0.0.0:9099"));

        let caps = c.security_context.as_ref().unwrap().capabilities.as_ref().unwrap();
        assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..]));
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        for (probe, path) in [(&c.liveness_probe, "/healthz"), (&c.readiness_probe, "/readyz")] {
            let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::Int(9099));
        }
        let strategy = spec.update_strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        assert_eq!(strategy.rolling_update.as_ref().unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn host_paths_are_mounted_where_the_env_says() {
        let mut i = inputs();
        i.cni_conf_dir = "/etc/custom/net.d".into();
        i.cni_bin_dir = "/usr/libexec/cni".into();
        let ds = render(&i).daemon_set;
        let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        let host = |name: &str| {
            pod.volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .host_path
                .as_ref()
                .unwrap()
                .path
                .clone()
        };
        let mounted = |name: &str| c.volume_mounts.as_ref().unwrap().iter().find(|m| m.name == name).unwrap().clone();
        assert_eq!(host("cni-conf-dir"), "/etc/custom/net.d");
        assert_eq!(mounted("cni-conf-dir").mount_path, "/etc/custom/net.d");
        assert_eq!(env_value(c, ENV_CNI_CONF_DIR).unwrap().value.as_deref(), Some("/etc/custom/net.d"));
        assert_eq!(host("cni-bin-dir"), "/usr/libexec/cni");
        assert_eq!(host("ipam-data-dir"), IPAM_DATA_DIR);
        assert_eq!(mounted("ipam-data-dir").mount_path, IPAM_DATA_DIR);
        assert_eq!(host("lib-modules"), "/lib/modules");
        assert_eq!(mounted("lib-modules").read_only, Some(true));
        assert_eq!(host("proc-sys-net"), "/proc/sys/net");
        assert_eq!(mounted("proc-sys-net").mount_path, SYSCTL_NET_MOUNT);
        assert_eq!(mounted("proc-sys-net").read_only, None);
        assert_eq!(env_value(c, ENV_SYSCTL_NET_DIR).unwrap().value.as_deref(), Some(SYSCTL_NET_MOUNT));
    }

    #[test]
    fn config_hash_changes_exactly_when_the_template_changes() {
        let a = render(&inputs()).daemon_set;
        let again = render(&inputs()).daemon_set;
        assert_eq!(template_hash(&a), template_hash(&again), "same inputs, same hash");
        let mut i = inputs();
        i.image = image(Some("registry.example.com"), "trellis/agent:0.1.0");
        let b = render(&i).daemon_set;
        assert_ne!(template_hash(&a), template_hash(&b), "a new image changes the hash");
        let mut i = inputs();
        i.cni_conf_dir = "/etc/other".into();
        assert_ne!(template_hash(&a), template_hash(&render(&i).daemon_set));
        // The owner is object metadata, not the template: no roll for it.
        let mut i = inputs();
        i.owner = Some(OwnerReference { name: "default".into(), ..Default::default() });
        assert_eq!(template_hash(&a), template_hash(&render(&i).daemon_set));
    }

    #[test]
    fn agent_role_is_least_privilege() {
        let rules = cluster_role_rules();
        let allows = |group: &str, resource: &str, verb: &str| {
            rules.iter().any(|r| {
                r.api_groups.as_ref().unwrap().iter().any(|g| g == group)
                    && r.resources.as_ref().unwrap().iter().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
        };
        for res in ["ippools", "ipamblocks", "nodenetworks", "installations"] {
            for verb in ["get", "list", "watch"] {
                assert!(allows("trellis.dev", res, verb), "{verb} {res}");
            }
        }
        assert!(allows("", "nodes", "watch"));
        for (group, res) in [
            ("", "pods"),
            ("", "namespaces"),
            ("networking.k8s.io", "networkpolicies"),
            ("trellis.dev", "globalnetworkpolicies"),
        ] {
            assert!(allows(group, res, "watch") && !allows(group, res, "patch"), "policy reads {res}, never writes it");
        }
        assert!(allows("trellis.dev", "nodenetworks/status", "patch"));
        assert!(allows("events.k8s.io", "events", "create"));
        assert!(!allows("trellis.dev", "ippools", "patch"), "the agent never writes pools");
        assert!(!allows("trellis.dev", "ipamblocks", "create"), "blocks are the operator's");
        assert!(!allows("", "nodes", "patch"));
        assert!(rules.iter().all(|r| !r.verbs.iter().any(|v| v == "*" || v == "delete")));
        assert!(rules.iter().all(|r| !r.resources.as_ref().unwrap().iter().any(|x| x == "*")));
    }

    #[test]
    fn binding_names_the_service_account_in_the_namespace() {
        let o = render(&inputs());
        let s = &o.cluster_role_binding.subjects.as_ref().unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("ServiceAccount", AGENT_NAME, Some("trellis-system"))
        );
        assert_eq!(o.cluster_role_binding.role_ref.name, AGENT_NAME);
        assert_eq!(o.service_account.metadata.namespace.as_deref(), Some("trellis-system"));
    }
}
