//! Chapter: the MTU per mode — what the agent writes into the CNI conflist (what new pods get)
//! and into the tunnel device: the uplink's 1500 minus the encapsulation's overhead (VXLAN 50,
//! none 0). With VXLAN a DF ping at the pod MTU crosses the tunnel and one byte more is refused.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use super::{Lab, POOL, indent};
use crate::probe;

/// The MTU in the conflist the agent wrote on `node`.
pub fn conflist_mtu(conf_dir: &Path) -> Result<u64> {
    let path = conf_dir.join("10-trellis.conflist");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)?;
    v["plugins"].as_array().into_iter().flatten().find_map(|p| p["mtu"].as_u64()).context("no mtu in the conflist")
}

/// Records the conflist MTU and the VXLAN device of node1 under the current mode.
fn record(lab: &mut Lab, mode: &str, conflist: u64, device: Option<u32>) -> Result<()> {
    let seen = conflist_mtu(&lab.cluster.cni_conf_dir("node1")?)?;
    let dev = probe::link_mtu(&lab.netns("node1")?, "vxlan.trellis")?;
    let dev_text = |d: Option<u32>| d.map_or("absent".to_string(), |m| m.to_string());
    println!("  {mode}: conflist mtu {seen}, vxlan.trellis mtu {}", dev_text(dev));
    lab.summary.equal(&format!("MTU {mode}: pods (conflist)"), conflist, seen);
    lab.summary.equal(&format!("MTU {mode}: vxlan.trellis"), dev_text(device), dev_text(dev));
    Ok(())
}

fn switch(lab: &mut Lab, patch: &str, applied: &str) -> Result<()> {
    println!("  $ kubectl patch ippool {POOL} --type merge -p '{patch}'");
    print!("{}", indent(&lab.cluster.patch_pool(POOL, patch)?));
    lab.cluster.wait_pool_mode(POOL, applied)?;
    Ok(())
}

pub fn run(lab: &mut Lab) -> Result<()> {
    record(lab, "VXLANCrossSubnet", 1450, Some(1450))?;
    let (a, c) = (lab.pod("pod-a")?, lab.pod("pod-c")?);
    // ICMP payload = MTU - 20 (IP) - 8 (ICMP).
    let max = 1450 - 28;
    let fits = probe::ping_df(&a.netns, IpAddr::V4(c.ip), max)?;
    let too_big = probe::ping_df(&a.netns, IpAddr::V4(c.ip), max + 1)?;
    println!(
        "  DF ping pod-a -> pod-c (VXLAN): {max} bytes {}, {} bytes {}",
        if fits.ok { "answered" } else { "lost" },
        max + 1,
        if too_big.too_big() {
            "refused (message too long)"
        } else if too_big.ok {
            "answered"
        } else {
            "lost"
        },
    );
    lab.summary.check(
        "DF ping across VXLAN at the MTU / one byte more",
        "answered / refused",
        format!(
            "{} / {}",
            if fits.ok { "answered" } else { "lost" },
            if too_big.too_big() {
                "refused"
            } else if too_big.ok {
                "answered"
            } else {
                "lost"
            }
        ),
        fits.ok && too_big.too_big(),
    );
    switch(lab, r#"{"spec":{"vxlanMode":"Never"}}"#, "None")?;
    record(lab, "None", 1500, None)?;
    switch(lab, r#"{"spec":{"vxlanMode":"Always"}}"#, "VXLAN/Always")?;
    record(lab, "VXLAN", 1450, Some(1450))
}
