//! Chapter: NAT egress — the source address a UDP server in the "internet" namespace sees for
//! a pod's datagrams: the node's address with `natOutgoing: true`, the pod's own without.

use std::time::Duration;

use anyhow::Result;

use super::{Lab, POOL, indent};
use crate::probe;
use crate::topology::INTERNET;

/// The source address the internet host sees for UDP from `pod`.
fn source_seen(lab: &Lab, pod: &str, port: u16) -> Result<String> {
    let pod = lab.pod(pod)?;
    let inet = lab.cluster.topology().internet.name().to_string();
    let src = probe::udp_source_seen(&pod.netns, &inet, INTERNET, port, probe::scaled(Duration::from_secs(20)))?;
    Ok(src.ip().to_string())
}

pub fn run(lab: &mut Lab) -> Result<()> {
    let c = lab.pod("pod-c")?;
    let node3 = lab.cluster.node("node3")?.ip();
    let src = source_seen(lab, "pod-c", 9200)?;
    println!("  natOutgoing: true:  pod-c ({}) -> {INTERNET}: the server sees {src}", c.ip);
    lab.summary.equal("natOutgoing: true, source the internet sees", node3, &src);
    println!("  $ kubectl patch ippool {POOL} --type merge -p '{{\"spec\":{{\"natOutgoing\":false}}}}'");
    print!("{}", indent(&lab.cluster.patch_pool(POOL, r#"{"spec":{"natOutgoing":false}}"#)?));
    lab.cluster.wait_converged()?;
    let src = source_seen(lab, "pod-c", 9201)?;
    println!("  natOutgoing: false: pod-c ({}) -> {INTERNET}: the server sees {src}", c.ip);
    lab.summary.equal("natOutgoing: false, source the internet sees", c.ip, &src);
    lab.cluster.patch_pool(POOL, r#"{"spec":{"natOutgoing":true}}"#)?;
    lab.cluster.wait_converged()?;
    Ok(())
}
