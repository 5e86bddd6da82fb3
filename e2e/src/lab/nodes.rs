//! Chapter: what the agents programmed on each node — routes, links, the VXLAN device's
//! neighbours and forwarding database — as `ip` and `bridge` print them.

use anyhow::Result;

use super::{Lab, indent};
use crate::cmd;

/// Prints every node's state; records that each node has Trellis routes to both peers.
pub fn run(lab: &mut Lab) -> Result<()> {
    let names: Vec<String> = lab.cluster.nodes().iter().map(|n| n.name.clone()).collect();
    for node in &names {
        let ns = lab.netns(node)?;
        println!("--- {node} (ip netns exec {ns} ...)");
        for (title, program, args) in [
            ("routes (ip route)", "ip", &["route"][..]),
            ("links (ip -br link)", "ip", &["-br", "link"][..]),
            (
                "neighbours on vxlan.trellis (ip neigh show dev vxlan.trellis)",
                "ip",
                &["neigh", "show", "dev", "vxlan.trellis"][..],
            ),
            (
                "FDB of vxlan.trellis (bridge fdb show dev vxlan.trellis)",
                "bridge",
                &["fdb", "show", "dev", "vxlan.trellis"][..],
            ),
        ] {
            let out = cmd::in_ns_output(&ns, program, args)?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            println!("  {title}:\n{}", indent(if text.trim().is_empty() { "(none)" } else { &text }));
        }
        let peers = names.iter().filter(|p| *p != node);
        let mut over_vxlan = 0;
        for peer in peers.clone() {
            over_vxlan += usize::from(lab.cluster.route_to(node, peer)?.contains("dev vxlan.trellis onlink"));
        }
        lab.summary.equal(
            &format!("VXLAN Always: {node}'s routes to peer blocks via vxlan.trellis"),
            peers.count(),
            over_vxlan,
        );
    }
    Ok(())
}
