//! Pool overlap detection: a semantic check that needs every pool, so it is the operator's
//! (reported as a `CIDROverlap` condition), not the schema's. Pure and unit-tested here.

use ipnet::IpNet;

/// Pairs of pool names whose CIDRs overlap (two CIDRs overlap iff one contains the other's
/// network address). Sorted, each pair once with the smaller name first.
pub fn overlapping_pools<'a>(pools: &[(&'a str, IpNet)]) -> Vec<(&'a str, &'a str)> {
    let mut out = Vec::new();
    for (i, (a, ca)) in pools.iter().enumerate() {
        for (b, cb) in &pools[i + 1..] {
            if ca.contains(&cb.network()) || cb.contains(&ca.network()) {
                out.push(if a <= b { (*a, *b) } else { (*b, *a) });
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p<'a>(name: &'a str, cidr: &str) -> (&'a str, IpNet) {
        (name, cidr.parse().unwrap())
    }

    #[test]
    fn finds_nested_and_equal_pools_only() {
        let pools = [
            p("a", "10.0.0.0/16"),
            p("b", "10.0.128.0/17"),
            p("c", "10.1.0.0/16"),
            p("d", "fd00::/48"),
            p("e", "10.1.0.0/16"),
        ];
        assert_eq!(overlapping_pools(&pools), vec![("a", "b"), ("c", "e")]);
        assert!(overlapping_pools(&[p("x", "10.0.0.0/24"), p("y", "10.0.1.0/24")]).is_empty());
    }
}
