//! How many of a pool's selected nodes run its current generation, from their NodeNetwork
//! statuses: a node is converged for a pool when its status lists the pool with the pool's
//! `metadata.generation` and no error.

use std::collections::{BTreeMap, BTreeSet};

use trellis_api::node_network::AppliedPool;

/// Convergence of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Convergence {
    pub selected: usize,
    pub converged: usize,
    /// Selected nodes that have not applied the generation yet (no NodeNetwork, no entry for
    /// the pool, or another generation), by name.
    pub lagging: Vec<String>,
    /// Selected nodes that report an error for the pool, with the error.
    pub errors: Vec<(String, String)>,
}

/// `applied` maps node name to the pools its NodeNetwork status lists.
pub fn convergence(
    pool: &str,
    generation: i64,
    selected: &BTreeSet<String>,
    applied: &BTreeMap<String, Vec<AppliedPool>>,
) -> Convergence {
    let mut out = Convergence { selected: selected.len(), ..Default::default() };
    for node in selected {
        let entry = applied.get(node).and_then(|pools| pools.iter().find(|p| p.name == pool));
        match entry {
            Some(AppliedPool { error: Some(error), .. }) => out.errors.push((node.clone(), error.clone())),
            Some(p) if p.generation == generation => out.converged += 1,
            _ => out.lagging.push(node.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(name: &str, generation: i64, error: Option<&str>) -> AppliedPool {
        AppliedPool {
            name: name.into(),
            generation,
            encapsulation: "VXLAN/Always".into(),
            phase: None,
            error: error.map(String::from),
        }
    }

    #[test]
    fn counts_only_selected_nodes_that_applied_this_generation_without_error() {
        let selected: BTreeSet<String> = ["a", "b", "c", "d", "e"].iter().map(|s| s.to_string()).collect();
        let statuses: BTreeMap<String, Vec<AppliedPool>> = [
            ("a", vec![applied("other", 1, None), applied("p", 3, None)]), // converged
            ("b", vec![applied("p", 2, None)]),                            // old generation
            ("c", vec![applied("other", 3, None)]),                        // pool not applied
            ("d", vec![applied("p", 3, Some("kernel lacks ipip"))]),       // error
            ("x", vec![applied("p", 3, None)]),                            // not selected
        ]
        .into_iter()
        .map(|(n, p)| (n.to_string(), p))
        .collect();
        let got = convergence("p", 3, &selected, &statuses);
        assert_eq!(
            got,
            Convergence {
                selected: 5,
                converged: 1,
                lagging: vec!["b".into(), "c".into(), "e".into()],
                errors: vec![("d".into(), "kernel lacks ipip".into())],
            }
        );
    }
}
