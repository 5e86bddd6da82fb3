//! Pools: what each IPPool means on this node, and which pool a block belongs to.
//!
//! A pool's `ipipMode`/`vxlanMode` fold into one [`Encapsulation`]. Two kinds of trouble are
//! kept apart on purpose:
//! * an *invalid* pool (both modes enabled, IPIP on an IPv6 pool) is not programmed at all —
//!   the CRD forbids these, but a hand-written snapshot might not;
//! * an *unsupported* pool (its tunnel is missing from this kernel or impossible on this
//!   node's underlay) keeps everything that does not need the tunnel: blackholes, direct
//!   in-subnet routes of CrossSubnet pools, NAT, CNI ranges.
//!
//! Both end up as the pool's human-readable `PoolPlan.error`; neither is a planning failure.

use ipnet::IpNet;
use trellis_api::EncapMode;

use crate::model::{Capabilities, Encapsulation, Phase, PoolPlan};
use crate::snapshot::{LocalNode, Pool};

/// One pool as the planner sees it.
#[derive(Clone, Debug)]
pub(super) struct PoolView {
    pub name: String,
    /// Canonical CIDR (host bits cleared).
    pub cidr: IpNet,
    pub encap: Encapsulation,
    pub nat_outgoing: bool,
    pub disabled: bool,
    /// Why the pool is not programmed at all.
    pub invalid: Option<String>,
    /// Why the pool's tunnel cannot be used on this node (its direct routes still can).
    pub unsupported: Option<String>,
    /// `allowedUses` Workload: the pool's blocks are CNI ranges.
    pub workload: bool,
    /// `allowedUses` Tunnel: a tunnel address may come from the pool's blocks.
    pub tunnel: bool,
    /// During a live change: the settings being left (as a view of their own) and the phase.
    pub leaving: Option<(Box<PoolView>, Phase)>,
}

impl PoolView {
    /// Classifies `pool` for a node with address `node` and kernel `caps`.
    pub fn new(pool: &Pool, node: &LocalNode, caps: Capabilities) -> Self {
        let mut view = Self::settings(pool, node, caps);
        view.leaving = pool.transition.as_ref().map(|t| {
            let (ipip_mode, vxlan_mode) = match t.from {
                Encapsulation::None => (EncapMode::Never, EncapMode::Never),
                Encapsulation::Ipip(m) => (m, EncapMode::Never),
                Encapsulation::Vxlan(m) => (EncapMode::Never, m),
            };
            let old =
                Pool { ipip_mode, vxlan_mode, nat_outgoing: t.from_nat_outgoing, transition: None, ..pool.clone() };
            (Box::new(Self::settings(&old, node, caps)), t.phase)
        });
        view
    }

    /// Classifies one set of settings (no transition).
    fn settings(pool: &Pool, node: &LocalNode, caps: Capabilities) -> Self {
        let cidr = pool.cidr.trunc();
        let (encap, invalid) = match (pool.ipip_mode.is_enabled(), pool.vxlan_mode.is_enabled()) {
            (true, true) => (
                Encapsulation::None,
                Some(format!(
                    "pool {} enables both ipipMode ({}) and vxlanMode ({}); pick one. The pool is not programmed",
                    pool.name, pool.ipip_mode, pool.vxlan_mode
                )),
            ),
            (true, false) if matches!(cidr, IpNet::V6(_)) => (
                Encapsulation::Ipip(pool.ipip_mode),
                Some(format!(
                    "pool {} is IPv6 but uses ipipMode {}; IPIP carries IPv4 only (use vxlanMode). The pool is not \
                     programmed",
                    pool.name, pool.ipip_mode
                )),
            ),
            (true, false) => (Encapsulation::Ipip(pool.ipip_mode), None),
            (false, true) => (Encapsulation::Vxlan(pool.vxlan_mode), None),
            (false, false) => (Encapsulation::None, None),
        };
        // One node address of one family: blocks of the other family can only be reached
        // through a tunnel that crosses families, which VXLAN/Always is (IPv6 pods over an IPv4
        // underlay); a direct route needs a node address of the block's family.
        let invalid = invalid.or_else(|| {
            let other_family = cidr.addr().is_ipv6() != node.address.addr().is_ipv6();
            (other_family && encap != Encapsulation::Vxlan(EncapMode::Always)).then(|| {
                format!(
                    "pool {} is {} but this node's address {} is not, and the pool's encapsulation {encap} routes \
                     directly (at least inside the subnet), which needs a node address of the pool's family; the \
                     agent detects one node address, so only vxlanMode Always carries this pool. The pool is not \
                     programmed",
                    pool.name,
                    if cidr.addr().is_ipv6() { "IPv6" } else { "IPv4" },
                    node.address
                )
            })
        });
        let unsupported = if invalid.is_some() {
            None
        } else {
            match encap {
                Encapsulation::Ipip(_) if !caps.ipip => Some(format!(
                    "pool {} needs IPIP but this kernel has no ipip support (modprobe ipip failed); its encapsulated \
                     routes are not programmed",
                    pool.name
                )),
                Encapsulation::Ipip(_) if matches!(node.address, IpNet::V6(_)) => Some(format!(
                    "pool {} needs IPIP but this node's address {} is IPv6 (IPIP needs an IPv4 underlay); its \
                     encapsulated routes are not programmed",
                    pool.name, node.address
                )),
                Encapsulation::Vxlan(_) if !caps.vxlan => Some(format!(
                    "pool {} needs VXLAN but this kernel has no vxlan support; its encapsulated routes are not \
                     programmed",
                    pool.name
                )),
                _ => None,
            }
        };
        Self {
            name: pool.name.clone(),
            cidr,
            encap,
            nat_outgoing: pool.nat_outgoing,
            disabled: pool.disabled,
            invalid,
            unsupported,
            workload: pool.allows_workload(),
            tunnel: pool.allows_tunnel(),
            leaving: None,
        }
    }

