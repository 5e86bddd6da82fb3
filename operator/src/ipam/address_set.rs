//! A set of addresses kept as disjoint intervals, so "does this candidate block collide with
//! anything taken" is one ordered-map lookup however many blocks exist.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Taken address ranges; IPv4 and IPv6 never meet (the family is part of the key).
#[derive(Clone, Debug, Default)]
pub struct AddressSet {
    /// (family, first address) -> last address; intervals are disjoint and not adjacent.
    ranges: BTreeMap<(u8, u128), u128>,
}

fn span(net: &IpNet) -> (u8, u128, u128) {
    match (net.network(), net.broadcast()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (4, u32::from(a).into(), u32::from(b).into()),
        (IpAddr::V6(a), IpAddr::V6(b)) => (6, u128::from(a), u128::from(b)),
        // network() and broadcast() of one net are always the same family.
        _ => unreachable!("network and broadcast of one IpNet differ in family"),
    }
}

impl AddressSet {
    /// Whether any address of `net` is taken.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        let (family, first, last) = span(net);
        // Disjoint intervals: only the last one starting at or before `last` can reach `first`.
        self.ranges.range((family, 0)..=(family, last)).next_back().is_some_and(|(_, &end)| end >= first)
    }

    /// Marks every address of `net` taken.
    pub fn insert(&mut self, net: &IpNet) {
        let (family, mut first, mut last) = span(net);
        // Swallow every interval that overlaps or touches [first, last].
        let touching: Vec<(u128, u128)> = self
            .ranges
            .range((family, 0)..=(family, last.saturating_add(1)))
            .rev()
            .take_while(|&(_, &end)| end.saturating_add(1) >= first)
            .map(|(&(_, start), &end)| (start, end))
            .collect();
        for (start, end) in touching {
            self.ranges.remove(&(family, start));
            first = first.min(start);
            last = last.max(end);
        }
        self.ranges.insert((family, first), last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn finds_collisions_with_smaller_larger_and_merged_ranges() {
        let mut set = AddressSet::default();
        set.insert(&n("10.0.0.64/26"));
        set.insert(&n("10.0.1.0/24"));
        set.insert(&n("10.0.0.128/26")); // merges with .64/26 into .64-.191
        assert!(set.overlaps(&n("10.0.0.64/26")));
        assert!(set.overlaps(&n("10.0.0.0/24")), "larger candidate containing a taken block");
        assert!(set.overlaps(&n("10.0.0.128/27")), "smaller candidate inside a merged range");
        assert!(set.overlaps(&n("10.0.1.200/32")));
        assert!(!set.overlaps(&n("10.0.0.0/26")));
        assert!(!set.overlaps(&n("10.0.0.192/26")));
        assert!(!set.overlaps(&n("10.0.2.0/26")));
        assert!(!set.overlaps(&n("fd00::/64")), "families never collide");
        set.insert(&n("::/0"));
        assert!(set.overlaps(&n("fd00::/64")));
        assert!(!set.overlaps(&n("10.0.0.0/26")));
    }
}
