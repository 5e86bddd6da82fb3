//! [`OperatorInstall`] through the Helm chart: `helm install` of `charts/trellis` with real
//! Helm v4 (libhelm, `e2e/helm/install.py`), then the installed operator Deployment's pod run
//! as a container of the project's operator image, as a kubelet would run it.
//!
//! The chart's values point the images at the locally built ones and leave the Installation
//! to the cluster ([`super::Cluster::up`] applies its own). The Deployment is read back from the
//! API server and resolved like any pod template ([`super::container::resolve`]); its pod
//! `securityContext` user, the read-only root filesystem and the capability drop are applied,
//! and it runs on the host network (the API server listens on the host's loopback). The chart
//! gives the container no `command` (the image's entrypoint runs): the entrypoint is read from
//! the image. Uninstall stops the container and runs `helm uninstall`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

use super::container::{self, Mount, NodeFacts};
use super::operator_install::{InstalledOperator, OperatorEnv, OperatorInstall};
use super::podman_runtime::PodmanRuntime;
use crate::error::{Error, Result};
use crate::podman::{self, Network, Started};

/// The chart's release name and the operator Deployment's name.
pub const RELEASE: &str = "trellis";
pub const DEPLOYMENT: &str = "trellis-operator";
/// Where the kubeconfig appears in the operator's container.
const CONTAINER_KUBECONFIG: &str = "/var/run/trellis/kubeconfig";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Runs `e2e/helm/install.py ACTION ...`; its JSON line, or Helm's error.
pub fn helm(action: &str, kubeconfig: &Path, namespace: &str, values: &serde_json::Value) -> Result<String> {
    let script = repo_root().join("e2e").join("helm").join("install.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let values = values.to_string();
    let args = [
        script.to_string_lossy().into_owned(),
        action.to_string(),
        "--kubeconfig".into(),
        kubeconfig.to_string_lossy().into_owned(),
        "--namespace".into(),
        namespace.into(),
        "--release".into(),
        RELEASE.into(),
        "--values-json".into(),
        values,
    ];
    let out = Command::new(&python)
        .args(&args)
        .output()
        .map_err(|source| Error::Spawn { command: format!("{python} {}", args.join(" ")), source })?;
    crate::cmd::check(format!("helm {action} (e2e/helm/install.py)"), out).map(|s| s.trim().to_string())
}

/// Installs the chart and runs its operator as a podman container (see the module header).
#[derive(Clone, Debug)]
pub struct HelmOperator {
    pub runtime: PodmanRuntime,
    /// Extra chart values merged over the test bed's (e.g. `{"logLevel": "debug"}`).
    pub values: serde_json::Value,
}

impl HelmOperator {
    pub fn new(runtime: PodmanRuntime) -> Self {
        HelmOperator { runtime, values: json!({}) }
    }

    /// The chart values: local images, no Installation from the chart, a free health port.
    fn values(&self) -> Result<serde_json::Value> {
        let (operator_repo, operator_tag) = split_tag(&self.runtime.local_image("trellis/operator")?);
        let mut values = json!({
            "image": {"repository": operator_repo, "tag": operator_tag, "pullPolicy": "Never"},
            "agent": {"image": self.runtime.local_image("trellis/agent")?},
            "installation": {"enabled": false},
            "healthPort": crate::operator::free_port()?,
        });
        merge(&mut values, &self.values);
        Ok(values)
    }
}

fn split_tag(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// JSON merge of `over` into `base` (objects recursively, everything else replaced).
fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The image's entrypoint (`podman image inspect`).
fn entrypoint(image: &str) -> Result<Vec<String>> {
    let raw = podman::podman(&["image", "inspect", "--format", "{{json .Config.Entrypoint}}", image])?;
    serde_json::from_str::<Option<Vec<String>>>(raw.trim())
        .map_err(|e| Error::Parse { what: format!("entrypoint of {image}"), detail: format!("{raw}: {e}") })?
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Error::Setup(format!("image {image} has no entrypoint and the Deployment no command")))
}

impl OperatorInstall for HelmOperator {
    fn describe(&self) -> String {
        "helm chart, operator as a podman container".into()
    }

    fn install(&self, env: &OperatorEnv) -> Result<Box<dyn InstalledOperator>> {
        let values = self.values()?;
        let release = helm("install", &env.kubeconfig, &env.namespace, &values)?;
        let deployment = read_deployment(&env.kubeconfig, &env.namespace)?;
        let mut template = deployment
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .ok_or_else(|| Error::Setup("the installed Deployment has no spec".into()))?;
        let pod_spec = template.spec.as_mut().ok_or_else(|| Error::Setup("Deployment template without spec".into()))?;
        let user = pod_spec.security_context.as_ref().and_then(|s| {
            let uid = s.run_as_user?;
            Some(match s.run_as_group {
                Some(gid) => format!("{uid}:{gid}"),
                None => uid.to_string(),
            })
        });
        let first =
            pod_spec.containers.first_mut().ok_or_else(|| Error::Setup("Deployment without containers".into()))?;
        let read_only_root = first.security_context.as_ref().and_then(|s| s.read_only_root_filesystem).unwrap_or(false);
        if first.command.is_none() {
            let image = self.runtime.local_image(first.image.as_deref().unwrap_or_default())?;
            first.command = Some(entrypoint(&image)?);
        }
        // A readable copy of the credentials for the image's unprivileged user.
        let kubeconfig = env.dir.join("kubeconfig");
        std::fs::copy(&env.kubeconfig, &kubeconfig).map_err(|e| Error::io("copy the kubeconfig", e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o644))
                .map_err(|e| Error::io("chmod the kubeconfig copy", e))?;
        }
        let pod = format!("{DEPLOYMENT}-0");
        let facts = NodeFacts {
            node: "host".into(),
            node_ip: std::net::Ipv4Addr::LOCALHOST,
            pod: pod.clone(),
            namespace: env.namespace.clone(),
            root: env.dir.join("root"),
            shared_paths: Vec::new(),
            extra_env: vec![("KUBECONFIG".into(), CONTAINER_KUBECONFIG.into())],
            extra_mounts: vec![Mount {
                host_path: kubeconfig,
                container_path: CONTAINER_KUBECONFIG.into(),
                read_only: true,
            }],
        };
        let specs = container::resolve(&template, &facts).map_err(|e| Error::Setup(e.to_string()))?;
        let spec = specs.first().ok_or_else(|| Error::Setup("no container resolved".into()))?;
        let mut run = self.runtime.run_spec_on(Network::Host, spec)?;
        // Named after the cluster's directory (unique per cluster, found again by `lab down`).
        let cluster_dir = env.dir.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
        run.name = format!("{}-{pod}", cluster_dir.unwrap_or_default());
        run.user = user;
        run.read_only_root = read_only_root;
        let started = run.start()?;
        tracing::info!(release, container = %started.name, "operator installed by helm");
        Ok(Box::new(HelmInstalled {
            started: Some(started),
            kubeconfig: env.kubeconfig.clone(),
            namespace: env.namespace.clone(),
        }))
    }
}

