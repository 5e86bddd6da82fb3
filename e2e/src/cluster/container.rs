//! A pod template resolved for one node: what a kubelet hands its container runtime.
//!
//! [`resolve`] is pure: it takes the DaemonSet's pod template and the facts about the node
//! ([`NodeFacts`]) and produces one [`ContainerSpec`] per container with everything a runtime
//! needs and nothing left to look up: the command line, the environment with downward-API
//! fields and `$(VAR)` references resolved, hostPath volumes mapped to this node's directory
//! (all "nodes" share one filesystem), capabilities and the HTTP probes. Whatever the test bed
//! cannot honour (init containers, ConfigMap/Secret environment, non-hostPath volumes, a pod
//! that is not hostNetwork) is an error naming the field, never silently dropped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// One container, ready to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The pod's name (e.g. `trellis-agent-node1`).
    pub pod: String,
    pub namespace: String,
    /// The container's name in the pod.
    pub name: String,
    pub image: String,
    /// `command` then `args`, `$(VAR)` references expanded. Never empty.
    pub argv: Vec<String>,
    /// The complete environment, in template order.
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    pub capabilities: CapabilityChange,
    pub readiness: Option<HttpProbe>,
    pub liveness: Option<HttpProbe>,
}

/// A volume mount: `host_path` is already this node's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub read_only: bool,
}

/// `securityContext.capabilities`, names without the `CAP_` prefix, upper case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityChange {
    pub add: Vec<String>,
    pub drop: Vec<String>,
}

impl CapabilityChange {
    /// The bounding set for `setpriv --bounding-set`, e.g. `-all,+net_admin,+net_raw`.
    pub fn setpriv_bounding_set(&self) -> String {
        let mut parts: Vec<String> = self.drop.iter().map(|c| format!("-{}", c.to_lowercase())).collect();
        parts.extend(self.add.iter().map(|c| format!("+{}", c.to_lowercase())));
        parts.join(",")
    }
}

/// An `httpGet` probe, seen from the node's network namespace (the pod is hostNetwork).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// What the kubelet knows about its node and the pod it starts there.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub node: String,
    pub node_ip: Ipv4Addr,
    pub pod: String,
    pub namespace: String,
    /// This node's stand-in for `/`: hostPath `/x/y` becomes `<root>/x/y`.
    pub root: PathBuf,
    /// Host paths that stay the machine's own because every node shares them (the kernel's
    /// `/lib/modules`): mapped to themselves, never written by the test bed.
    pub shared_paths: Vec<PathBuf>,
    /// Environment the test bed adds after the template's (e.g. `KUBECONFIG`, standing in for
    /// the service-account credentials a real pod gets), and mounts that go with it.
    pub extra_env: Vec<(String, String)>,
    pub extra_mounts: Vec<Mount>,
}

impl NodeFacts {
    /// Where hostPath `path` lives for this node.
    pub fn host_path(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if self.shared_paths.iter().any(|s| p.starts_with(s)) {
            return p.to_path_buf();
        }
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }
}

/// Why a template cannot be run as written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pod template: {0}")]
pub struct Unsupported(pub String);

/// Resolves every container of `template` for the node in `facts`.
pub fn resolve(template: &PodTemplateSpec, facts: &NodeFacts) -> Result<Vec<ContainerSpec>, Unsupported> {
    let spec = template.spec.as_ref().ok_or_else(|| Unsupported("no spec".into()))?;
    if spec.host_network != Some(true) {
        return Err(Unsupported("only hostNetwork pods run on the test bed (spec.hostNetwork is not true)".into()));
    }
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
        return Err(Unsupported("spec.initContainers are not supported".into()));
    }
    let mut volumes = BTreeMap::new();
    for v in spec.volumes.iter().flatten() {
        let hp = v
            .host_path
            .as_ref()
            .ok_or_else(|| Unsupported(format!("volume {}: only hostPath volumes are supported", v.name)))?;
        volumes.insert(v.name.clone(), (facts.host_path(&hp.path), hp.type_.clone().unwrap_or_default()));
    }
    spec.containers.iter().map(|c| container(c, spec.service_account_name.as_deref(), &volumes, facts)).collect()
}

/// The hostPath directories a template needs created (`DirectoryOrCreate`), per the mapping.
pub fn directories_to_create(template: &PodTemplateSpec, facts: &NodeFacts) -> Vec<PathBuf> {
    let volumes = template.spec.as_ref().and_then(|s| s.volumes.as_ref());
    volumes
        .into_iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref())
        .filter(|hp| hp.type_.as_deref() == Some("DirectoryOrCreate"))
        .map(|hp| facts.host_path(&hp.path))
        .filter(|p| !facts.shared_paths.iter().any(|s| p.starts_with(s)))
        .collect()
}

