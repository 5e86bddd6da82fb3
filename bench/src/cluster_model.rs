//! Synthetic clusters of any size: the node a benchmark programs and its peers, with
//! addresses and blocks laid out so that every size up to 65 535 peers fits.
//!
//! Underlay `172.16.0.0/12`: node 0 (the measured one) is `172.16.0.1`, peer `i` (1-based) is
//! `172.16.0.0 + 1 + i`, all in one subnet, so VXLAN `Always` gives every peer the tunnel
//! recipe (one neighbour, one FDB entry, one route). Pool `100.64.0.0/10`, blocks /26: node `i`
//! has block `i`. Peers publish no VTEP MAC or tunnel address: both are derived, as the agent
//! does for any peer.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use trellis_agent::snapshot::{CniPlugin, CniSettings, LocalNode, Peer, Pool, Snapshot, VxlanSettings};
use trellis_api::EncapMode;

pub const POOL: &str = "100.64.0.0/10";
pub const BLOCK_SIZE: u8 = 26;
pub const UNDERLAY_PREFIX: u8 = 12;
pub const UPLINK: &str = "eth0";

/// Node `i`'s underlay address (0 = the measured node).
pub fn node_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 1)) + i)
}

/// Node `i`'s block.
pub fn block(i: u32) -> Ipv4Net {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0)) + (i << (32 - BLOCK_SIZE));
    Ipv4Net::new(Ipv4Addr::from(base), BLOCK_SIZE).expect("prefix length 26 is valid")
}

pub fn pool(vxlan: EncapMode) -> Pool {
    Pool {
        name: "bench-pool".to_string(),
        cidr: POOL.parse().expect("constant CIDR"),
        ipip_mode: EncapMode::Never,
        vxlan_mode: vxlan,
        nat_outgoing: false,
        disabled: false,
        block_size: Some(BLOCK_SIZE),
        allowed_uses: None,
        transition: None,
    }
}

/// The snapshot of node 0 with `peers` peers, VXLAN Always; CNI files under `dir`.
pub fn snapshot(peers: u32, dir: &Path) -> Snapshot {
    Snapshot {
        node: LocalNode {
            name: "bench-node-0".to_string(),
            address: IpNet::V4(Ipv4Net::new(node_address(0), UNDERLAY_PREFIX).expect("valid prefix")),
            uplink: UPLINK.to_string(),
            uplink_mtu: None,
            blocks: vec![IpNet::V4(block(0))],
            vtep_mac: None,
            tunnel_address: None,
        },
        peers: (1..=peers)
            .map(|i| Peer {
                name: format!("bench-node-{i}"),
                address: IpNet::V4(Ipv4Net::new(node_address(i), UNDERLAY_PREFIX).expect("valid prefix")),
                vtep_mac: None,
                tunnel_address: None,
                blocks: vec![IpNet::V4(block(i))],
            })
            .collect(),
        pools: vec![pool(EncapMode::Always)],
        mtu: None,
        vxlan: VxlanSettings::default(),
        cni: CniSettings {
            conf_dir: dir.join("net.d"),
            conf_name: "10-trellis.conflist".to_string(),
            ipam_data_dir: dir.join("ipam"),
            plugin: CniPlugin::Ptp,
        },
    }
}

/// Node 0's underlay address with prefix, as `ip addr add` wants it.
pub fn node0_cidr() -> String {
    format!("{}/{UNDERLAY_PREFIX}", IpAddr::V4(node_address(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_of_distinct_nodes_never_overlap_and_stay_in_the_pool() {
        let pool: Ipv4Net = POOL.parse().unwrap();
        let last = block(65_535);
        assert!(pool.contains(&last), "{last}");
        assert_eq!(block(1).to_string(), "100.64.0.64/26");
        assert_ne!(block(4), block(5));
        assert_eq!(node_address(20_000).to_string(), "172.16.78.33");
    }
}
