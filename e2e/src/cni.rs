//! Running a CNI configuration list the way a container runtime does.
//!
//! For ADD each plugin of the list runs in order, getting the list's `name` and `cniVersion`
//! and the previous plugin's result as `prevResult`; DEL runs the list in reverse with the
//! ADD result as `prevResult` (CNI spec 1.0, "Execution of Network Configurations").
//! Plugins run inside the NODE's namespace (`ip netns exec NODE plugin`) so the host end of
//! the pod's veth lands in the node, with `CNI_NETNS` pointing at the pod's namespace.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use ipnet::Ipv4Net;
use serde_json::{Value, json};

use crate::cmd;
use crate::error::{Error, Result};

/// Where Debian's containernetworking-plugins live; `TRELLIS_CNI_BIN_DIR` overrides.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("TRELLIS_CNI_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/lib/cni"))
}

/// One attachment: which container, which namespace, which interface, run from which node.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub node_ns: String,
    pub container_id: String,
    pub netns_path: PathBuf,
    pub ifname: String,
}

/// Reads a conflist file.
pub fn read_conflist(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(format!("read conflist {}", path.display()), e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Parse { what: format!("conflist {}", path.display()), detail: e.to_string() })
}

fn plugins(conflist: &Value) -> Result<&Vec<Value>> {
    conflist["plugins"]
        .as_array()
        .ok_or_else(|| Error::Parse { what: "conflist".into(), detail: format!("no `plugins` array in {conflist}") })
}

/// CNI ADD of the whole list; returns the final result.
pub fn add(att: &Attachment, conflist: &Value) -> Result<Value> {
    let mut prev: Option<Value> = None;
    for plugin in plugins(conflist)? {
        let result = exec(att, "ADD", &plugin_config(conflist, plugin, prev.as_ref()))?;
        prev = Some(result);
    }
    prev.ok_or_else(|| Error::Parse { what: "conflist".into(), detail: "empty plugin list".into() })
}

/// CNI DEL of the whole list, in reverse order.
pub fn del(att: &Attachment, conflist: &Value, add_result: Option<&Value>) -> Result<()> {
    for plugin in plugins(conflist)?.iter().rev() {
        exec(att, "DEL", &plugin_config(conflist, plugin, add_result))?;
    }
    Ok(())
}

fn plugin_config(conflist: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

fn exec(att: &Attachment, command: &str, conf: &Value) -> Result<Value> {
    let kind = conf["type"].as_str().unwrap_or_default().to_string();
    let program = bin_dir().join(&kind);
    let program_str = program.to_string_lossy().into_owned();
    let fail = |detail: String| Error::Cni { plugin: kind.clone(), command: command.to_string(), detail };
    let mut child = cmd::ns_command(&att.node_ns, &program_str)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &att.container_id)
        .env("CNI_NETNS", &att.netns_path)
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_PATH", bin_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn { command: program_str.clone(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes()).map_err(|e| fail(format!("writing config: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(format!("waiting: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(fail(format!(
            "{} (stdout: {stdout} stderr: {}) with config {conf}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    if command == "DEL" || stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| fail(format!("result is not JSON ({e}): {stdout}")))
}

/// Every IPv4 address of a CNI result.
pub fn ipv4s(result: &Value) -> Vec<Ipv4Addr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.parse::<Ipv4Net>().ok())
        .map(|net| net.addr())
        .collect()
}

/// The first IPv4 address of a CNI result.
pub fn first_ipv4(result: &Value) -> Result<Ipv4Addr> {
    ipv4s(result)
        .into_iter()
        .next()
        .ok_or_else(|| Error::Parse { what: "CNI result".into(), detail: format!("no IPv4 address in {result}") })
}

/// A conflist like the agent's (ptp + host-local over `blocks` + portmap), for tests that
/// set up routes by hand before the agent exists.
pub fn hand_conflist(blocks: &[Ipv4Net], mtu: u32, ipam_data_dir: &Path) -> Value {
    let ranges: Vec<Value> = blocks.iter().map(|b| json!([{ "subnet": b.to_string() }])).collect();
    json!({
        "cniVersion": "1.0.0",
        "name": "trellis",
        "plugins": [
            {
                "type": "ptp",
                "mtu": mtu,
                "ipam": {
                    "type": "host-local",
                    "ranges": ranges,
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_data_dir,
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true }, "snat": true }
        ]
    })
}