    /// The phase of a live change on this node, if one runs.
    pub fn phase(&self) -> Option<Phase> {
        self.leaving.as_ref().map(|(_, phase)| *phase)
    }

    /// The settings senders use now: the old ones until the Switch phase, then the new ones.
    pub fn sending(&self) -> &PoolView {
        match &self.leaving {
            Some((old, Phase::Receive)) => old,
            _ => self,
        }
    }

    /// Settings whose receive side is kept besides the sending ones: during Receive the new
    /// settings (being prepared), during Switch the old ones (peers may still send with them).
    pub fn also_receiving(&self) -> Option<&PoolView> {
        match &self.leaving {
            Some((_, Phase::Receive)) => Some(self),
            Some((old, Phase::Switch)) => Some(old),
            _ => None,
        }
    }

    /// Every set of settings whose devices must exist on this node now.
    pub fn receiving(&self) -> impl Iterator<Item = &PoolView> {
        std::iter::once(self.sending()).chain(self.also_receiving())
    }

    /// True when the pool's blocks are routed at all.
    pub fn programmed(&self) -> bool {
        self.invalid.is_none()
    }

    /// True when the pool's tunnel can be used on this node.
    pub fn tunnel_usable(&self) -> bool {
        self.invalid.is_none() && self.unsupported.is_none()
    }

    /// Encapsulation mode towards a peer: `None` = route directly, `Some(encap)` = tunnel.
    pub fn encapsulate_to(&self, peer_in_my_subnet: bool) -> Encapsulation {
        match self.encap {
            Encapsulation::Ipip(EncapMode::CrossSubnet) | Encapsulation::Vxlan(EncapMode::CrossSubnet)
                if peer_in_my_subnet =>
            {
                Encapsulation::None
            }
            other => other,
        }
    }

    /// The per-pool outcome reported in the desired state.
    pub fn outcome(&self) -> PoolPlan {
        PoolPlan {
            name: self.name.clone(),
            encapsulation: self.sending().encap,
            phase: self.phase(),
            disabled: self.disabled,
            error: self.invalid.clone().or_else(|| self.unsupported.clone()),
        }
    }
}

/// All pools of a snapshot, sorted by name, with a most-specific-pool lookup for blocks.
#[derive(Clone, Debug)]
pub(super) struct Pools(Vec<PoolView>);

impl Pools {
    pub fn new(pools: &[Pool], node: &LocalNode, caps: Capabilities) -> Self {
        let mut views: Vec<PoolView> = pools.iter().map(|p| PoolView::new(p, node, caps)).collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        Self(views)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PoolView> {
        self.0.iter()
    }

    /// Warnings for pools whose CIDRs overlap (the API reports them as a condition; a
    /// snapshot may still carry them). Blocks then belong to the most specific pool, and of
    /// pools with the same CIDR to the first by name.
    pub fn overlaps(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, a) in self.0.iter().enumerate() {
            for b in &self.0[i + 1..] {
                if a.cidr == b.cidr {
                    out.push(format!(
                        "pools {} and {} have the same CIDR {}; its blocks belong to {}",
                        a.name, b.name, a.cidr, a.name
                    ));
                } else if a.cidr.contains(&b.cidr) || b.cidr.contains(&a.cidr) {
                    let (outer, inner) = if a.cidr.contains(&b.cidr) { (a, b) } else { (b, a) };
                    out.push(format!(
                        "pool {} ({}) overlaps pool {} ({}); blocks inside {} belong to {}",
                        inner.name, inner.cidr, outer.name, outer.cidr, inner.cidr, inner.name
                    ));
                }
            }
        }
        out
    }

