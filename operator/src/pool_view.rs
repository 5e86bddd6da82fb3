//! What the operator reads from the cluster, in the shape the pure decisions take: an IPPool
//! with its defaults applied and its selector parsed, the Nodes' labels, the IPAMBlocks.
//! Pure: the controllers hand in objects from their caches or a LIST.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use trellis_api::defaults::block_size_for;
use trellis_api::{IPAMBlock, IPPool};

use crate::ipam;
use crate::ippool::{PoolAge, older_overlapping};
use trellis_api::selector::Selector;

/// Node name -> labels.
pub type NodeLabels = BTreeMap<String, BTreeMap<String, String>>;

/// An IPPool as the operator's decisions see it.
#[derive(Clone, Debug)]
pub struct PoolView {
    pub name: String,
    pub generation: i64,
    pub cidr: IpNet,
    pub block_prefix: u8,
    pub disabled: bool,
    /// The parsed nodeSelector (default `all()`), or why it does not parse.
    pub selector: Result<Selector, String>,
    /// creationTimestamp in seconds since the epoch.
    pub created: i64,
    /// Whether IPAM hands out blocks from it: `assignmentMode` Automatic and `allowedUses`
    /// containing Workload or Tunnel (a Manual or LoadBalancer-only pool gives no node a block).
    pub assigns_blocks: bool,
    /// Accepted settings Trellis does not act on yet (messages for a condition and an Event).
    pub unsupported: Vec<String>,
}

/// A pool whose spec cannot be read (admission makes this impossible for pools it admitted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("IPPool {pool}: {problem}")]
pub struct UnreadablePool {
    pub pool: String,
    pub problem: String,
}

impl PoolView {
    pub fn from_pool(pool: &IPPool) -> Result<PoolView, UnreadablePool> {
        let name = pool.metadata.name.clone().unwrap_or_default();
        let bad = |problem: String| UnreadablePool { pool: name.clone(), problem };
        let cidr: IpNet = pool.spec.cidr.parse().map_err(|e| bad(format!("spec.cidr {:?}: {e}", pool.spec.cidr)))?;
        let block_size = pool.spec.block_size.unwrap_or_else(|| block_size_for(&cidr));
        let block_prefix = u8::try_from(block_size)
            .ok()
            .filter(|b| *b >= cidr.prefix_len() && *b <= cidr.max_prefix_len())
            .ok_or_else(|| bad(format!("spec.blockSize {block_size} does not fit {cidr}")))?;
        let selector = match pool.spec.node_selector.as_deref() {
            None => Ok(Selector::all()),
            Some(text) => Selector::parse(text).map_err(|e| e.to_string()),
        };
        Ok(PoolView {
            generation: pool.metadata.generation.unwrap_or(0),
            cidr,
            block_prefix,
            disabled: pool.spec.disabled.unwrap_or(false),
            selector,
            created: pool.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(0),
            assigns_blocks: pool.spec.assigns_automatically()
                && (pool.spec.allows_workload() || pool.spec.allows_tunnel()),
            unsupported: pool.spec.unsupported_fields(),
            name,
        })
    }

    /// The nodes the pool's selector selects (none when it does not parse).
    pub fn selected(&self, nodes: &NodeLabels) -> BTreeSet<String> {
        match &self.selector {
            Ok(selector) => {
                nodes.iter().filter(|(_, labels)| selector.matches(labels)).map(|(n, _)| n.clone()).collect()
            }
            Err(_) => BTreeSet::new(),
        }
    }
}

/// Every pool that overlaps an older one, with the oldest it overlaps.
pub fn overlaps(pools: &[PoolView]) -> BTreeMap<String, String> {
    let ages: Vec<PoolAge> =
        pools.iter().map(|p| PoolAge { name: &p.name, cidr: p.cidr, created: p.created }).collect();
    older_overlapping(&ages).into_iter().map(|(newer, older)| (newer.to_string(), older.to_string())).collect()
}

