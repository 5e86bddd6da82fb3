//! Does this process hold what programming the kernel takes? Checked once at start-up, so a
//! container started without `NET_ADMIN` fails with one clear sentence instead of a pass full
//! of "Operation not permitted".

/// `CAP_NET_ADMIN`'s bit (linux/capability.h): links, addresses, routes, neighbours, nftables.
const CAP_NET_ADMIN: u32 = 12;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrivilegeError {
    #[error(
        "trellis-agent needs the capability NET_ADMIN to program routes, links and nftables, and this \
         process does not have it (effective capabilities {effective:#x}); in a container add it: \
         `--cap-add NET_ADMIN,NET_RAW` (podman/docker), securityContext.capabilities.add in a pod"
    )]
    MissingNetAdmin { effective: u64 },
    #[error("cannot read this process's capabilities: {0}")]
    Unreadable(String),
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub fn effective_caps(status: &str) -> Result<u64, PrivilegeError> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or_else(|| PrivilegeError::Unreadable("no CapEff: line".into()))?;
    u64::from_str_radix(hex.trim(), 16).map_err(|e| PrivilegeError::Unreadable(format!("CapEff {hex:?}: {e}")))
}

/// Ok when `effective` includes NET_ADMIN.
pub fn check(effective: u64) -> Result<(), PrivilegeError> {
    if effective & (1 << CAP_NET_ADMIN) != 0 { Ok(()) } else { Err(PrivilegeError::MissingNetAdmin { effective }) }
}

/// [`check`] for the calling process.
pub fn check_self() -> Result<(), PrivilegeError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| PrivilegeError::Unreadable(e.to_string()))?;
    check(effective_caps(&status)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_admin_is_required_and_named_in_the_error() {
        // podman's --cap-drop all --cap-add NET_ADMIN,NET_RAW
        assert_eq!(check(0x3000), Ok(()));
        let err = check(0x2000).unwrap_err();
        assert_eq!(err, PrivilegeError::MissingNetAdmin { effective: 0x2000 });
        assert!(err.to_string().contains("NET_ADMIN"));
    }

    #[test]
    fn reads_cap_eff_from_a_status_text() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Ok(0x3000));
        assert!(effective_caps("Name: x\n").is_err());
    }
}
