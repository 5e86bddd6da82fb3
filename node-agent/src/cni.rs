//! The CNI configuration list: rendered by the planner, written atomically by the agent.
//!
//! Shape (CNI 1.0.0): the pod plugin (`ptp` by default, `bridge` optionally) with the pod MTU
//! and host-local IPAM, then `portmap` for hostPort. Decisions, checked against the plugins'
//! documented behaviour:
//! * host-local's `ranges` is a list of *range sets* and returns one address per set, so all
//!   blocks of one family form one set (one range per block) and a dual-stack node has two
//!   sets. One set per block would give every pod one address per block.
//! * Each range names its gateway explicitly: the block's network address + 1 (host-local's own
//!   default). ptp puts the gateway as a /32 on the host side of every pod veth and routes the
//!   pod's default route through it; host-local never hands the gateway out. The network
//!   address itself is the node's default tunnel address (see [`crate::vtep`]), so allocations
//!   start at network + 2 and end at the last usable address (host-local's default end).
//! * Addresses the node uses itself (an explicit tunnel address inside a block) are cut out of
//!   the block's range: host-local has no exclusion list, but a set may hold several ranges of
//!   one subnet as long as they do not overlap, so the block becomes the ranges around them.
//! * Blocks of disabled pools are left out (no new pods there); blocks too small to hold a
//!   gateway and one pod (/31, /32, /127, /128) are left out with a warning, and so is a block
//!   inside another block of the node (host-local rejects overlapping ranges in a set).
//! * `ipMasq` is off: NAT-outgoing is Trellis' own nftables table, scoped to the pools.
//! * No usable block → no conflist (`conflist` is `null`, `unavailable` says why) and [`write`]
//!   **removes** the file. host-local cannot be configured without ranges, and keeping the old
//!   file would keep handing out addresses of pools that are disabled now. Without a config the
//!   container runtime reports its network as not ready and starts no new pod here; running
//!   pods keep their addresses and routes (their teardown uses the config the runtime cached at
//!   ADD time, as libcni does).
//!
//! [`write`] replaces the file atomically (temp file in the same directory, fsync, rename,
//! fsync of the directory) and only when the content differs, so the runtime never reads a
//! half-written file and an unchanged plan never touches the disk. Temp files a crash left
//! behind (our naming only) are removed on the next call.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::model::CniConfig;
use crate::snapshot::{CniPlugin, CniSettings};

/// Name of the network in the conflist (also host-local's directory under `dataDir`).
pub const NETWORK_NAME: &str = "trellis";

/// Bridge created by the `bridge` plugin.
pub const BRIDGE_NAME: &str = "trellis0";

