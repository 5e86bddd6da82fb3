//! rtnetlink errors → [`KernelError`], with the errno kept so callers can tell "already there"
//! and "already gone" from real refusals.

use crate::kernel::KernelError;

pub const ENOENT: i32 = 2;
pub const ESRCH: i32 = 3;
pub const EBUSY: i32 = 16;
pub const EEXIST: i32 = 17;
pub const ENODEV: i32 = 19;
pub const EADDRNOTAVAIL: i32 = 99;

/// A failed request `op`, with the kernel's errno (positive) when it gave one.
pub fn nl_error(op: impl Into<String>, error: rtnetlink::Error) -> KernelError {
    let op = op.into();
    match error {
        rtnetlink::Error::NetlinkError(msg) => {
            let errno = msg.code.map(|c| -c.get());
            let message = match errno {
                Some(e) => std::io::Error::from_raw_os_error(e).to_string(),
                None => msg.to_string(),
            };
            KernelError::Netlink { op, errno, message }
        }
        other => KernelError::Netlink { op, errno: None, message: other.to_string() },
    }
}

/// Treats "already gone" as success for deletions.
pub fn gone_ok(result: Result<(), KernelError>) -> Result<(), KernelError> {
    match result {
        Err(e) if matches!(e.errno(), Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)) => Ok(()),
        other => other,
    }
}
