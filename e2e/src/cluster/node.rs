//! A cluster node: a node namespace of the lab plus its Node object.
//!
//! The Node object is what a kubelet would register: labels `kubernetes.io/hostname`,
//! `kubernetes.io/os: linux` and [`SUBNET_LABEL`] (`subnet-1`, `subnet-2`: the underlay subnet,
//! for nodeSelectors such as `location == "subnet-2"`), and in its status the InternalIP and
//! Hostname addresses and a Ready condition.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::runtime::NodeHost;

/// The underlay-subnet label every Node carries.
pub const SUBNET_LABEL: &str = "location";

/// One node of the cluster.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub name: String,
    /// Underlay subnet number: the node is on `10.0.<subnet>.0/24`.
    pub subnet: u8,
    /// Address with prefix, e.g. `10.0.1.11/24`.
    pub address: Ipv4Net,
    /// The node's network namespace.
    pub netns: String,
    /// The node's stand-in for `/` (hostPath volumes, the CNI conf dir).
    pub root: PathBuf,
    pub log_dir: PathBuf,
}

impl ClusterNode {
    pub fn ip(&self) -> Ipv4Addr {
        self.address.addr()
    }

    /// The node as the container runtime sees it.
    pub fn host(&self) -> NodeHost {
        NodeHost {
            name: self.name.clone(),
            netns: self.netns.clone(),
            ip: self.ip(),
            root: self.root.clone(),
            log_dir: self.log_dir.clone(),
        }
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), self.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            (SUBNET_LABEL.to_string(), format!("subnet-{}", self.subnet)),
        ])
    }

    /// Registers the Node object and its status, as a kubelet does.
    pub async fn register(&self, client: kube::Client) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(client);
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": self.name, "labels": self.labels() },
        }))
        .map_err(kube::Error::SerdeError)?;
        api.create(&PostParams::default(), &node).await?;
        let status = json!({ "status": {
            "addresses": [
                { "type": "InternalIP", "address": self.ip().to_string() },
                { "type": "Hostname", "address": self.name },
            ],
            "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                             "message": "trellis test bed" }],
        }});
        api.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(status)).await?;
        Ok(())
    }
}