/// Renders the conflist for `blocks` (this node's blocks in enabled pools), never handing out
/// an address of `reserved` (the node's own tunnel address). Pure. Returns the config and
/// warnings about blocks that could not be used. A `null` conflist has no `unavailable`
/// reason yet: the planner knows why no block was left and fills it in.
pub fn render(settings: &CniSettings, mtu: u32, blocks: &[IpNet], reserved: &[IpAddr]) -> (CniConfig, Vec<String>) {
    let path = settings.conf_dir.join(&settings.conf_name);
    let mut warnings = Vec::new();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut sorted: Vec<IpNet> = blocks.iter().map(IpNet::trunc).collect();
    sorted.sort();
    sorted.dedup();
    let all = sorted.clone();
    for block in sorted {
        if let Some(outer) = all.iter().find(|o| **o != block && o.contains(&block)) {
            warnings
                .push(format!("block {block} lies inside block {outer} of this node; left out of the CNI IPAM ranges"));
            continue;
        }
        let ranges = ranges_for(&block, reserved);
        if ranges.is_empty() {
            warnings.push(format!(
                "block {block} has no room for a gateway and a pod (/{}{}); left out of the CNI IPAM ranges",
                block.prefix_len(),
                if reserved.iter().any(|r| block.contains(r)) { ", minus the node's tunnel address" } else { "" }
            ));
        } else if block.addr().is_ipv4() {
            v4.extend(ranges);
        } else {
            v6.extend(ranges);
        }
    }
    if v4.is_empty() && v6.is_empty() {
        return (CniConfig { path, conflist: Value::Null, unavailable: None }, warnings);
    }
    let mut ranges = Vec::new();
    let mut routes = Vec::new();
    if !v4.is_empty() {
        ranges.push(Value::Array(v4));
        routes.push(json!({ "dst": "0.0.0.0/0" }));
    }
    if !v6.is_empty() {
        ranges.push(Value::Array(v6));
        routes.push(json!({ "dst": "::/0" }));
    }
    let ipam = json!({
        "type": "host-local",
        "ranges": ranges,
        "routes": routes,
        "dataDir": settings.ipam_data_dir,
    });
    let pod_plugin = match settings.plugin {
        CniPlugin::Ptp => json!({ "type": "ptp", "mtu": mtu, "ipMasq": false, "ipam": ipam }),
        CniPlugin::Bridge => json!({
            "type": "bridge",
            "bridge": BRIDGE_NAME,
            "isGateway": true,
            "hairpinMode": true,
            "mtu": mtu,
            "ipMasq": false,
            "ipam": ipam,
        }),
    };
    let conflist = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "plugins": [pod_plugin, { "type": "portmap", "capabilities": { "portMappings": true } }],
    });
    (CniConfig { path, conflist, unavailable: None }, warnings)
}

/// host-local ranges for one block: gateway = network + 1, pods from network + 2 to the last
/// usable address, minus the `reserved` addresses (each cut splits the range). Empty when no
/// pod address is left. The size check comes first, so no arithmetic can over- or underflow
/// (a /32 at 0.0.0.0 or a /128 at the top of the IPv6 space).
fn ranges_for(block: &IpNet, reserved: &[IpAddr]) -> Vec<Value> {
    if block.prefix_len() + 2 > block.max_prefix_len() {
        return Vec::new();
    }
    // At least four addresses from here on: network + 2 <= last, no wrap-around.
    let (network, last): (u128, u128) = match block {
        IpNet::V4(n) => (u32::from(n.network()).into(), u128::from(u32::from(n.broadcast())) - 1),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    };
    let addr = |v: u128| -> IpAddr {
        match block {
            IpNet::V4(_) => IpAddr::V4((v as u32).into()),
            IpNet::V6(_) => IpAddr::V6(v.into()),
        }
    };
    let value = |a: &IpAddr| -> Option<u128> {
        match (a, block) {
            (IpAddr::V4(a), IpNet::V4(_)) => Some(u32::from(*a).into()),
            (IpAddr::V6(a), IpNet::V6(_)) => Some(u128::from(*a)),
            _ => None,
        }
    };
    let mut cuts: Vec<u128> = reserved.iter().filter_map(value).filter(|v| (network + 2..=last).contains(v)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut spans = Vec::new();
    let mut start = network + 2;
    for cut in cuts {
        if cut > start {
            spans.push((start, cut - 1));
        }
        start = cut + 1;
    }
    if start <= last {
        spans.push((start, last));
    }
    spans
        .into_iter()
        .map(|(from, to)| {
            json!({
                "subnet": block.to_string(),
                "rangeStart": addr(from).to_string(),
                "rangeEnd": addr(to).to_string(),
                "gateway": addr(network + 1).to_string(),
            })
        })
        .collect()
}

/// Writing the conflist failed.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI config path {0} has no parent directory")]
    NoDirectory(PathBuf),
    #[error("cannot {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot serialize the CNI config: {0}")]
    Serialize(#[from] serde_json::Error),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CniError + use<> {
    let path = path.to_owned();
    move |source| CniError::Io { op, path, source }
}

/// Brings the file in line with `config`: writes the conflist atomically (temp file + fsync +
/// rename) unless identical, or removes the file when the conflist is `null` (see the module
/// header). Returns whether it changed the file. Stale temp files of ours go in both cases.
pub fn write(config: &CniConfig) -> Result<bool, CniError> {
    let path = &config.path;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| CniError::NoDirectory(path.clone()))?;
    let name = path.file_name().ok_or_else(|| CniError::NoDirectory(path.clone()))?.to_string_lossy().into_owned();
    remove_stale_temp_files(dir, &name)?;
    if config.conflist.is_null() {
        return match fs::remove_file(path) {
            Ok(()) => {
                fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync directory", dir))?;
                tracing::warn!(path = %path.display(), reason = config.unavailable.as_deref().unwrap_or_default(),
                    "removed CNI config: no new pods on this node");
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", path)(e)),
        };
    }
    let mut content = serde_json::to_string_pretty(&config.conflist)?;
    content.push('\n');
    match fs::read(path) {
        Ok(existing) if existing == content.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", path)(e)),
    }
    fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let tmp = dir.join(temp_name(&name, std::process::id()));
    let result = write_and_rename(&tmp, path, content.as_bytes());
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    // Make the rename itself durable.
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("sync directory", dir))?;
    tracing::info!(path = %path.display(), "wrote CNI config");
    Ok(true)
}

