//! A block: a CIDR carved from a pool, affine to one node.

use ipnet::IpNet;

/// A block as IPAM sees it (the spec of an `IPAMBlock`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    pub cidr: IpNet,
    pub pool: String,
    pub node: String,
}

/// Whether two CIDRs share an address: one contains the other's network address.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_is_containment_either_way_and_never_across_families() {
        assert!(overlaps(&n("10.0.0.0/24"), &n("10.0.0.64/26")));
        assert!(overlaps(&n("10.0.0.64/26"), &n("10.0.0.0/24")));
        assert!(overlaps(&n("10.0.0.0/26"), &n("10.0.0.0/26")));
        assert!(!overlaps(&n("10.0.0.0/26"), &n("10.0.0.64/26")));
        assert!(!overlaps(&n("10.0.0.0/8"), &n("fd00::/8")));
    }
}