/// The IPAM input: pools (allocatable unless disabled, overlapping an older pool, with a bad
/// selector, or not assigning blocks automatically) with their selected nodes, and the blocks that parse. Blocks of pools that exist but
/// cannot be read are left out, so nothing is decided about them.
pub fn ipam_input(
    pools: &[PoolView],
    unreadable: &BTreeSet<String>,
    nodes: &NodeLabels,
    blocks: &[IPAMBlock],
) -> (Vec<ipam::Pool>, Vec<ipam::Block>) {
    let overlapping = overlaps(pools);
    let ipam_pools = pools
        .iter()
        .map(|p| ipam::Pool {
            name: p.name.clone(),
            cidr: p.cidr,
            block_prefix: p.block_prefix,
            allocatable: !p.disabled && p.assigns_blocks && p.selector.is_ok() && !overlapping.contains_key(&p.name),
            nodes: p.selected(nodes),
        })
        .collect();
    let ipam_blocks = blocks
        .iter()
        .filter(|b| !unreadable.contains(&b.spec.pool))
        .filter_map(|b| match b.spec.cidr.parse() {
            Ok(cidr) => Some(ipam::Block { cidr, pool: b.spec.pool.clone(), node: b.spec.node.clone() }),
            Err(_) => {
                tracing::warn!(block = ?b.metadata.name, cidr = %b.spec.cidr, "IPAMBlock with an unparsable CIDR is ignored");
                None
            }
        })
        .collect();
    (ipam_pools, ipam_blocks)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;
    use trellis_api::{IPAMBlockSpec, IPPoolSpec};

    use super::*;

    fn pool(name: &str, created: i64, spec: IPPoolSpec) -> IPPool {
        IPPool {
            metadata: ObjectMeta {
                name: Some(name.into()),
                generation: Some(3),
                creation_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec,
            status: None,
        }
    }

    fn spec(cidr: &str) -> IPPoolSpec {
        IPPoolSpec { cidr: cidr.into(), ..Default::default() }
    }

    fn nodes() -> NodeLabels {
        [("a", vec![("rack", "1")]), ("b", vec![("rack", "2")]), ("c", vec![])]
            .into_iter()
            .map(|(n, ls)| (n.to_string(), ls.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
            .collect()
    }

    #[test]
    fn pools_get_default_block_size_selection_and_allocatability() {
        let pools = [
            pool("v4", 1, spec("10.0.0.0/16")),
            pool("v6", 1, IPPoolSpec { node_selector: Some("rack == \"1\"".into()), ..spec("fd00::/48") }),
            pool("newer", 2, spec("10.0.0.0/24")),
            pool("off", 1, IPPoolSpec { disabled: Some(true), ..spec("10.1.0.0/16") }),
            pool("bad", 1, IPPoolSpec { node_selector: Some("rack ==".into()), ..spec("10.2.0.0/16") }),
        ];
        let views: Vec<PoolView> = pools.iter().map(|p| PoolView::from_pool(p).unwrap()).collect();
        let (ipam_pools, _) = ipam_input(&views, &BTreeSet::new(), &nodes(), &[]);
        let got: Vec<(&str, u8, bool, Vec<&str>)> = ipam_pools
            .iter()
            .map(|p| (p.name.as_str(), p.block_prefix, p.allocatable, p.nodes.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("v4", 26, true, vec!["a", "b", "c"]),
                ("v6", 122, true, vec!["a"]),
                ("newer", 26, false, vec!["a", "b", "c"]),
                ("off", 26, false, vec!["a", "b", "c"]),
                ("bad", 26, false, vec![]),
            ]
        );
        assert_eq!(views[2].generation, 3);
        assert!(views[4].selector.is_err());
    }

    #[test]
    fn manual_and_load_balancer_only_pools_give_no_node_a_block() {
        use trellis_api::ip_pool::{AllowedUse, AssignmentMode};
        let pools = [
            pool("auto", 1, spec("10.0.0.0/16")),
            pool("manual", 1, IPPoolSpec { assignment_mode: Some(AssignmentMode::Manual), ..spec("10.1.0.0/16") }),
            pool("lb", 1, IPPoolSpec { allowed_uses: Some(vec![AllowedUse::LoadBalancer]), ..spec("10.2.0.0/16") }),
            pool("tunnel", 1, IPPoolSpec { allowed_uses: Some(vec![AllowedUse::Tunnel]), ..spec("10.3.0.0/16") }),
        ];
        let views: Vec<PoolView> = pools.iter().map(|p| PoolView::from_pool(p).unwrap()).collect();
        let (ipam_pools, _) = ipam_input(&views, &BTreeSet::new(), &nodes(), &[]);
        let allocatable: Vec<(&str, bool)> = ipam_pools.iter().map(|p| (p.name.as_str(), p.allocatable)).collect();
        assert_eq!(allocatable, vec![("auto", true), ("manual", false), ("lb", false), ("tunnel", true)]);
        assert!(views[0].unsupported.is_empty());
        assert!(views[1].unsupported.iter().any(|m| m.contains("assignmentMode")), "{:?}", views[1].unsupported);
        assert!(views[2].unsupported.iter().any(|m| m.contains("LoadBalancer")), "{:?}", views[2].unsupported);
    }

    #[test]
    fn unreadable_pools_keep_their_blocks_out_of_every_decision() {
        let bad = pool("broken", 1, IPPoolSpec { block_size: Some(8), ..spec("10.0.0.0/16") });
        assert!(PoolView::from_pool(&bad).unwrap_err().problem.contains("blockSize 8"));
        let block = |cidr: &str, pool: &str| {
            IPAMBlock::new("x", IPAMBlockSpec { cidr: cidr.into(), pool: pool.into(), node: "a".into() })
        };
        let unreadable = BTreeSet::from(["broken".to_string()]);
        let (_, blocks) = ipam_input(
            &[],
            &unreadable,
            &nodes(),
            &[block("10.0.0.0/26", "broken"), block("10.9.0.0/26", "gone"), block("junk", "gone")],
        );
        assert_eq!(
            blocks,
            vec![ipam::Block { cidr: "10.9.0.0/26".parse().unwrap(), pool: "gone".into(), node: "a".into() }]
        );
    }
}