/// Temp file of process `pid` for conflist `name`: a dot file with a suffix the runtime
/// ignores (it loads *.conf, *.conflist, *.json).
fn temp_name(name: &str, pid: u32) -> String {
    format!(".{name}.{pid}.tmp")
}

/// Whether `file` is one of our temp files for conflist `name` (any process id).
fn is_temp_name(file: &str, name: &str) -> bool {
    file.strip_prefix(&format!(".{name}."))
        .and_then(|rest| rest.strip_suffix(".tmp"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes temp files an interrupted write left behind (one agent per node writes this file,
/// and within it writes never overlap, so every match is stale). A missing directory has none.
fn remove_stale_temp_files(dir: &Path, name: &str) -> Result<(), CniError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        if is_temp_name(&entry.file_name().to_string_lossy(), name) {
            let stale = entry.path();
            fs::remove_file(&stale).map_err(io("remove stale temp file", &stale))?;
            tracing::info!(path = %stale.display(), "removed a temp file left by an interrupted write");
        }
    }
    Ok(())
}

fn write_and_rename(tmp: &Path, path: &Path, content: &[u8]) -> Result<(), CniError> {
    let mut file = fs::File::create(tmp).map_err(io("create", tmp))?;
    file.write_all(content).map_err(io("write", tmp))?;
    file.sync_all().map_err(io("sync", tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(io("rename into place", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> CniSettings {
        CniSettings {
            conf_dir: dir.join("net.d"),
            conf_name: "10-trellis.conflist".into(),
            ipam_data_dir: dir.join("ipam"),
            plugin: CniPlugin::Ptp,
        }
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn ptp_conflist_has_one_range_set_per_family() {
        let s = settings(Path::new("/x"));
        let (cfg, warnings) = render(&s, 1450, &nets(&["10.244.1.64/26", "fd00:244::/122", "10.244.1.0/26"]), &[]);
        assert!(warnings.is_empty());
        assert_eq!(cfg.path, Path::new("/x/net.d/10-trellis.conflist"));
        let c = &cfg.conflist;
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["name"], "trellis");
        let ptp = &c["plugins"][0];
        assert_eq!(ptp["type"], "ptp");
        assert_eq!(ptp["mtu"], 1450);
        assert_eq!(ptp["ipMasq"], false);
        let ipam = &ptp["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["dataDir"], "/x/ipam");
        assert_eq!(
            ipam["ranges"],
            json!([
                [
                    {"subnet": "10.244.1.0/26", "rangeStart": "10.244.1.2", "rangeEnd": "10.244.1.62", "gateway": "10.244.1.1"},
                    {"subnet": "10.244.1.64/26", "rangeStart": "10.244.1.66", "rangeEnd": "10.244.1.126", "gateway": "10.244.1.65"}
                ],
                [
                    {"subnet": "fd00:244::/122", "rangeStart": "fd00:244::2", "rangeEnd": "fd00:244::3f", "gateway": "fd00:244::1"}
                ]
            ])
        );
        assert_eq!(ipam["routes"], json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]));
        assert_eq!(c["plugins"][1], json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }

    #[test]
    fn bridge_plugin_is_a_gateway_bridge() {
        let mut s = settings(Path::new("/x"));
        s.plugin = CniPlugin::Bridge;
        let (cfg, _) = render(&s, 1480, &nets(&["10.244.1.0/26"]), &[]);
        let p = &cfg.conflist["plugins"][0];
        assert_eq!(p["type"], "bridge");
        assert_eq!(p["bridge"], BRIDGE_NAME);
        assert_eq!(p["isGateway"], true);
        assert_eq!(p["mtu"], 1480);
    }

    #[test]
    fn no_usable_block_means_no_conflist() {
        let s = settings(Path::new("/x"));
        assert!(render(&s, 1500, &[], &[]).0.conflist.is_null());
        let (cfg, warnings) = render(&s, 1500, &nets(&["10.244.1.0/31", "10.244.2.0/32", "fd00::/127"]), &[]);
        assert!(cfg.conflist.is_null());
        assert_eq!(warnings.len(), 3);
        // /30 is the smallest usable IPv4 block: gateway .1, one pod .2.
        let (cfg, _) = render(&s, 1500, &nets(&["10.244.1.0/30"]), &[]);
        assert_eq!(cfg.conflist["plugins"][0]["ipam"]["ranges"][0][0]["rangeEnd"], "10.244.1.2");
    }

    #[test]
    fn host_blocks_at_the_ends_of_the_address_space_are_left_out_without_panicking() {
        let s = settings(Path::new("/x"));
        for edge in
            ["0.0.0.0/32", "0.0.0.0/31", "255.255.255.255/32", "::/128", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"]
        {
            let (cfg, warnings) = render(&s, 1500, &nets(&[edge]), &[]);
            assert!(cfg.conflist.is_null(), "{edge}");
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains(&format!("block {edge} has no room for a gateway and a pod")), "{warnings:?}");
        }
        // The largest blocks at the top of each family still render.
        let (cfg, w) =
            render(&s, 1500, &nets(&["255.255.255.252/30", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"]), &[]);
        assert!(w.is_empty(), "{w:?}");
        let ranges = &cfg.conflist["plugins"][0]["ipam"]["ranges"];
        assert_eq!(ranges[0][0]["rangeEnd"], "255.255.255.254");
        assert_eq!(ranges[1][0]["rangeEnd"], "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn reserved_tunnel_address_is_cut_out_of_its_block() {
        let s = settings(Path::new("/x"));
        let ranges = |blocks: &[&str], reserved: &[&str]| {
            let reserved: Vec<IpAddr> = reserved.iter().map(|r| r.parse().unwrap()).collect();
            let (cfg, warnings) = render(&s, 1500, &nets(blocks), &reserved);
            let spans: Vec<(String, String)> = cfg.conflist["plugins"][0]["ipam"]["ranges"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|set| set.as_array().unwrap().clone())
                .map(|r| (r["rangeStart"].as_str().unwrap().to_string(), r["rangeEnd"].as_str().unwrap().to_string()))
                .collect();
            (spans, warnings)
        };
        let span = |a: &str, b: &str| (a.to_string(), b.to_string());
        // In the middle: two ranges around it.
        assert_eq!(
            ranges(&["10.244.1.0/26"], &["10.244.1.10"]).0,
            [span("10.244.1.2", "10.244.1.9"), span("10.244.1.11", "10.244.1.62")]
        );
        // At either end, or the network/gateway address (never handed out anyway), or elsewhere.
        assert_eq!(ranges(&["10.244.1.0/26"], &["10.244.1.2"]).0, [span("10.244.1.3", "10.244.1.62")]);
        assert_eq!(ranges(&["10.244.1.0/26"], &["10.244.1.62"]).0, [span("10.244.1.2", "10.244.1.61")]);
        for untouched in ["10.244.1.0", "10.244.1.1", "10.244.1.63", "10.9.9.9", "fd00::5"] {
            assert_eq!(ranges(&["10.244.1.0/26"], &[untouched]).0, [span("10.244.1.2", "10.244.1.62")], "{untouched}");
        }
        assert_eq!(ranges(&["fd00::/122"], &["fd00::2", "fd00::3f"]).0, [span("fd00::3", "fd00::3e")]);
        // A /30 whose only pod address is the tunnel address has no room left.
        let (spans, warnings) = ranges(&["10.244.1.0/30"], &["10.244.1.2"]);
        assert!(spans.is_empty());
        assert!(warnings[0].contains("tunnel address"), "{warnings:?}");
    }

    #[test]
    fn a_block_inside_another_block_is_left_out() {
        let s = settings(Path::new("/x"));
        let (cfg, warnings) = render(&s, 1500, &nets(&["10.244.1.0/27", "10.244.1.0/26", "10.244.1.0/26"]), &[]);
        let set = cfg.conflist["plugins"][0]["ipam"]["ranges"][0].as_array().unwrap().clone();
        assert_eq!(set.len(), 1, "{set:?}");
        assert_eq!(set[0]["subnet"], "10.244.1.0/26");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("10.244.1.0/27") && warnings[0].contains("inside"), "{warnings:?}");
    }

    #[test]
    fn write_creates_dir_then_skips_identical_content() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, _) = render(&settings(tmp.path()), 1450, &nets(&["10.244.1.0/26"]), &[]);
        assert!(write(&cfg).unwrap(), "first write creates the file");
        let text = fs::read_to_string(&cfg.path).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), cfg.conflist);
        assert!(!write(&cfg).unwrap(), "identical content is not rewritten");
        let entries: Vec<_> = fs::read_dir(cfg.path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temp file left behind");

        let (changed, _) = render(&settings(tmp.path()), 1400, &nets(&["10.244.1.0/26"]), &[]);
        assert!(write(&changed).unwrap());
        let text = fs::read_to_string(&cfg.path).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["plugins"][0]["mtu"], 1400);
    }

    #[test]
    fn null_conflist_removes_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        let (cfg, _) = render(&s, 1450, &nets(&["10.244.1.0/26"]), &[]);
        write(&cfg).unwrap();
        let (empty, _) = render(&s, 1450, &[], &[]);
        assert!(write(&empty).unwrap(), "removing the file is a change");
        assert!(!cfg.path.exists(), "a conflist of blocks no longer allocatable must not stay");
        assert!(!write(&empty).unwrap(), "nothing left to remove");
        assert!(write(&cfg).unwrap(), "written again once a block is usable");
    }

    #[test]
    fn temp_files_left_by_a_crash_are_removed_on_the_next_write() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        let dir = tmp.path().join("net.d");
        fs::create_dir_all(&dir).unwrap();
        let stale = dir.join(".10-trellis.conflist.4242.tmp");
        let foreign =
            [".10-trellis.conflist.tmp", ".10-trellis.conflist.12x.tmp", ".other.conflist.1.tmp", "99-other.conflist"];
        fs::write(&stale, "{half").unwrap();
        for f in foreign {
            fs::write(dir.join(f), "").unwrap();
        }
        let (cfg, _) = render(&s, 1450, &nets(&["10.244.1.0/26"]), &[]);
        assert!(write(&cfg).unwrap());
        assert!(!stale.exists(), "our stale temp file is gone");
        for f in foreign {
            assert!(dir.join(f).exists(), "{f} is not ours and stays");
        }
        // Also when the content is unchanged, and when the conflist is removed.
        fs::write(&stale, "{half").unwrap();
        assert!(!write(&cfg).unwrap());
        assert!(!stale.exists());
        fs::write(&stale, "{half").unwrap();
        let (empty, _) = render(&s, 1450, &[], &[]);
        assert!(write(&empty).unwrap());
        assert!(!stale.exists());
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        fs::write(&blocker, "").unwrap();
        let cfg =
            CniConfig { path: blocker.join("sub/10-trellis.conflist"), conflist: json!({"a": 1}), unavailable: None };
        assert!(matches!(write(&cfg), Err(CniError::Io { .. })));
    }

    /// Runs the real host-local plugin (as the container runtime would, through the pod
    /// plugin's config) with `command` for container `id`; returns its parsed stdout.
    fn host_local(conflist: &Value, command: &str, id: &str) -> Result<Value, String> {
        use std::process::{Command, Stdio};
        let mut netconf = conflist["plugins"][0].clone();
        netconf["cniVersion"] = conflist["cniVersion"].clone();
        netconf["name"] = conflist["name"].clone();
        let mut child = Command::new("/usr/lib/cni/host-local")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", "/var/run/netns/unused")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("host-local plugin in /usr/lib/cni");
        child.stdin.take().unwrap().write_all(netconf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() {
            Ok(if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).unwrap() })
        } else {
            Err(stdout)
        }
    }

    #[test]
    #[ignore = "root: runs the real host-local CNI plugin from /usr/lib/cni"]
    fn real_host_local_allocates_one_address_per_family_above_the_gateway() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, warnings) =
            render(&settings(tmp.path()), 1450, &nets(&["10.244.1.4/30", "10.244.1.0/30", "fd00::/126"]), &[]);
        assert!(warnings.is_empty());
        let first = host_local(&cfg.conflist, "ADD", "c1").unwrap();
        let ips: Vec<(&str, &str)> = first["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| (i["address"].as_str().unwrap(), i["gateway"].as_str().unwrap()))
            .collect();
        // One address per family (not per block); never the tunnel address (.0) or the gateway.
        assert_eq!(ips, [("10.244.1.2/30", "10.244.1.1"), ("fd00::2/126", "fd00::1")]);
        // The second block of the family is used when the first is full; then IPv4 is exhausted.
        let second = host_local(&cfg.conflist, "ADD", "c2").unwrap();
        assert_eq!(second["ips"][0]["address"], "10.244.1.6/30");
        assert_eq!(second["ips"][0]["gateway"], "10.244.1.5");
        let err = host_local(&cfg.conflist, "ADD", "c3").unwrap_err();
        assert!(err.contains("no IP addresses available"), "{err}");
        // DEL frees the address for the next pod.
        host_local(&cfg.conflist, "DEL", "c1").unwrap();
        let again = host_local(&cfg.conflist, "ADD", "c4").unwrap();
        assert_eq!(again["ips"][0]["address"], "10.244.1.2/30");
    }

    #[test]
    #[ignore = "root: runs the real host-local CNI plugin from /usr/lib/cni"]
    fn real_host_local_never_hands_out_the_reserved_tunnel_address() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, warnings) =
            render(&settings(tmp.path()), 1450, &nets(&["10.244.1.0/29"]), &["10.244.1.4".parse().unwrap()]);
        assert!(warnings.is_empty());
        // host-local accepts two ranges of one subnet in a set and allocates from both.
        let mut got: Vec<String> = (0..4)
            .map(|i| {
                host_local(&cfg.conflist, "ADD", &format!("c{i}")).unwrap()["ips"][0]["address"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        got.sort();
        assert_eq!(got, ["10.244.1.2/29", "10.244.1.3/29", "10.244.1.5/29", "10.244.1.6/29"]);
        let err = host_local(&cfg.conflist, "ADD", "c9").unwrap_err();
        assert!(err.contains("no IP addresses available"), "{err}");
    }
}
