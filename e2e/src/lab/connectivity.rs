//! Chapter: the ping matrix — every pod to every other pod and to the "internet" host.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Result;

use super::Lab;
use crate::probe;
use crate::topology::INTERNET;

/// One ping from `ns` to `to` (2 s to answer); true if answered.
fn pings(ns: &str, to: Ipv4Addr) -> bool {
    probe::ping(ns, IpAddr::V4(to), &["-c", "1", "-W", "2"]).is_ok_and(|r| r.ok)
}

pub fn run(lab: &mut Lab) -> Result<()> {
    const W: usize = 18;
    let pods = lab.pods.clone();
    let mut header = format!("  {:10}", "from \\ to");
    for p in &pods {
        header.push_str(&format!("{:>W$}", format!("{} ({})", p.name, p.node)));
    }
    header.push_str(&format!("{:>W$}", "internet"));
    println!("{header}");
    let (mut ok_pairs, mut pairs, mut ok_inet) = (0, 0, 0);
    for a in &pods {
        let mut line = format!("  {:10}", a.name);
        for b in &pods {
            if a == b {
                line.push_str(&format!("{:>W$}", "-"));
                continue;
            }
            pairs += 1;
            let ok = pings(&a.netns, b.ip);
            ok_pairs += usize::from(ok);
            line.push_str(&format!("{:>W$}", if ok { "ok" } else { "no reply" }));
        }
        let ok = pings(&a.netns, INTERNET);
        ok_inet += usize::from(ok);
        line.push_str(&format!("{:>W$}", if ok { "ok" } else { "no reply" }));
        println!("{line}");
    }
    lab.summary.equal("pod <-> pod (ping, every pair)", format!("{pairs}/{pairs}"), format!("{ok_pairs}/{pairs}"));
    let n = pods.len();
    lab.summary.equal(&format!("pod -> internet (ping {INTERNET})"), format!("{n}/{n}"), format!("{ok_inet}/{n}"));
    Ok(())
}
