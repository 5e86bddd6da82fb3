//! Workload pods: the Pod object, the real CNI plugins with the node's conflist, and the pod
//! status a kubelet would write.
//!
//! [`PodRef`] is the handle tests hold (name, node, namespace, addresses); the running pod (its
//! network namespace and CNI result, [`crate::pod::Pod`]) stays inside the cluster, which runs
//! CNI DEL and deletes the namespace when the pod is deleted or the cluster goes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cni;
use crate::error::{Error, Result};

/// A pod as tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// The Node it runs on.
    pub node: String,
    /// Its network namespace (`ip netns exec NETNS ...`).
    pub netns: String,
    /// The first address CNI gave it.
    pub ip: Ipv4Addr,
    pub ips: Vec<Ipv4Addr>,
}

/// The conflist a container runtime would pick from `dir`: the first `*.conflist` in name order.
pub fn find_conflist(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    files.into_iter().next()
}

/// Reads the conflist of `dir` (see [`find_conflist`]).
pub fn read_conflist(dir: &Path) -> Result<serde_json::Value> {
    let path = find_conflist(dir).ok_or_else(|| Error::Setup(format!("no *.conflist in {}", dir.display())))?;
    cni::read_conflist(&path)
}

/// The conflist as the node's container runtime sees it: the agent wrote the paths of its own
/// view (a container's hostPath, e.g. host-local's `dataDir` `/var/lib/cni/networks`), and on
/// this machine every node's host paths live below the node's root directory. A path already
/// below `root` (the process runtime rewrites paths itself) stays.
pub fn node_view(mut conflist: serde_json::Value, root: &Path) -> serde_json::Value {
    if let Some(plugins) = conflist.get_mut("plugins").and_then(|p| p.as_array_mut()) {
        for plugin in plugins {
            if let Some(dir) = plugin.pointer_mut("/ipam/dataDir")
                && let Some(path) = dir.as_str().map(Path::new)
                && path.is_absolute()
                && !path.starts_with(root)
            {
                let mapped = root.join(path.strip_prefix("/").unwrap_or(path));
                *dir = serde_json::Value::String(mapped.to_string_lossy().into_owned());
            }
        }
    }
    conflist
}

/// A named container port a pod declares: (name, protocol `TCP`/`UDP`/`SCTP`, number).
pub type ContainerPort<'a> = (&'a str, &'a str, u16);

/// Creates the namespace (if missing) and the Pod object bound to `node`, its container
/// declaring `ports`.
pub async fn create_object(
    client: kube::Client,
    namespace: &str,
    name: &str,
    node: &str,
    labels: &BTreeMap<String, String>,
    ports: &[ContainerPort<'_>],
) -> Result<(), kube::Error> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces.get_opt(namespace).await?.is_none() {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).map_err(kube::Error::SerdeError)?;
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let ports: Vec<_> = ports
        .iter()
        .map(|(name, protocol, port)| json!({"name": name, "protocol": protocol, "containerPort": port}))
        .collect();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": namespace, "labels": labels },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "app", "image": "registry.k8s.io/pause:3.10", "ports": ports }],
        },
    }))
    .map_err(kube::Error::SerdeError)?;
    Api::<Pod>::namespaced(client, namespace).create(&PostParams::default(), &pod).await?;
    Ok(())
}

/// Writes what the kubelet reports once the pod's sandbox is up: Running, Ready, its addresses.
pub async fn report_running(client: kube::Client, pod: &PodRef, host_ip: Ipv4Addr) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let pod_ips: Vec<_> = pod.ips.iter().map(|ip| json!({ "ip": ip.to_string() })).collect();
    let status = json!({ "status": {
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{ "ip": host_ip.to_string() }],
        "podIP": pod.ip.to_string(),
        "podIPs": pod_ips,
        "startTime": now,
        "conditions": [
            { "type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": now },
            { "type": "Ready", "status": "True", "lastTransitionTime": now },
        ],
    }});
    Api::<Pod>::namespaced(client, &pod.namespace)
        .patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_local_data_dir_is_mapped_below_the_node_root_once() {
        let root = Path::new("/tmp/c/node1/root");
        let conflist = json!({"plugins": [
            {"type": "ptp", "ipam": {"type": "host-local", "dataDir": "/var/lib/cni/networks"}},
            {"type": "portmap"},
        ]});
        let seen = node_view(conflist, root);
        assert_eq!(seen["plugins"][0]["ipam"]["dataDir"], "/tmp/c/node1/root/var/lib/cni/networks");
        // Already the node's path (the process runtime rewrote it): unchanged.
        let again = node_view(seen.clone(), root);
        assert_eq!(again, seen);
    }
}
