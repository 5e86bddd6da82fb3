//! Chapter: how pod traffic crosses the underlay — tcpdump on node1's uplink while pod-a pings
//! pod-b (same subnet) and pod-c (across the router). [`carried`] is the bounded capture the
//! other chapters reuse.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::Lab;
use crate::cluster::{Cluster, PodRef};
use crate::probe::{self, Capture, Captured};

/// Echo requests per capture; each is seen twice on the wire (request and reply).
const PINGS: usize = 2;

/// How a packet line of tcpdump was carried: VXLAN (UDP 4789), IPIP (IP in IP) or plain.
pub fn classify(line: &str) -> &'static str {
    if line.contains("VXLAN") {
        "VXLAN"
    } else if line.contains("ipip-proto-4") || line.matches(" > ").count() >= 2 {
        "IPIP"
    } else {
        "plain"
    }
}

/// tcpdump's lines grouped per packet: a VXLAN packet prints its inner packet on a second
/// line, which does not start with a timestamp.
pub fn packets(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        match out.last_mut() {
            Some(last) if !l.starts_with(|c: char| c.is_ascii_digit()) => {
                last.push(' ');
                last.push_str(l.trim());
            }
            _ => out.push(l.clone()),
        }
    }
    out
}

/// What crossed `node`'s eth0 while `from` pinged `to` (bounded: tcpdump `-c`, a deadline,
/// killed if it does not stop): the encapsulation ("VXLAN", "IPIP", "plain", "mixed" or
/// "nothing") and the packets.
pub fn carried(cluster: &Cluster, node: &str, from: &PodRef, to: &PodRef) -> Result<(String, Captured)> {
    let ns = cluster.node(node)?.netns.clone();
    let filter = format!("udp port 4789 or ip proto 4 or (icmp and host {})", from.ip);
    let mut capture = Capture::start_counted(&ns, "eth0", &filter, 2 * PINGS)?;
    let count = PINGS.to_string();
    probe::ping(&from.netns, IpAddr::V4(to.ip), &["-c", &count, "-i", "0.2", "-W", "2"])
        .with_context(|| format!("ping {} -> {}", from.name, to.name))?;
    capture.wait_exit(probe::scaled(Duration::from_secs(3)));
    let mut seen = capture.stop();
    seen.packets = packets(&seen.packets);
    let mut kinds: Vec<&str> = seen.packets.iter().map(|l| classify(l)).collect();
    kinds.sort();
    kinds.dedup();
    let how = match kinds.as_slice() {
        [] => "nothing".to_string(),
        [one] => one.to_string(),
        _ => "mixed".to_string(),
    };
    Ok((how, seen))
}

/// Prints and records one capture: `expected` is the encapsulation that must be seen.
pub fn show(lab: &mut Lab, node: &str, from: &str, to: &str, expected: &str) -> Result<()> {
    let (from, to) = (lab.pod(from)?, lab.pod(to)?);
    let what = format!("underlay {} -> {} ({} -> {}) on {node} eth0", from.name, to.name, from.node, to.node);
    let (how, seen) = carried(&lab.cluster, node, &from, &to)?;
    println!("  {what}: {how}, {} packets", seen.count());
    for l in seen.packets.iter().take(2 * PINGS) {
        println!("      {l}");
    }
    lab.summary.equal(&what, expected, how);
    Ok(())
}

pub fn run(lab: &mut Lab) -> Result<()> {
    show(lab, "node1", "pod-a", "pod-b", "VXLAN")?;
    show(lab, "node1", "pod-a", "pod-c", "VXLAN")
}

#[cfg(test)]
mod tests {
    use super::classify;

    #[test]
    fn tcpdump_lines_are_classified_by_their_encapsulation() {
        let vxlan = "IP 10.0.1.11.40000 > 10.0.1.12.4789: VXLAN, flags [I] (0x08), vni 4096 IP 10.244.0.2 > 10.244.1.2: ICMP echo request";
        let ipip = "IP 10.0.1.11 > 10.0.2.13: IP 10.244.0.2 > 10.244.2.2: ICMP echo request, id 1, seq 1, length 64 (ipip-proto-4)";
        let plain = "IP 10.244.0.2 > 10.244.1.2: ICMP echo request, id 1, seq 1, length 64";
        assert_eq!(classify(vxlan), "VXLAN");
        assert_eq!(classify(ipip), "IPIP");
        assert_eq!(classify(plain), "plain");
    }

    #[test]
    fn inner_packet_lines_join_their_outer_packet() {
        let lines: Vec<String> = [
            "19:38:13.714435 IP 10.0.1.11.46061 > 10.0.2.13.4789: VXLAN, flags [I] (0x08), vni 4096",
            "IP 10.244.0.2 > 10.244.0.130: ICMP echo request, id 2617, seq 1, length 64",
            "19:38:13.714527 IP 10.244.0.2 > 10.244.0.66: ICMP echo request, id 1, seq 1, length 64",
        ]
        .map(String::from)
        .to_vec();
        let p = super::packets(&lines);
        assert_eq!(p.len(), 2);
        assert_eq!(classify(&p[0]), "VXLAN");
        assert_eq!(classify(&p[1]), "plain");
    }
}
