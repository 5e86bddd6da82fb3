//! Which pools are not used because they overlap an older pool.
//!
//! Admission sees one object at a time, so two pools can overlap. Like Calico's IPAM, Trellis
//! keeps using the pool that was there first and leaves the newer one unused (no blocks are
//! claimed from it) with a `CIDROverlap` condition, so an existing network never changes under
//! running pods because someone added a pool.

use std::collections::BTreeMap;

use ipnet::IpNet;
use trellis_api::overlap::overlapping_pools;

/// A pool's identity and age.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolAge<'a> {
    pub name: &'a str,
    pub cidr: IpNet,
    /// creationTimestamp, seconds since the epoch (ties are broken by name).
    pub created: i64,
}

/// For every pool that overlaps an older one: the oldest pool it overlaps.
pub fn older_overlapping<'a>(pools: &[PoolAge<'a>]) -> BTreeMap<&'a str, &'a str> {
    let age: BTreeMap<&str, (i64, &str)> = pools.iter().map(|p| (p.name, (p.created, p.name))).collect();
    let named: Vec<(&str, IpNet)> = pools.iter().map(|p| (p.name, p.cidr)).collect();
    let mut out: BTreeMap<&'a str, &'a str> = BTreeMap::new();
    for (a, b) in overlapping_pools(&named) {
        let (older, newer) = if age[a] <= age[b] { (a, b) } else { (b, a) };
        let slot = out.entry(newer).or_insert(older);
        if age[older] < age[*slot] {
            *slot = older;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &'static str, cidr: &str, created: i64) -> PoolAge<'static> {
        PoolAge { name, cidr: cidr.parse().unwrap(), created }
    }

    /// (case, pools, excluded pool -> the older pool it overlaps)
    type Case = (&'static str, Vec<PoolAge<'static>>, Vec<(&'static str, &'static str)>);

    #[test]
    fn the_newer_pool_of_each_overlap_is_excluded_and_names_the_oldest_it_overlaps() {
        let cases: Vec<Case> = vec![
            ("disjoint pools are all used", vec![p("a", "10.0.0.0/16", 5), p("b", "10.1.0.0/16", 1)], vec![]),
            ("newer by timestamp loses", vec![p("a", "10.0.0.0/16", 5), p("b", "10.0.0.0/17", 1)], vec![("a", "b")]),
            (
                "same second: the later name loses",
                vec![p("z", "10.0.0.0/16", 1), p("a", "10.0.0.0/16", 1)],
                vec![("z", "a")],
            ),
            (
                "a pool overlapping two older ones names the oldest",
                vec![p("big", "10.0.0.0/8", 9), p("x", "10.1.0.0/16", 3), p("y", "10.2.0.0/16", 2)],
                vec![("big", "y")],
            ),
            (
                "a chain: each newer pool is excluded",
                vec![p("a", "10.0.0.0/16", 1), p("b", "10.0.0.0/8", 2), p("c", "10.200.0.0/16", 3)],
                vec![("b", "a"), ("c", "b")],
            ),
            ("families never overlap", vec![p("a", "10.0.0.0/8", 1), p("b", "fd00::/8", 2)], vec![]),
        ];
        for (name, pools, want) in cases {
            let want: BTreeMap<&str, &str> = want.into_iter().collect();
            assert_eq!(older_overlapping(&pools), want, "case: {name}");
        }
    }
}
