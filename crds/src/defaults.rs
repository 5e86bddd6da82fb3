//! Defaults, as pure functions: the operator applies them and writes the result back
//! (`IPPool.spec`, `Installation.status.computed`), so what is in force is always visible.
//!
//! They live here rather than as OpenAPI `default:`s because they depend on the address family
//! of the CIDR (26 vs 122), which a schema default cannot express.

use ipnet::IpNet;

use crate::EncapMode;
use crate::installation::{Encapsulation, InstallationPool, InstallationSpec, NatOutgoing, NetworkSpec};
use crate::ip_pool::{DEFAULT_ALLOWED_USES, IPPoolSpec};

/// The pool Calico creates when the Installation names none.
pub const DEFAULT_IPV4_POOL: &str = "192.168.0.0/16";
/// Default block prefix length for IPv4 pools (64 addresses).
pub const DEFAULT_BLOCK_SIZE_V4: i32 = 26;
/// Default block prefix length for IPv6 pools (64 addresses).
pub const DEFAULT_BLOCK_SIZE_V6: i32 = 122;
/// Selector matching every node.
pub const ALL_NODES: &str = "all()";

/// Default block size for a pool of this family.
pub fn block_size_for(cidr: &IpNet) -> i32 {
    match cidr {
        IpNet::V4(_) => DEFAULT_BLOCK_SIZE_V4,
        IpNet::V6(_) => DEFAULT_BLOCK_SIZE_V6,
    }
}

/// Default encapsulation of an Installation pool: IPIP for IPv4, None for IPv6 (the Tigera
/// operator's choice; IP-in-IP does not carry IPv6).
pub fn encapsulation_for(cidr: &IpNet) -> Encapsulation {
    match cidr {
        IpNet::V4(_) => Encapsulation::Ipip,
        IpNet::V6(_) => Encapsulation::None,
    }
}

/// Fills every unset field of an Installation pool. The CIDR must already be valid (admission
/// checked it); an unparsable one is left as is for the caller's validation to report.
pub fn installation_pool(pool: &InstallationPool) -> InstallationPool {
    let cidr: Option<IpNet> = pool.cidr.parse().ok();
    InstallationPool {
        cidr: pool.cidr.clone(),
        encapsulation: pool.encapsulation.or_else(|| cidr.as_ref().map(encapsulation_for)),
        nat_outgoing: Some(pool.nat_outgoing.unwrap_or(NatOutgoing::Enabled)),
        block_size: pool.block_size.or_else(|| cidr.as_ref().map(block_size_for)),
        node_selector: Some(pool.node_selector.clone().unwrap_or_else(|| ALL_NODES.to_string())),
    }
}

/// The Installation spec with every default filled in: one IPv4 pool 192.168.0.0/16 only when
/// no pool is given at all. Written in Trellis' spelling: a `calicoNetwork` /
/// `nodeAddressAutodetectionV4` spec comes back as `network` / `nodeAddressAutodetection`
/// ([`InstallationSpec::network`]).
pub fn installation(spec: &InstallationSpec) -> InstallationSpec {
    let network = spec.network();
    let pools = match network.ip_pools.as_deref() {
        Some(pools) if !pools.is_empty() => pools.iter().map(installation_pool).collect(),
        _ => vec![installation_pool(&InstallationPool { cidr: DEFAULT_IPV4_POOL.to_string(), ..Default::default() })],
    };
    InstallationSpec {
        network: Some(NetworkSpec { ip_pools: Some(pools), ..network }),
        calico_network: None,
        ..spec.clone()
    }
}

/// Calico's modes for an Installation encapsulation: (ipipMode, vxlanMode).
pub fn modes(encapsulation: Encapsulation) -> (EncapMode, EncapMode) {
    match encapsulation {
        Encapsulation::Ipip => (EncapMode::Always, EncapMode::Never),
        Encapsulation::IpipCrossSubnet => (EncapMode::CrossSubnet, EncapMode::Never),
        Encapsulation::Vxlan => (EncapMode::Never, EncapMode::Always),
        Encapsulation::VxlanCrossSubnet => (EncapMode::Never, EncapMode::CrossSubnet),
        Encapsulation::None => (EncapMode::Never, EncapMode::Never),
    }
}