fn container(
    c: &Container,
    service_account: Option<&str>,
    volumes: &BTreeMap<String, (PathBuf, String)>,
    facts: &NodeFacts,
) -> Result<ContainerSpec, Unsupported> {
    let what = |detail: String| Unsupported(format!("container {}: {detail}", c.name));
    let mut env: Vec<(String, String)> = Vec::new();
    for var in c.env.iter().flatten() {
        let value = env_value(var, service_account, facts, &env).map_err(what)?;
        env.push((var.name.clone(), value));
    }
    if c.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(what("envFrom is not supported".into()));
    }
    env.extend(facts.extra_env.iter().cloned());
    let command =
        c.command.clone().ok_or_else(|| what("no command (the image's entrypoint is unknown here)".into()))?;
    let argv: Vec<String> = command.iter().chain(c.args.iter().flatten()).map(|a| expand(a, &env)).collect();
    if argv.is_empty() {
        return Err(what("empty command".into()));
    }
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let (host_path, _) =
            volumes.get(&m.name).ok_or_else(|| what(format!("volumeMount {} names no volume", m.name)))?;
        if m.sub_path.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(what(format!("volumeMount {}: subPath is not supported", m.name)));
        }
        mounts.push(Mount {
            host_path: host_path.clone(),
            container_path: PathBuf::from(&m.mount_path),
            read_only: m.read_only == Some(true),
        });
    }
    mounts.extend(facts.extra_mounts.iter().cloned());
    let caps = c.security_context.as_ref().and_then(|s| s.capabilities.as_ref());
    let capabilities = CapabilityChange {
        add: caps.and_then(|c| c.add.clone()).unwrap_or_default().iter().map(|s| cap_name(s)).collect(),
        drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default().iter().map(|s| cap_name(s)).collect(),
    };
    Ok(ContainerSpec {
        pod: facts.pod.clone(),
        namespace: facts.namespace.clone(),
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        argv,
        env,
        mounts,
        capabilities,
        readiness: http_probe(c.readiness_probe.as_ref(), c).map_err(what)?,
        liveness: http_probe(c.liveness_probe.as_ref(), c).map_err(what)?,
    })
}

fn cap_name(s: &str) -> String {
    s.trim_start_matches("CAP_").to_uppercase()
}

fn env_value(
    var: &EnvVar,
    service_account: Option<&str>,
    facts: &NodeFacts,
    earlier: &[(String, String)],
) -> Result<String, String> {
    if let Some(value) = &var.value {
        return Ok(expand(value, earlier));
    }
    let Some(from) = &var.value_from else { return Ok(String::new()) };
    let field =
        from.field_ref.as_ref().ok_or_else(|| format!("env {}: only valueFrom.fieldRef is supported", var.name))?;
    match field.field_path.as_str() {
        "spec.nodeName" => Ok(facts.node.clone()),
        "metadata.name" => Ok(facts.pod.clone()),
        "metadata.namespace" => Ok(facts.namespace.clone()),
        // hostNetwork: the pod's address is the node's.
        "status.hostIP" | "status.podIP" => Ok(facts.node_ip.to_string()),
        "spec.serviceAccountName" => Ok(service_account.unwrap_or("default").to_string()),
        other => Err(format!("env {}: fieldRef {other} is not supported", var.name)),
    }
}

