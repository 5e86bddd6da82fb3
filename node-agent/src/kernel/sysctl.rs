//! Sysctls of the calling thread's network namespace, through `/proc/sys`.
//!
//! `net.*` entries under `/proc/sys` belong to the network namespace of the task that opens
//! them, so this works per namespace like the rest of the kernel layer. Keys follow sysctl(8),
//! including its escape for interface names with dots (`vxlan/trellis`), see [`path`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("invalid sysctl key {0:?}")]
    InvalidKey(String),
    #[error("sysctl {key}: {source}")]
    Io { key: String, source: std::io::Error },
}

/// The `/proc/sys` path of a key, following sysctl(8): a key whose first separator is `/` is a
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