/// The IPPool spec the operator creates for an (already defaulted) Installation pool.
pub fn ip_pool_from_installation(pool: &InstallationPool) -> IPPoolSpec {
    let pool = installation_pool(pool);
    let (ipip, vxlan) = modes(pool.encapsulation.unwrap_or(Encapsulation::None));
    ip_pool(&IPPoolSpec {
        cidr: pool.cidr,
        block_size: pool.block_size,
        ipip_mode: Some(ipip),
        vxlan_mode: Some(vxlan),
        nat_outgoing: Some(pool.nat_outgoing == Some(NatOutgoing::Enabled)),
        node_selector: pool.node_selector,
        disabled: Some(false),
        ..Default::default()
    })
}

/// Name of the IPPool created for the n-th pool of a family (Calico's naming).
pub fn ip_pool_name(cidr: &IpNet, index_in_family: usize) -> String {
    let family = match cidr {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    };
    match index_in_family {
        0 => format!("default-{family}-ippool"),
        n => format!("default-{family}-ippool-{n}"),
    }
}

/// Fills every unset field of an IPPool spec.
pub fn ip_pool(spec: &IPPoolSpec) -> IPPoolSpec {
    let cidr: Option<IpNet> = spec.cidr.parse().ok();
    IPPoolSpec {
        cidr: spec.cidr.clone(),
        block_size: spec.block_size.or_else(|| cidr.as_ref().map(block_size_for)),
        ipip_mode: Some(spec.ipip_mode.unwrap_or_default()),
        vxlan_mode: Some(spec.vxlan_mode.unwrap_or_default()),
        nat_outgoing: Some(spec.nat_outgoing.unwrap_or(false)),
        node_selector: Some(spec.node_selector.clone().unwrap_or_else(|| ALL_NODES.to_string())),
        disabled: Some(spec.disabled.unwrap_or(false)),
        allowed_uses: Some(match spec.allowed_uses.as_deref() {
            None | Some([]) => DEFAULT_ALLOWED_USES.to_vec(),
            Some(uses) => uses.to_vec(),
        }),
        // No default: Trellis runs no BGP, so the field would only suggest a meaning it lacks.
        disable_bgp_export: spec.disable_bgp_export,
        assignment_mode: Some(spec.assignment()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::installation::NodeAddressAutodetection;
    use crate::ip_pool::{AllowedUse, AssignmentMode};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn block_size_depends_on_family() {
        assert_eq!(block_size_for(&net("10.0.0.0/8")), 26);
        assert_eq!(block_size_for(&net("fd00::/48")), 122);
    }

    #[test]
    fn default_pool_only_when_none_given() {
        let d = installation(&InstallationSpec::default());
        let pools = d.network.unwrap().ip_pools.unwrap();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].cidr, "192.168.0.0/16");
        assert_eq!(pools[0].encapsulation, Some(Encapsulation::Ipip));
        assert_eq!(pools[0].nat_outgoing, Some(NatOutgoing::Enabled));
        assert_eq!(pools[0].block_size, Some(26));
        assert_eq!(pools[0].node_selector.as_deref(), Some("all()"));

        // An empty list is "none given" too.
        let empty = InstallationSpec {
            network: Some(NetworkSpec { ip_pools: Some(vec![]), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(installation(&empty).network.unwrap().ip_pools.unwrap()[0].cidr, "192.168.0.0/16");

        let given = InstallationSpec {
            network: Some(NetworkSpec {
                ip_pools: Some(vec![InstallationPool {
                    cidr: "10.244.0.0/16".into(),
                    encapsulation: Some(Encapsulation::VxlanCrossSubnet),
                    nat_outgoing: Some(NatOutgoing::Disabled),
                    block_size: Some(24),
                    node_selector: None,
                }]),
                mtu: Some(1400),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = installation(&given).network.unwrap();
        assert_eq!(d.mtu, Some(1400), "other fields are kept");
        let pools = d.ip_pools.unwrap();
        assert_eq!(pools.len(), 1, "no default pool added when one is given");
        assert_eq!(pools[0].encapsulation, Some(Encapsulation::VxlanCrossSubnet));
        assert_eq!(pools[0].nat_outgoing, Some(NatOutgoing::Disabled));
        assert_eq!(pools[0].block_size, Some(24));
    }

    #[test]
    fn computed_spec_uses_trellis_spelling() {
        let method = NodeAddressAutodetection { interface: Some("eth1".into()), ..Default::default() };
        let tigera = InstallationSpec {
            calico_network: Some(NetworkSpec {
                ip_pools: Some(vec![InstallationPool { cidr: "10.244.0.0/16".into(), ..Default::default() }]),
                mtu: Some(1440),
                node_address_autodetection_v4: Some(method.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let d = installation(&tigera);
        assert_eq!(d.calico_network, None);
        let network = d.network.unwrap();
        assert_eq!(network.mtu, Some(1440));
        assert_eq!(network.node_address_autodetection, Some(method));
        assert_eq!(network.node_address_autodetection_v4, None);
        assert_eq!(network.ip_pools.unwrap()[0].block_size, Some(26), "pools are defaulted as with spec.network");
        assert_eq!(installation(&installation(&tigera)), installation(&tigera), "defaulting is idempotent");
    }

    #[test]
    fn ipv6_installation_pool_defaults() {
        let p = installation_pool(&InstallationPool { cidr: "fd00:10:244::/56".into(), ..Default::default() });
        assert_eq!(p.encapsulation, Some(Encapsulation::None));
        assert_eq!(p.block_size, Some(122));
    }

    #[test]
    fn encapsulation_maps_to_calico_modes() {
        use EncapMode::*;
        assert_eq!(modes(Encapsulation::Ipip), (Always, Never));
        assert_eq!(modes(Encapsulation::IpipCrossSubnet), (CrossSubnet, Never));
        assert_eq!(modes(Encapsulation::Vxlan), (Never, Always));
        assert_eq!(modes(Encapsulation::VxlanCrossSubnet), (Never, CrossSubnet));
        assert_eq!(modes(Encapsulation::None), (Never, Never));
        let spec = ip_pool_from_installation(&InstallationPool {
            cidr: "10.244.0.0/16".into(),
            encapsulation: Some(Encapsulation::VxlanCrossSubnet),
            ..Default::default()
        });
        assert_eq!(spec.ipip_mode, Some(Never));
        assert_eq!(spec.vxlan_mode, Some(CrossSubnet));
        assert_eq!(spec.nat_outgoing, Some(true));
        assert_eq!(spec.block_size, Some(26));
        assert_eq!(spec.disabled, Some(false));
    }

    #[test]
    fn ip_pool_defaults_keep_explicit_values() {
        let d = ip_pool(&IPPoolSpec { cidr: "10.1.0.0/16".into(), ..Default::default() });
        assert_eq!(d.block_size, Some(26));
        assert_eq!(d.ipip_mode, Some(EncapMode::Never));
        assert_eq!(d.vxlan_mode, Some(EncapMode::Never));
        assert_eq!(d.nat_outgoing, Some(false));
        assert_eq!(d.node_selector.as_deref(), Some("all()"));
        assert_eq!(d.disabled, Some(false));
        assert_eq!(d.allowed_uses, Some(vec![AllowedUse::Workload, AllowedUse::Tunnel]));
        assert_eq!(d.assignment_mode, Some(AssignmentMode::Automatic));
        assert_eq!(d.disable_bgp_export, None, "no BGP, no default for it");
        let empty_uses = ip_pool(&IPPoolSpec { allowed_uses: Some(vec![]), ..d.clone() });
        assert_eq!(empty_uses, d, "an empty allowedUses means Calico's default");
        let explicit = IPPoolSpec {
            cidr: "10.1.0.0/16".into(),
            block_size: Some(28),
            ipip_mode: Some(EncapMode::CrossSubnet),
            vxlan_mode: Some(EncapMode::Never),
            nat_outgoing: Some(true),
            node_selector: Some("zone == 'a'".into()),
            disabled: Some(true),
            allowed_uses: Some(vec![AllowedUse::Tunnel]),
            disable_bgp_export: Some(true),
            assignment_mode: Some(AssignmentMode::Manual),
        };
        assert_eq!(ip_pool(&explicit), explicit);
        assert_eq!(ip_pool(&d), d, "defaulting is idempotent");
    }

    #[test]
    fn pool_names_follow_calico() {
        assert_eq!(ip_pool_name(&net("10.0.0.0/16"), 0), "default-ipv4-ippool");
        assert_eq!(ip_pool_name(&net("fd00::/48"), 0), "default-ipv6-ippool");
        assert_eq!(ip_pool_name(&net("10.1.0.0/16"), 1), "default-ipv4-ippool-1");
    }
}
