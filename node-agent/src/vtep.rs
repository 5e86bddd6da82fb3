//! Tunnel identity of a node: its VTEP MAC and tunnel address.
//!
//! Both are pure functions of what the cluster already knows (node name, blocks), so a node
//! keeps the same identity across agent restarts and reinstalls without a state file, and a
//! peer whose NodeNetwork omits them is still reachable.

use std::net::IpAddr;

use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::model::MacAddr;

impl MacAddr {
    /// Locally administered unicast MAC derived from the node name: `02:` + 5 bytes of
    /// SHA-256(name). Stable, distinct per name with overwhelming probability.
    pub fn for_node(name: &str) -> Self {
        let digest = Sha256::digest(name.as_bytes());
        let mut mac = [0u8; 6];
        mac[0] = 0x02;
        mac[1..].copy_from_slice(&digest[..5]);
        MacAddr(mac)
    }
}

/// Default tunnel address of a node: the network address of its lowest block (flannel uses the
/// same convention). The CNI IPAM ranges start above it, so pods never get it.
pub fn tunnel_address_for(blocks: &[IpNet]) -> Option<IpAddr> {
    blocks.iter().min().map(|b| b.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_mac_is_stable_local_unicast() {
        let a = MacAddr::for_node("node-a");
        assert_eq!(a, MacAddr::for_node("node-a"));
        assert_ne!(a, MacAddr::for_node("node-b"));
        assert_eq!(a.0[0] & 0x01, 0, "unicast");
        assert_eq!(a.0[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn tunnel_address_is_lowest_block_network() {
        let blocks: Vec<IpNet> = vec!["10.244.1.64/26".parse().unwrap(), "10.244.1.0/26".parse().unwrap()];
        assert_eq!(tunnel_address_for(&blocks), Some("10.244.1.0".parse().unwrap()));
        assert_eq!(tunnel_address_for(&[]), None);
    }
}