    /// The pool a block belongs to: the most specific pool containing it (ties: first by name).
    /// Invalid pools take part, so a block inside one is not routed through a wider pool.
    pub fn owner_of(&self, block: &IpNet) -> Option<&PoolView> {
        self.0.iter().filter(|p| p.cidr.contains(block)).fold(None, |best: Option<&PoolView>, p| match best {
            Some(b) if b.cidr.prefix_len() >= p.cidr.prefix_len() => Some(b),
            _ => Some(p),
        })
    }
}

pub(super) fn is_ipip(encap: Encapsulation) -> bool {
    matches!(encap, Encapsulation::Ipip(_))
}

pub(super) fn is_vxlan(encap: Encapsulation) -> bool {
    matches!(encap, Encapsulation::Vxlan(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addr: &str) -> LocalNode {
        LocalNode {
            name: "n1".into(),
            address: addr.parse().unwrap(),
            uplink: "eth0".into(),
            uplink_mtu: Some(1500),
            blocks: vec![],
            vtep_mac: None,
            tunnel_address: None,
        }
    }

    fn pool(name: &str, cidr: &str, ipip: EncapMode, vxlan: EncapMode) -> Pool {
        Pool {
            name: name.into(),
            cidr: cidr.parse().unwrap(),
            ipip_mode: ipip,
            vxlan_mode: vxlan,
            nat_outgoing: false,
            disabled: false,
            block_size: None,
            allowed_uses: None,
            transition: None,
        }
    }

    #[test]
    fn modes_fold_into_one_encapsulation() {
        let n = node("10.0.1.11/24");
        let caps = Capabilities::default();
        let v = PoolView::new(&pool("a", "10.244.0.0/16", EncapMode::Always, EncapMode::Never), &n, caps);
        assert_eq!(v.encap, Encapsulation::Ipip(EncapMode::Always));
        let v = PoolView::new(&pool("a", "10.244.0.0/16", EncapMode::Never, EncapMode::CrossSubnet), &n, caps);
        assert_eq!(v.encap, Encapsulation::Vxlan(EncapMode::CrossSubnet));
        let v = PoolView::new(&pool("a", "10.244.0.0/16", EncapMode::Never, EncapMode::Never), &n, caps);
        assert_eq!(v.encap, Encapsulation::None);
        assert!(v.tunnel_usable());
    }

    #[test]
    fn both_modes_or_ipip_v6_make_the_pool_invalid() {
        let n = node("10.0.1.11/24");
        let caps = Capabilities::default();
        let both = PoolView::new(&pool("both", "10.244.0.0/16", EncapMode::Always, EncapMode::Always), &n, caps);
        assert!(!both.programmed());
        assert!(both.outcome().error.unwrap().contains("both ipipMode"));
        let v6 = PoolView::new(&pool("v6", "fd00:244::/48", EncapMode::Always, EncapMode::Never), &n, caps);
        assert!(!v6.programmed());
        assert!(v6.outcome().error.unwrap().contains("IPv6"));
    }

    #[test]
    fn missing_capability_keeps_the_pool_programmed() {
        let n = node("10.0.1.11/24");
        let caps = Capabilities { ipip: false, vxlan: true };
        let v = PoolView::new(&pool("ip", "10.244.0.0/16", EncapMode::CrossSubnet, EncapMode::Never), &n, caps);
        assert!(v.programmed());
        assert!(!v.tunnel_usable());
        assert!(v.outcome().error.unwrap().contains("modprobe ipip"));
    }

    #[test]
    fn crosssubnet_goes_direct_inside_the_subnet_only() {
        let n = node("10.0.1.11/24");
        let v = PoolView::new(
            &pool("a", "10.244.0.0/16", EncapMode::Never, EncapMode::CrossSubnet),
            &n,
            Capabilities::default(),
        );
        assert_eq!(v.encapsulate_to(true), Encapsulation::None);
        assert_eq!(v.encapsulate_to(false), Encapsulation::Vxlan(EncapMode::CrossSubnet));
    }

    #[test]
    fn block_belongs_to_most_specific_pool() {
        let n = node("10.0.1.11/24");
        let caps = Capabilities::default();
        let pools = Pools::new(
            &[
                pool("wide", "10.0.0.0/8", EncapMode::Never, EncapMode::Never),
                pool("narrow", "10.244.0.0/16", EncapMode::Always, EncapMode::Never),
            ],
            &n,
            caps,
        );
        let b: IpNet = "10.244.3.0/26".parse().unwrap();
        assert_eq!(pools.owner_of(&b).unwrap().name, "narrow");
        let b: IpNet = "10.9.0.0/26".parse().unwrap();
        assert_eq!(pools.owner_of(&b).unwrap().name, "wide");
        let b: IpNet = "192.168.0.0/26".parse().unwrap();
        assert!(pools.owner_of(&b).is_none());
    }
}
