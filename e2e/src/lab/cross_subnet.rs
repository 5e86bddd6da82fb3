//! Chapter: `kubectl patch ippool … vxlanMode: CrossSubnet` — the route to the peer in the
//! same subnet flips from the VXLAN device to the plain uplink, the one across the router
//! stays on VXLAN; captures show both.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;

use super::{Lab, POOL, indent, wire};

pub fn run(lab: &mut Lab) -> Result<()> {
    let peers = ["node2", "node3"];
    let mut before = BTreeMap::new();
    for peer in peers {
        before.insert(peer, lab.cluster.route_to("node1", peer)?);
    }
    let t = Instant::now();
    print!("{}", indent(&lab.cluster.patch_pool(POOL, r#"{"spec":{"vxlanMode":"CrossSubnet"}}"#)?));
    lab.cluster.wait_pool_mode(POOL, "VXLAN/CrossSubnet")?;
    println!("  every node applied it after {:.1?}", t.elapsed());
    let node2_ip = lab.cluster.node("node2")?.ip();
    for peer in peers {
        let after = lab.cluster.route_to("node1", peer)?;
        let flipped = if before[peer] == after { "unchanged" } else { "flipped" };
        println!("  node1 -> {peer} ({flipped}):\n    before: {}\n    after:  {after}", before[peer]);
        if peer == "node2" {
            let want = format!("via {node2_ip} dev eth0");
            lab.summary.check("CrossSubnet: node1 -> node2 (same subnet)", &want, &after, after.contains(&want));
        } else {
            let want = "dev vxlan.trellis onlink";
            lab.summary.check("CrossSubnet: node1 -> node3 (other subnet)", want, &after, after.contains(want));
        }
    }
    wire::show(lab, "node1", "pod-a", "pod-b", "plain")?;
    wire::show(lab, "node1", "pod-a", "pod-c", "VXLAN")
}
