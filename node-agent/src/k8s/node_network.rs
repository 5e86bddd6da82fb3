//! This node's NodeNetwork `spec`: its identity on the pod network, which every peer reads.
//!
//! Name = node name, owned by the Node object (so a cluster's garbage collector removes it with
//! the Node), written by server-side apply with field manager [`FIELD_MANAGER`]; the spec is
//! rebuilt from the detected address, the own blocks and the kernel's capabilities, and only
//! sent when it changed.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use trellis_api::node_network::KernelCapabilities;
use trellis_api::{NodeNetwork, NodeNetworkSpec};

use super::cluster_snapshot::LocalIdentity;
use crate::model::{Capabilities, MacAddr};

/// Field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "trellis-agent";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("Node {0} has no uid (cannot own its NodeNetwork)")]
    NodeWithoutUid(String),
    #[error("cannot encode NodeNetwork {name}: {source}")]
    Encode { name: String, source: serde_json::Error },
    #[error("server-side apply of NodeNetwork {name}: {source}")]
    Apply { name: String, source: kube::Error },
}

/// Pure: the spec this node publishes; `tunnel_address` is what the planner derives for this
/// node ([`crate::plan::derived_tunnel_address`]: its lowest block in a Tunnel pool).
pub fn spec_for(identity: &LocalIdentity, tunnel_address: Option<IpAddr>, caps: Capabilities) -> NodeNetworkSpec {
    NodeNetworkSpec {
        address: identity.address.to_string(),
        uplink: Some(identity.uplink.clone()),
        vtep_mac: Some(MacAddr::for_node(&identity.name).to_string()),
        tunnel_address: tunnel_address.map(|ip| ip.to_string()),
        capabilities: Some(KernelCapabilities { ipip: caps.ipip, vxlan: caps.vxlan }),
    }
}

/// Pure: the whole object to apply, owned by `node`.
pub fn object_for(node: &Node, spec: NodeNetworkSpec) -> Result<NodeNetwork, PublishError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let uid = node.metadata.uid.clone().ok_or_else(|| PublishError::NodeWithoutUid(name.clone()))?;
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.clone(),
        uid,
        controller: Some(false),
        block_owner_deletion: None,
    };
    Ok(NodeNetwork {
        metadata: ObjectMeta { name: Some(name), owner_references: Some(vec![owner]), ..Default::default() },
        spec,
        status: None,
    })
}

/// Server-side applies `object` (spec and owner reference; the status is left alone).
pub async fn publish(api: &Api<NodeNetwork>, object: &NodeNetwork) -> Result<(), PublishError> {
    let name = object.metadata.name.clone().unwrap_or_default();
    let mut body =
        serde_json::to_value(object).map_err(|source| PublishError::Encode { name: name.clone(), source })?;
    if let Some(map) = body.as_object_mut() {
        map.insert("apiVersion".into(), "trellis.dev/v1".into());
        map.insert("kind".into(), "NodeNetwork".into());
        map.remove("status");
    }
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|source| PublishError::Apply { name, source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_carries_address_prefix_mac_tunnel_address_and_capabilities() {
        let identity =
            LocalIdentity { name: "node1".into(), address: "10.0.1.11/24".parse().unwrap(), uplink: "eth0".into() };
        let spec = spec_for(&identity, Some("10.244.1.0".parse().unwrap()), Capabilities { ipip: false, vxlan: true });
        assert_eq!(spec.address, "10.0.1.11/24");
        assert_eq!(spec.uplink.as_deref(), Some("eth0"));
        assert_eq!(spec.vtep_mac, Some(MacAddr::for_node("node1").to_string()));
        assert_eq!(spec.tunnel_address.as_deref(), Some("10.244.1.0"));
        assert_eq!(spec.capabilities, Some(KernelCapabilities { ipip: false, vxlan: true }));
        assert_eq!(spec_for(&identity, None, Capabilities::default()).tunnel_address, None);
    }

    #[test]
    fn object_is_owned_by_its_node() {
        let node = Node {
            metadata: ObjectMeta { name: Some("node1".into()), uid: Some("u-1".into()), ..Default::default() },
            ..Default::default()
        };
        let nn = object_for(&node, NodeNetworkSpec::default()).unwrap();
        let owner = &nn.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("Node", "node1", "u-1"));
        let no_uid =
            Node { metadata: ObjectMeta { name: Some("n".into()), ..Default::default() }, ..Default::default() };
        assert!(object_for(&no_uid, NodeNetworkSpec::default()).is_err());
    }
}