fn read_deployment(kubeconfig: &Path, namespace: &str) -> Result<Deployment> {
    let out = Command::new("kubectl")
        .args([
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "-n",
            namespace,
            "get",
            "deployment",
            DEPLOYMENT,
            "-o",
            "json",
        ])
        .output()
        .map_err(|source| Error::Spawn { command: "kubectl get deployment".into(), source })?;
    let json = crate::cmd::check(format!("kubectl -n {namespace} get deployment {DEPLOYMENT}"), out)?;
    serde_json::from_str(&json)
        .map_err(|e| Error::Parse { what: "the operator Deployment".into(), detail: e.to_string() })
}

/// The release and its running operator container.
struct HelmInstalled {
    started: Option<Started>,
    kubeconfig: PathBuf,
    namespace: String,
}

impl InstalledOperator for HelmInstalled {
    fn logs(&self) -> String {
        self.started.as_ref().map(Started::logs).unwrap_or_default()
    }

    fn pids(&self) -> Vec<u32> {
        self.started.as_ref().and_then(|s| s.pid().ok()).map(|p| p as u32).into_iter().collect()
    }

    fn uninstall(&mut self) -> Result<()> {
        if let Some(s) = self.started.take() {
            let _ = s.stop(Duration::from_secs(5));
        }
        helm("uninstall", &self.kubeconfig, &self.namespace, &json!({})).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_merge_recursively_and_tags_split_off() {
        let mut base = json!({"image": {"repository": "a", "tag": "1"}, "x": 1});
        merge(&mut base, &json!({"image": {"tag": "2"}, "y": true}));
        assert_eq!(base, json!({"image": {"repository": "a", "tag": "2"}, "x": 1, "y": true}));
        assert_eq!(
            split_tag("localhost/trellis/operator:0.1.0"),
            ("localhost/trellis/operator".into(), "0.1.0".into())
        );
        assert_eq!(split_tag("localhost:5000/op"), ("localhost:5000/op".into(), "latest".into()));
    }
}