/// Kubernetes' `$(VAR)` expansion against the variables defined so far; `$$` escapes, an
/// unknown reference stays as written.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(inner) = tail.strip_prefix("$(")
            && let Some(end) = inner.find(')')
            && let Some((_, v)) = env.iter().rev().find(|(k, _)| *k == inner[..end])
        {
            out.push_str(v);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn http_probe(probe: Option<&Probe>, c: &Container) -> Result<Option<HttpProbe>, String> {
    let Some(probe) = probe else { return Ok(None) };
    let get = probe.http_get.as_ref().ok_or("only httpGet probes are supported")?;
    let port = match &get.port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("probe port {p}"))?,
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("probe port {name} names no container port"))?,
    };
    Ok(Some(HttpProbe {
        host: get.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
        port,
        path: get.path.clone().unwrap_or_else(|| "/".into()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> NodeFacts {
        NodeFacts {
            node: "node1".into(),
            node_ip: Ipv4Addr::new(10, 0, 1, 11),
            pod: "trellis-agent-node1".into(),
            namespace: "trellis-system".into(),
            root: PathBuf::from("/tmp/lab/node1/root"),
            shared_paths: vec![PathBuf::from("/lib/modules")],
            extra_env: vec![("KUBECONFIG".into(), "/var/run/trellis/kubeconfig".into())],
            extra_mounts: Vec::new(),
        }
    }

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json!({ "spec": spec })).unwrap()
    }

    fn agent_like() -> PodTemplateSpec {
        template(json!({
            "hostNetwork": true,
            "serviceAccountName": "trellis-agent",
            "containers": [{
                "name": "agent", "image": "trellis/agent:1", "command": ["trellis-agent", "run"],
                "args": ["--node=$(NODE_NAME)", "$$(kept)"],
                "env": [
                    {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "DIR", "value": "/etc/cni/net.d"},
                    {"name": "WHERE", "value": "$(NODE_NAME)@$(DIR)"},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}
                ],
                "ports": [{"name": "health", "containerPort": 9099}],
                "securityContext": {"capabilities": {"add": ["NET_ADMIN", "CAP_NET_RAW"], "drop": ["ALL"]}},
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "health"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9099, "host": "127.0.0.1"}},
                "volumeMounts": [
                    {"name": "conf", "mountPath": "/etc/cni/net.d"},
                    {"name": "modules", "mountPath": "/lib/modules", "readOnly": true}
                ]
            }],
            "volumes": [
                {"name": "conf", "hostPath": {"path": "/etc/cni/net.d", "type": "DirectoryOrCreate"}},
                {"name": "modules", "hostPath": {"path": "/lib/modules", "type": "Directory"}}
            ]
        }))
    }

    #[test]
    fn downward_api_and_references_resolve_for_the_node() {
        let specs = resolve(&agent_like(), &facts()).unwrap();
        let c = &specs[0];
        assert_eq!(c.argv, ["trellis-agent", "run", "--node=node1", "$(kept)"]);
        let env: BTreeMap<_, _> = c.env.iter().cloned().collect();
        assert_eq!(env["NODE_NAME"], "node1");
        assert_eq!(env["WHERE"], "node1@/etc/cni/net.d");
        assert_eq!(env["IP"], "10.0.1.11");
        assert_eq!(env["KUBECONFIG"], "/var/run/trellis/kubeconfig", "test-bed additions come last");
        assert_eq!(c.capabilities.setpriv_bounding_set(), "-all,+net_admin,+net_raw");
        assert_eq!(c.readiness, Some(HttpProbe { host: "127.0.0.1".into(), port: 9099, path: "/readyz".into() }));
        assert_eq!(c.liveness.as_ref().unwrap().path, "/healthz");
    }

    #[test]
    fn host_paths_map_into_the_node_except_shared_ones() {
        let t = agent_like();
        let c = &resolve(&t, &facts()).unwrap()[0];
        assert_eq!(
            c.mounts[0],
            Mount {
                host_path: "/tmp/lab/node1/root/etc/cni/net.d".into(),
                container_path: "/etc/cni/net.d".into(),
                read_only: false
            }
        );
        assert_eq!(c.mounts[1].host_path, PathBuf::from("/lib/modules"));
        assert!(c.mounts[1].read_only);
        assert_eq!(directories_to_create(&t, &facts()), [PathBuf::from("/tmp/lab/node1/root/etc/cni/net.d")]);
    }

    #[test]
    fn what_the_test_bed_cannot_honour_is_refused_by_name() {
        let no_host_net = template(json!({"containers": [{"name": "a", "command": ["x"]}]}));
        assert!(resolve(&no_host_net, &facts()).unwrap_err().0.contains("hostNetwork"));
        let secret = template(json!({"hostNetwork": true, "containers": [{"name": "a", "command": ["x"],
            "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}));
        assert!(resolve(&secret, &facts()).unwrap_err().0.contains("env T"));
        let empty_dir = template(json!({"hostNetwork": true, "containers": [{"name": "a", "command": ["x"]}],
            "volumes": [{"name": "v", "emptyDir": {}}]}));
        assert!(resolve(&empty_dir, &facts()).unwrap_err().0.contains("volume v"));
        let no_command = template(json!({"hostNetwork": true, "containers": [{"name": "a"}]}));
        assert!(resolve(&no_command, &facts()).unwrap_err().0.contains("no command"));
    }
}
