//! Chapter: the pools as users see them, `kubectl get ippools` with READY n/m (nodes that
//! applied the pool's current generation) and the NodeNetworks the agents publish.

use anyhow::Result;

use super::{Lab, POOL, indent};

pub fn run(lab: &mut Lab) -> Result<()> {
    println!("  $ kubectl get ippools");
    print!("{}", indent(&lab.cluster.kubectl(&["get", "ippools"])?));
    println!("  $ kubectl get nodenetworks");
    print!("{}", indent(&lab.cluster.kubectl(&["get", "nodenetworks"])?));
    let ready = lab.cluster.kubectl(&["get", "ippool", POOL, "-o", "jsonpath={.status.ready}"])?;
    let n = lab.cluster.nodes().len();
    lab.summary.equal("IPPool READY (kubectl get ippools)", format!("{n}/{n}"), ready.trim());
    Ok(())
}
