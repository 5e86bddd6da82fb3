//! Sysctls of the calling thread's network namespace, through `/proc/sys`.
//!
//! `net.*` entries under `/proc/sys` belong to the network namespace of the task that opens
//! them, so this works per namespace like the rest of the kernel layer. Keys follow sysctl(8),
//! including its escape for interface names with dots (`vxlan/trellis`), see [`path`].
//!
//! A container runtime mounts `/proc/sys` read-only in an unprivileged container, so the
//! agent's container gets the host's `/proc/sys/net` mounted writable elsewhere (like Cilium's
//! `/host/proc/sys/net`) and [`set_net_root`] points the `net.*` keys there; the entries still
//! follow the opener's network namespace.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where `net.*` keys are read and written; see [`set_net_root`].
static NET_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// The default place of the `net.*` sysctls.
pub const DEFAULT_NET_ROOT: &str = "/proc/sys/net";

/// Uses `dir` instead of `/proc/sys/net` for the `net.*` keys for the rest of the process (set
/// once, at start-up; false if it was already set).
pub fn set_net_root(dir: &Path) -> bool {
    NET_ROOT.set(dir.to_path_buf()).is_ok()
}

fn net_root() -> &'static Path {
    NET_ROOT.get().map(PathBuf::as_path).unwrap_or(Path::new(DEFAULT_NET_ROOT))
}

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("invalid sysctl key {0:?}")]
    InvalidKey(String),
    #[error("sysctl {key}: {source}")]
    Io { key: String, source: std::io::Error },
    #[error(
        "sysctl {key}: {path} is read-only (in a container /proc/sys is mounted read-only: mount the host's \
         /proc/sys/net writable elsewhere, e.g. /host/proc/sys/net, and set TRELLIS_SYSCTL_NET_DIR to it)"
    )]
    ReadOnly { key: String, path: PathBuf },
}

/// The path of a key: under `/proc/sys`, `net.*` under [`set_net_root`]'s directory if set, following sysctl(8): a key whose first separator is `/` is a
/// path; otherwise `.` separates and `/` stands for a `.` inside a name
/// (`net.ipv4.conf.vxlan/trellis.rp_filter`). A dotted key without `/` whose interface name has
/// dots (`net.ipv4.conf.vxlan.trellis.rp_filter`) is split as prefix / interface / setting.
pub fn path(key: &str) -> Result<PathBuf, SysctlError> {
    if key.is_empty() || key.contains("..") || key.starts_with(['.', '/']) || key.ends_with(['.', '/']) {
        return Err(SysctlError::InvalidKey(key.to_string()));
    }
    let first_separator = key.find(['.', '/']);
    let rel = if first_separator.is_some_and(|i| key.as_bytes()[i] == b'/') {
        key.to_string()
    } else if key.contains('/') {
        key.chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect()
    } else {
        let parts: Vec<&str> = key.split('.').collect();
        let per_interface = parts.len() > 4
            && parts[0] == "net"
            && matches!(parts[1], "ipv4" | "ipv6")
            && matches!(parts[2], "conf" | "neigh");
        if per_interface {
            let setting = parts[parts.len() - 1];
            let interface = parts[3..parts.len() - 1].join(".");
            format!("{}/{}/{}/{interface}/{setting}", parts[0], parts[1], parts[2])
        } else {
            parts.join("/")
        }
    };
    Ok(match rel.strip_prefix("net/") {
        Some(net) => net_root().join(net),
        None => PathBuf::from("/proc/sys").join(rel),
    })
}

/// Reads a sysctl (trimmed).
pub fn get(key: &str) -> Result<String, SysctlError> {
    let path = path(key)?;
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|source| SysctlError::Io { key: key.to_string(), source })
}

/// Writes a sysctl unless it already has `value`. Returns whether it changed.
pub fn set(key: &str, value: &str) -> Result<bool, SysctlError> {
    if get(key)? == value.trim() {
        return Ok(false);
    }
    let path = path(key)?;
    std::fs::write(&path, value).map_err(|source| match source.raw_os_error() {
        Some(EROFS) => SysctlError::ReadOnly { key: key.to_string(), path: path.clone() },
        _ => SysctlError::Io { key: key.to_string(), source },
    })?;
    Ok(true)
}

/// errno "Read-only file system" (Linux).
const EROFS: i32 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_proc_paths_with_dotted_interfaces() {
        assert_eq!(path("net.ipv4.ip_forward").unwrap(), PathBuf::from("/proc/sys/net/ipv4/ip_forward"));
        assert_eq!(
            path("net.ipv4.conf.vxlan.trellis.rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/vxlan.trellis/rp_filter")
        );
        assert_eq!(
            path("net.ipv4.conf.all.rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/all/rp_filter")
        );
        assert_eq!(
            path("net.ipv4.conf.vxlan/trellis.rp_filter").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/vxlan.trellis/rp_filter")
        );
        assert_eq!(
            path("net/ipv4/conf/vxlan.trellis/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/vxlan.trellis/forwarding")
        );
        for bad in ["", "../etc/passwd", "/etc/passwd", "net..x", "net.ipv4."] {
            assert!(path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_a_real_sysctl() {
        let v = get("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
