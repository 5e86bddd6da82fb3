//! The IPAM decision: given pools, nodes and the blocks that exist, which blocks to claim and
//! which to release.
//!
//! Rules (Calico's, minus per-address allocation, which is the CNI plugin's):
//! * every node a usable pool selects gets one block of that pool, the lowest free one; nodes and
//!   pools are taken in name order, so the same input always gives the same claims;
//! * a block is free when no existing block of *any* pool shares an address with it, so two
//!   blocks never overlap, even across pools of different block sizes;
//! * a pool that is not allocatable (disabled, overlapping an older pool, bad selector) gets no
//!   new blocks, but its existing blocks stay (running pods keep their addresses);
//! * a block is released when its node or its pool is gone, or it no longer fits its pool (the
//!   pool was deleted and re-created with another CIDR or block size);
//! * nodes a pool cannot serve any more are reported as starved, never as an error.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;

use super::address_set::AddressSet;
use super::block::Block;

/// A pool as IPAM sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    pub cidr: IpNet,
    /// Prefix length of its blocks.
    pub block_prefix: u8,
    /// Whether new blocks may be claimed from it.
    pub allocatable: bool,
    /// The nodes its nodeSelector selects.
    pub nodes: BTreeSet<String>,
}

/// Why a block goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReleaseReason {
    NodeGone,
    PoolGone,
    /// The block is not a block of its pool's CIDR and block size.
    NotInPool,
}

/// A block to delete, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub block: Block,
    pub reason: ReleaseReason,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Blocks to create, in pool then node order.
    pub claims: Vec<Block>,
    /// Blocks to delete, in block order.
    pub releases: Vec<Release>,
    /// Per pool: selected nodes without a block of it that it has no free block for.
    pub starved: BTreeMap<String, Vec<String>>,
}

/// Decides claims and releases. `nodes` are the nodes that exist; `blocks` the blocks that exist.
pub fn plan(pools: &[Pool], nodes: &BTreeSet<String>, blocks: &[Block]) -> Plan {
    let by_name: BTreeMap<&str, &Pool> = pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut sorted: Vec<&Block> = blocks.iter().collect();
    sorted.sort();

    let mut plan = Plan::default();
    let mut taken = AddressSet::default();
    let mut served: BTreeSet<(&str, &str)> = BTreeSet::new();
    for block in sorted {
        // Blocks being released are still taken until they are gone: a claim in the same pass
        // must not reuse an address a pod may still hold.
        taken.insert(&block.cidr);
        let reason = match by_name.get(block.pool.as_str()) {
            _ if !nodes.contains(&block.node) => Some(ReleaseReason::NodeGone),
            None => Some(ReleaseReason::PoolGone),
            Some(pool) if !fits(pool, &block.cidr) => Some(ReleaseReason::NotInPool),
            Some(_) => None,
        };
        match reason {
            Some(reason) => plan.releases.push(Release { block: block.clone(), reason }),
            None => {
                served.insert((block.pool.as_str(), block.node.as_str()));
            }
        }
    }

    for pool in by_name.values().filter(|p| p.allocatable) {
        let wanting =
            pool.nodes.iter().filter(|n| nodes.contains(*n) && !served.contains(&(pool.name.as_str(), n.as_str())));
        // A block size larger than the pool (admission forbids it) leaves nothing to hand out.
        let mut candidates = pool.cidr.subnets(pool.block_prefix).ok().into_iter().flatten();
        for node in wanting {
            match candidates.by_ref().find(|c| !taken.overlaps(c)) {
                Some(cidr) => {
                    taken.insert(&cidr);
                    plan.claims.push(Block { cidr, pool: pool.name.clone(), node: node.clone() });
                }
                None => plan.starved.entry(pool.name.clone()).or_default().push(node.clone()),
            }
        }
    }
    plan
}

