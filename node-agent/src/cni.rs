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
//!   address itself is the node's tunnel address (see [`crate::vtep`]), so allocations start at
//!   network + 2 and end at the last usable address (host-local's default end).
//! * Blocks of disabled pools are left out (no new pods there); blocks too small to hold a
//!   gateway and one pod (/31, /32, /127, /128) are left out with a warning.
//! * `ipMasq` is off: NAT-outgoing is Trellis' own nftables table, scoped to the pools.
//! * No usable block → no conflist (`conflist` is `null`). Calico does the same: the
//!   container runtime reports the network as not ready until a config exists, so no pod is
//!   started that could not get an address. An existing file is then left alone, because
//!   tearing down running pods (CNI DEL) still needs it.
//!
//! [`write`] replaces the file atomically (temp file in the same directory, fsync, rename,
//! fsync of the directory) and only when the content differs, so the runtime never reads a
//! half-written file and an unchanged plan never touches the disk.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::desired::CniConfig;
use crate::snapshot::{CniPlugin, CniSettings};

/// Name of the network in the conflist (also host-local's directory under `dataDir`).
pub const NETWORK_NAME: &str = "trellis";

/// Bridge created by the `bridge` plugin.
pub const BRIDGE_NAME: &str = "trellis0";

/// Renders the conflist for `blocks` (this node's blocks in enabled pools). Pure. Returns the
/// config and warnings about blocks that could not be used.
pub fn render(settings: &CniSettings, mtu: u32, blocks: &[IpNet]) -> (CniConfig, Vec<String>) {
    let path = settings.conf_dir.join(&settings.conf_name);
    let mut warnings = Vec::new();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut sorted: Vec<IpNet> = blocks.iter().map(IpNet::trunc).collect();
    sorted.sort();
    sorted.dedup();
    for block in sorted {
        match range_for(&block) {
            Some(range) if block.addr().is_ipv4() => v4.push(range),
            Some(range) => v6.push(range),
            None => warnings.push(format!(
                "block {block} is too small for a gateway and a pod (/{}); left out of the CNI IPAM ranges",
                block.prefix_len()
            )),
        }
    }
    if v4.is_empty() && v6.is_empty() {
        return (CniConfig { path, conflist: Value::Null }, warnings);
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
    (CniConfig { path, conflist }, warnings)
}

/// host-local range for one block: gateway = network + 1, pods from network + 2 to the last
/// usable address. `None` when the block has no room for both.
fn range_for(block: &IpNet) -> Option<Value> {
    let (network, last): (u128, u128) = match block {
        IpNet::V4(n) => (u32::from(n.network()).into(), u128::from(u32::from(n.broadcast())) - 1),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    };
    let start = network + 2;
    if block.prefix_len() + 2 > block.max_prefix_len() || start > last {
        return None;
    }
    let addr = |v: u128| -> IpAddr {
        match block {
            IpNet::V4(_) => IpAddr::V4((v as u32).into()),
            IpNet::V6(_) => IpAddr::V6(v.into()),
        }
    };
    Some(json!({
        "subnet": block.to_string(),
        "rangeStart": addr(start).to_string(),
        "rangeEnd": addr(last).to_string(),
        "gateway": addr(network + 1).to_string(),
    }))
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

/// Writes the conflist atomically (temp file + fsync + rename) unless identical. Returns
/// whether it changed the file. A `null` conflist writes nothing (see the module header).
pub fn write(config: &CniConfig) -> Result<bool, CniError> {
    if config.conflist.is_null() {
        return Ok(false);
    }
    let path = &config.path;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| CniError::NoDirectory(path.clone()))?;
    let name = path.file_name().ok_or_else(|| CniError::NoDirectory(path.clone()))?;
    let mut content = serde_json::to_string_pretty(&config.conflist)?;
    content.push('\n');
    match fs::read(path) {
        Ok(existing) if existing == content.as_bytes() => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", path)(e)),
    }
    fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    // A dot file with a suffix the runtime ignores (it loads *.conf, *.conflist, *.json).
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
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
        let (cfg, warnings) = render(&s, 1450, &nets(&["10.244.1.64/26", "fd00:244::/122", "10.244.1.0/26"]));
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
        let (cfg, _) = render(&s, 1480, &nets(&["10.244.1.0/26"]));
        let p = &cfg.conflist["plugins"][0];
        assert_eq!(p["type"], "bridge");
        assert_eq!(p["bridge"], BRIDGE_NAME);
        assert_eq!(p["isGateway"], true);
        assert_eq!(p["mtu"], 1480);
    }

    #[test]
    fn no_usable_block_means_no_conflist() {
        let s = settings(Path::new("/x"));
        assert!(render(&s, 1500, &[]).0.conflist.is_null());
        let (cfg, warnings) = render(&s, 1500, &nets(&["10.244.1.0/31", "10.244.2.0/32", "fd00::/127"]));
        assert!(cfg.conflist.is_null());
        assert_eq!(warnings.len(), 3);
        // /30 is the smallest usable IPv4 block: gateway .1, one pod .2.
        let (cfg, _) = render(&s, 1500, &nets(&["10.244.1.0/30"]));
        assert_eq!(cfg.conflist["plugins"][0]["ipam"]["ranges"][0][0]["rangeEnd"], "10.244.1.2");
    }

    #[test]
    fn write_creates_dir_then_skips_identical_content() {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, _) = render(&settings(tmp.path()), 1450, &nets(&["10.244.1.0/26"]));
        assert!(write(&cfg).unwrap(), "first write creates the file");
        let text = fs::read_to_string(&cfg.path).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), cfg.conflist);
        assert!(!write(&cfg).unwrap(), "identical content is not rewritten");
        let entries: Vec<_> = fs::read_dir(cfg.path.parent().unwrap()).unwrap().collect();
        assert_eq!(entries.len(), 1, "no temp file left behind");

        let (changed, _) = render(&settings(tmp.path()), 1400, &nets(&["10.244.1.0/26"]));
        assert!(write(&changed).unwrap());
        let text = fs::read_to_string(&cfg.path).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["plugins"][0]["mtu"], 1400);
    }

    #[test]
    fn null_conflist_leaves_an_existing_file_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path());
        let (cfg, _) = render(&s, 1450, &nets(&["10.244.1.0/26"]));
        write(&cfg).unwrap();
        let (empty, _) = render(&s, 1450, &[]);
        assert!(!write(&empty).unwrap());
        assert!(cfg.path.exists(), "running pods still need the config for CNI DEL");
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("file");
        fs::write(&blocker, "").unwrap();
        let cfg = CniConfig { path: blocker.join("sub/10-trellis.conflist"), conflist: json!({"a": 1}) };
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
            render(&settings(tmp.path()), 1450, &nets(&["10.244.1.4/30", "10.244.1.0/30", "fd00::/126"]));
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
}
