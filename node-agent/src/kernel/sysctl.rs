//! Sysctls of the calling thread's network namespace, through `/proc/sys`.
//!
//! `net.*` entries under `/proc/sys` belong to the network namespace of the task that opens
//! them, so this works per namespace like the rest of the kernel layer. Interface names may
//! contain dots (`vxlan.trellis`), so `net.ipv4.conf.vxlan.trellis.rp_filter` is split as
//! prefix / interface / setting rather than by replacing every dot; `/`-separated keys are
//! taken as paths as they are.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("invalid sysctl key {0:?}")]
    InvalidKey(String),
    #[error("sysctl {key}: {source}")]
    Io { key: String, source: std::io::Error },
}

/// The `/proc/sys` path of a key.
pub fn path(key: &str) -> Result<PathBuf, SysctlError> {
    if key.is_empty() || key.contains("..") || key.starts_with(['.', '/']) {
        return Err(SysctlError::InvalidKey(key.to_string()));
    }
    let rel = if key.contains('/') {
        key.to_string()
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
    Ok(PathBuf::from("/proc/sys").join(rel))
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
    std::fs::write(path(key)?, value).map_err(|source| SysctlError::Io { key: key.to_string(), source })?;
    Ok(true)
}

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
            path("net/ipv4/conf/vxlan.trellis/forwarding").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/vxlan.trellis/forwarding")
        );
        for bad in ["", "../etc/passwd", "/etc/passwd", "net..x"] {
            assert!(path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_a_real_sysctl() {
        let v = get("net.ipv4.ip_forward").unwrap();
        assert!(v == "0" || v == "1", "{v}");
    }
}