/// Whether `cidr` is one of the pool's blocks.
fn fits(pool: &Pool, cidr: &IpNet) -> bool {
    cidr.prefix_len() == pool.block_prefix && pool.cidr.contains(cidr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn pool(name: &str, cidr: &str, block_prefix: u8, nodes: &[&str]) -> Pool {
        Pool { name: name.into(), cidr: net(cidr), block_prefix, allocatable: true, nodes: names(nodes) }
    }

    fn block(cidr: &str, pool: &str, node: &str) -> Block {
        Block { cidr: net(cidr), pool: pool.into(), node: node.into() }
    }

    struct Case {
        name: &'static str,
        pools: Vec<Pool>,
        nodes: &'static [&'static str],
        blocks: Vec<Block>,
        claims: Vec<Block>,
        releases: Vec<(Block, ReleaseReason)>,
        starved: Vec<(&'static str, Vec<&'static str>)>,
    }

    #[test]
    fn plans_claims_releases_and_starvation() {
        use ReleaseReason::*;
        let cases = vec![
            Case {
                name: "new nodes get the lowest free blocks in name order",
                pools: vec![pool("p", "10.0.0.0/24", 26, &["b", "a", "c"])],
                nodes: &["a", "b", "c"],
                blocks: vec![],
                claims: vec![
                    block("10.0.0.0/26", "p", "a"),
                    block("10.0.0.64/26", "p", "b"),
                    block("10.0.0.128/26", "p", "c"),
                ],
                releases: vec![],
                starved: vec![],
            },
            Case {
                name: "a node with a block gets no second one; holes are filled first",
                pools: vec![pool("p", "10.0.0.0/24", 26, &["a", "b"])],
                nodes: &["a", "b"],
                blocks: vec![block("10.0.0.64/26", "p", "a")],
                claims: vec![block("10.0.0.0/26", "p", "b")],
                releases: vec![],
                starved: vec![],
            },
            Case {
                name: "one block per node per selected pool; unselected nodes get none",
                pools: vec![pool("p", "10.0.0.0/24", 26, &["a", "b"]), pool("q", "10.1.0.0/24", 25, &["b"])],
                nodes: &["a", "b", "c"],
                blocks: vec![],
                claims: vec![
                    block("10.0.0.0/26", "p", "a"),
                    block("10.0.0.64/26", "p", "b"),
                    block("10.1.0.0/25", "q", "b"),
                ],
                releases: vec![],
                starved: vec![],
            },
            Case {
                name: "blocks of other pools and of other sizes are never overlapped",
                pools: vec![pool("p", "10.0.0.0/24", 26, &["a", "b"])],
                nodes: &["a", "b", "x"],
                blocks: vec![block("10.0.0.0/25", "old", "x"), block("10.0.0.192/28", "q", "x")],
                claims: vec![block("10.0.0.128/26", "p", "a")],
                releases: vec![
                    (block("10.0.0.0/25", "old", "x"), PoolGone),
                    (block("10.0.0.192/28", "q", "x"), PoolGone),
                ],
                starved: vec![("p", vec!["b"])],
            },
            Case {
                name: "deleted node releases its blocks; its addresses are not reused in the same pass",
                pools: vec![pool("p", "10.0.0.0/25", 26, &["a", "b", "gone"])],
                nodes: &["a", "b"],
                blocks: vec![block("10.0.0.0/26", "p", "gone"), block("10.0.0.64/26", "p", "a")],
                claims: vec![],
                releases: vec![(block("10.0.0.0/26", "p", "gone"), NodeGone)],
                starved: vec![("p", vec!["b"])],
            },
            Case {
                name: "deleted pool releases its blocks",
                pools: vec![],
                nodes: &["a"],
                blocks: vec![block("10.0.0.0/26", "p", "a")],
                claims: vec![],
                releases: vec![(block("10.0.0.0/26", "p", "a"), PoolGone)],
                starved: vec![],
            },
            Case {
                name: "a block that does not fit its re-created pool is released and replaced",
                pools: vec![pool("p", "10.9.0.0/24", 26, &["a"])],
                nodes: &["a"],
                blocks: vec![block("10.0.0.0/26", "p", "a")],
                claims: vec![block("10.9.0.0/26", "p", "a")],
                releases: vec![(block("10.0.0.0/26", "p", "a"), NotInPool)],
                starved: vec![],
            },
            Case {
                name: "a disabled or excluded pool claims nothing and keeps its blocks",
                pools: vec![Pool { allocatable: false, ..pool("p", "10.0.0.0/24", 26, &["a", "b"]) }],
                nodes: &["a", "b"],
                blocks: vec![block("10.0.0.0/26", "p", "a")],
                claims: vec![],
                releases: vec![],
                starved: vec![],
            },
            Case {
                name: "an exhausted pool starves the remaining nodes in name order",
                pools: vec![pool("p", "10.0.0.0/25", 26, &["d", "c", "b", "a"])],
                nodes: &["a", "b", "c", "d"],
                blocks: vec![],
                claims: vec![block("10.0.0.0/26", "p", "a"), block("10.0.0.64/26", "p", "b")],
                releases: vec![],
                starved: vec![("p", vec!["c", "d"])],
            },
            Case {
                name: "IPv6 pools hand out blocks too",
                pools: vec![pool("v6", "fd00:10::/120", 122, &["a", "b"])],
                nodes: &["a", "b"],
                blocks: vec![block("fd00:10::/122", "v6", "b")],
                claims: vec![block("fd00:10::40/122", "v6", "a")],
                releases: vec![],
                starved: vec![],
            },
        ];
        for case in cases {
            let got = plan(&case.pools, &names(case.nodes), &case.blocks);
            let want = Plan {
                claims: case.claims,
                releases: case.releases.into_iter().map(|(block, reason)| Release { block, reason }).collect(),
                starved: case
                    .starved
                    .into_iter()
                    .map(|(p, ns)| (p.to_string(), ns.into_iter().map(String::from).collect()))
                    .collect(),
            };
            assert_eq!(got, want, "case: {}", case.name);
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        const NODES: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];

        /// Small pools inside 10.0.0.0/20 so that they overlap each other and run out.
        fn arb_pool(i: usize) -> impl Strategy<Value = Pool> {
            (0u32..16, 22u8..=26, 0u8..=4, any::<bool>(), proptest::sample::subsequence(NODES.to_vec(), 0..=6))
                .prop_map(move |(start, prefix, extra, allocatable, nodes)| {
                    let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + (start << 8);
                    let cidr = ipnet::Ipv4Net::new(base.into(), prefix).unwrap().trunc();
                    Pool {
                        name: format!("p{i}"),
                        cidr: IpNet::V4(cidr),
                        block_prefix: prefix + extra,
                        allocatable,
                        nodes: nodes.into_iter().map(String::from).collect(),
                    }
                })
        }

        /// Existing blocks: any CIDR in the range, any pool name (also unknown ones), any node
        /// (also deleted ones). They may even overlap each other, as hand-made objects could.
        fn arb_block() -> impl Strategy<Value = Block> {
            (0u32..4096, 22u8..=30, 0usize..5, 0usize..8).prop_map(|(offset, prefix, pool, node)| {
                let base = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + (offset << 4);
                Block {
                    cidr: IpNet::V4(ipnet::Ipv4Net::new(base.into(), prefix).unwrap().trunc()),
                    pool: format!("p{pool}"),
                    node: format!("n{node}"),
                }
            })
        }

        fn arb_input() -> impl Strategy<Value = (Vec<Pool>, BTreeSet<String>, Vec<Block>)> {
            (
                (arb_pool(0), arb_pool(1), arb_pool(2), arb_pool(3)).prop_map(|(a, b, c, d)| vec![a, b, c, d]),
                proptest::sample::subsequence(NODES.to_vec(), 0..=6)
                    .prop_map(|ns| ns.into_iter().map(String::from).collect()),
                proptest::collection::vec(arb_block(), 0..12),
            )
        }

        proptest! {
            #[test]
            fn claims_are_unique_inside_their_pool_and_one_per_node_per_pool(
                (pools, nodes, blocks) in arb_input()
            ) {
                let plan = plan(&pools, &nodes, &blocks);
                let by_name: BTreeMap<&str, &Pool> = pools.iter().map(|p| (p.name.as_str(), p)).collect();

                // Never two blocks for one address: claims collide neither with each other nor
                // with anything that exists.
                for (i, c) in plan.claims.iter().enumerate() {
                    for b in &blocks {
                        prop_assert!(!overlaps_net(&c.cidr, &b.cidr), "claim {c:?} overlaps existing {b:?}");
                    }
                    for d in &plan.claims[i + 1..] {
                        prop_assert!(!overlaps_net(&c.cidr, &d.cidr), "claims {c:?} and {d:?} overlap");
                    }
                    let pool = by_name[c.pool.as_str()];
                    prop_assert!(pool.allocatable, "claim from a pool that is not allocatable: {c:?}");
                    prop_assert!(pool.cidr.contains(&c.cidr) && c.cidr.prefix_len() == pool.block_prefix);
                    prop_assert!(pool.nodes.contains(&c.node) && nodes.contains(&c.node));
                }

                // After the plan: every existing node an allocatable pool selects has exactly
                // one block of it (kept or claimed) unless the pool starved it, and a starved
                // pool really has no free block left.
                let released: BTreeSet<&Block> = plan.releases.iter().map(|r| &r.block).collect();
                let after: Vec<&Block> =
                    blocks.iter().filter(|b| !released.contains(b)).chain(&plan.claims).collect();
                for pool in pools.iter().filter(|p| p.allocatable) {
                    let starved: BTreeSet<&String> =
                        plan.starved.get(&pool.name).into_iter().flatten().collect();
                    for node in pool.nodes.iter().filter(|n| nodes.contains(*n)) {
                        let had = blocks
                            .iter()
                            .filter(|b| !released.contains(b) && b.pool == pool.name && &b.node == node)
                            .count();
                        let claimed = plan.claims.iter().filter(|b| b.pool == pool.name && &b.node == node).count();
                        prop_assert!(claimed <= 1 && (had == 0 || claimed == 0));
                        prop_assert_eq!(had + claimed == 0, starved.contains(node), "pool {} node {}", pool.name, node);
                    }
                    if !starved.is_empty() {
                        let free = pool
                            .cidr
                            .subnets(pool.block_prefix)
                            .unwrap()
                            .find(|c| blocks.iter().chain(after.iter().copied()).all(|b| !overlaps_net(c, &b.cidr)));
                        prop_assert!(free.is_none(), "pool {} starved nodes but {free:?} is free", pool.name);
                    }
                }

                // Releases: exactly the blocks whose node or pool is gone or that do not fit.
                for b in &blocks {
                    let keep = nodes.contains(&b.node)
                        && by_name.get(b.pool.as_str()).is_some_and(|p| fits(p, &b.cidr));
                    prop_assert_eq!(keep, !released.contains(b), "block {:?}", b);
                }
            }

            #[test]
            fn the_plan_does_not_depend_on_input_order((pools, nodes, blocks) in arb_input()) {
                let mut rev_pools = pools.clone();
                rev_pools.reverse();
                let mut rev_blocks = blocks.clone();
                rev_blocks.reverse();
                prop_assert_eq!(plan(&pools, &nodes, &blocks), plan(&rev_pools, &nodes, &rev_blocks));
            }
        }

        /// Brute-force overlap, independent of the code under test.
        fn overlaps_net(a: &IpNet, b: &IpNet) -> bool {
            b.network() <= a.broadcast() && a.network() <= b.broadcast()
        }
    }
}
