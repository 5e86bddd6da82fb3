//! MTU: one pod MTU for the node, and one MTU per tunnel device.
//!
//! Pods get the uplink MTU minus the largest encapsulation overhead among the pools that are
//! programmed (whether or not this node currently has peers in them: a pod's MTU is fixed at
//! creation, so it must already fit the worst path it may take). An explicit MTU (Installation
//! `spec.network.mtu`) wins everywhere. Overheads are those of an IPv4 underlay (IPIP 20, VXLAN
//! 50); a VXLAN over an IPv6 underlay costs 20 more for the larger outer header.

use std::net::IpAddr;

use crate::model::{IPIP_OVERHEAD, VXLAN_OVERHEAD};

use super::PlanError;

/// Extra outer-header bytes of VXLAN over IPv6 compared with IPv4 (40-byte vs 20-byte header).
const IPV6_UNDERLAY_EXTRA: u32 = 20;

/// Smallest MTU an IPv4 host must accept (RFC 791); anything lower is a broken snapshot.
pub(super) const MIN_MTU: u32 = 68;

/// Overhead of the encapsulations in use on an underlay of `underlay`'s family.
#[derive(Clone, Copy, Debug)]
pub(super) struct Overheads {
    pub ipip: u32,
    pub vxlan: u32,
}

impl Overheads {
    pub fn for_underlay(underlay: IpAddr) -> Self {
        let extra = if underlay.is_ipv6() { IPV6_UNDERLAY_EXTRA } else { 0 };
        Self { ipip: IPIP_OVERHEAD, vxlan: VXLAN_OVERHEAD + extra }
    }
}

/// The MTUs of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mtus {
    pub pod: u32,
    pub ipip_device: u32,
    pub vxlan_device: u32,
}

/// Computes the node's MTUs. `uses_ipip`/`uses_vxlan`: whether any programmed pool uses them.
pub(super) fn compute(
    override_mtu: Option<u32>,
    uplink: &str,
    uplink_mtu: Option<u32>,
    overheads: Overheads,
    uses_ipip: bool,
    uses_vxlan: bool,
) -> Result<Mtus, PlanError> {
    if let Some(mtu) = override_mtu {
        if mtu < MIN_MTU {
            return Err(PlanError::MtuTooSmall { mtu, min: MIN_MTU });
        }
        return Ok(Mtus { pod: mtu, ipip_device: mtu, vxlan_device: mtu });
    }
    let uplink_mtu = uplink_mtu.ok_or_else(|| PlanError::MissingUplinkMtu { uplink: uplink.to_string() })?;
    let overhead = [(uses_ipip, overheads.ipip), (uses_vxlan, overheads.vxlan)]
        .iter()
        .filter(|(used, _)| *used)
        .map(|(_, o)| *o)
        .max()
        .unwrap_or(0);
    let below = |overhead: u32| {
        uplink_mtu
            .checked_sub(overhead)
            .filter(|mtu| *mtu >= MIN_MTU)
            .ok_or(PlanError::MtuTooSmall { mtu: uplink_mtu.saturating_sub(overhead), min: MIN_MTU })
    };
    // A device MTU only has to be sane when the device exists.
    let device =
        |used: bool, overhead: u32| if used { below(overhead) } else { Ok(uplink_mtu.saturating_sub(overhead)) };
    Ok(Mtus {
        pod: below(overhead)?,
        ipip_device: device(uses_ipip, overheads.ipip)?,
        vxlan_device: device(uses_vxlan, overheads.vxlan)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: Overheads = Overheads { ipip: 20, vxlan: 50 };

    #[test]
    fn pod_mtu_subtracts_largest_overhead_in_use() {
        let m = compute(None, "eth0", Some(1500), V4, false, false).unwrap();
        assert_eq!(m, Mtus { pod: 1500, ipip_device: 1480, vxlan_device: 1450 });
        assert_eq!(compute(None, "eth0", Some(1500), V4, true, false).unwrap().pod, 1480);
        assert_eq!(compute(None, "eth0", Some(1500), V4, false, true).unwrap().pod, 1450);
        assert_eq!(compute(None, "eth0", Some(1500), V4, true, true).unwrap().pod, 1450);
        assert_eq!(compute(None, "eth0", Some(9000), V4, true, true).unwrap().pod, 8950);
    }

    #[test]
    fn vxlan_over_ipv6_costs_seventy() {
        let o = Overheads::for_underlay("fd00::1".parse().unwrap());
        assert_eq!(compute(None, "eth0", Some(1500), o, false, true).unwrap().pod, 1430);
        let o = Overheads::for_underlay("10.0.0.1".parse().unwrap());
        assert_eq!(compute(None, "eth0", Some(1500), o, false, true).unwrap().pod, 1450);
    }

    #[test]
    fn override_wins_everywhere_even_without_uplink_mtu() {
        let m = compute(Some(1400), "eth0", None, V4, true, true).unwrap();
        assert_eq!(m, Mtus { pod: 1400, ipip_device: 1400, vxlan_device: 1400 });
    }

    #[test]
    fn missing_uplink_mtu_or_tiny_mtu_cannot_be_planned() {
        assert!(matches!(
            compute(None, "eth0", None, V4, false, false),
            Err(PlanError::MissingUplinkMtu { uplink }) if uplink == "eth0"
        ));
        assert!(matches!(compute(None, "eth0", Some(40), V4, false, true), Err(PlanError::MtuTooSmall { .. })));
        assert!(matches!(compute(Some(10), "eth0", None, V4, false, false), Err(PlanError::MtuTooSmall { .. })));
    }
}
