//! Pods: a network namespace wired by the real CNI plugins.
//!
//! A [`Pod`] owns its namespace and the CNI ADD result; dropping it runs CNI DEL (so
//! host-local releases the address and ptp removes the host veth and route) and then
//! deletes the namespace. Tests hold [`PodInfo`] values, the facts they probe with.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::cni::{self, Attachment};
use crate::error::Result;
use crate::netns::Netns;

/// What a test needs to know about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    /// Name of the pod's network namespace.
    pub netns: String,
    /// The (first) address CNI gave it.
    pub ip: Ipv4Addr,
    /// Every IPv4 address CNI gave it (one per range set of the conflist).
    pub ips: Vec<Ipv4Addr>,
    /// Index of its node in the topology.
    pub node: usize,
}

/// A running pod. Field order matters: the namespace is deleted after `Drop::drop` ran DEL.
#[derive(Debug)]
pub struct Pod {
    pub info: PodInfo,
    attachment: Attachment,
    conflist: Value,
    result: Value,
    _ns: Netns,
}

impl Pod {
    /// Creates namespace `netns_name` and runs CNI ADD of `conflist` from `node_ns`.
    pub fn create(node_ns: &str, node: usize, name: &str, netns_name: &str, conflist: Value) -> Result<Pod> {
        let ns = Netns::create(netns_name)?;
        let attachment = Attachment {
            node_ns: node_ns.to_string(),
            container_id: format!("{netns_name}-id"),
            netns_path: ns.path(),
            ifname: "eth0".to_string(),
        };
        let result = cni::add(&attachment, &conflist)?;
        let ip = cni::first_ipv4(&result)?;
        let ips = cni::ipv4s(&result);
        let info = PodInfo { name: name.to_string(), netns: netns_name.to_string(), ip, ips, node };
        Ok(Pod { info, attachment, conflist, result, _ns: ns })
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Err(e) = cni::del(&self.attachment, &self.conflist, Some(&self.result)) {
            eprintln!("pod {}: CNI DEL failed: {e}", self.info.name);
        }
    }
}
