//! The sysctls a pass sets, remembering what the host had before Trellis changed them, so a
//! setting the data plane no longer needs goes back to the host's value.
//!
//! Why: during a live change the uplink's `rp_filter` is loosened (a packet may arrive directly
//! while this node's route back goes through a tunnel, or the other way round). Once no pool
//! needs that any more (Cleanup), the planner stops asking for it, and the value the uplink had
//! before comes back. Only values Trellis itself changed are restored; a key that already had
//! the wanted value is not remembered. The memory lives as long as the loop: an agent restarted
//! while a change runs does not know the earlier value and leaves the setting as it finds it.

use std::collections::BTreeMap;

use crate::kernel::{Kernel, KernelError};
use crate::model::Sysctl;

/// What the host had before this agent changed a key (key → earlier value).
#[derive(Debug, Default)]
pub struct SysctlKeeper {
    earlier: BTreeMap<String, String>,
}

/// What one sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SysctlSync {
    /// Keys set to the desired value.
    pub set: Vec<String>,
    /// Keys given back their earlier value (key, value).
    pub restored: Vec<(String, String)>,
    pub errors: Vec<String>,
}

impl SysctlKeeper {
    /// The keys this agent changed and would restore, with their earlier values.
    pub fn remembered(&self) -> &BTreeMap<String, String> {
        &self.earlier
    }

    /// Sets every desired sysctl, then restores the remembered keys no longer desired.
    pub fn sync<K: Kernel>(&mut self, kernel: &K, desired: &[Sysctl]) -> SysctlSync {
        let mut out = SysctlSync::default();
        for sysctl in desired {
            let before = match kernel.sysctl_get(&sysctl.key) {
                Ok(v) => v,
                Err(e) => {
                    out.errors.push(format!("sysctl {}={}: {e}", sysctl.key, sysctl.value));
                    continue;
                }
            };
            if before == sysctl.value.trim() {
                continue;
            }
            match kernel.sysctl_set(&sysctl.key, &sysctl.value) {
                Ok(_) => {
                    self.earlier.entry(sysctl.key.clone()).or_insert(before);
                    out.set.push(sysctl.key.clone());
                }
                Err(e) => out.errors.push(format!("sysctl {}={}: {e}", sysctl.key, sysctl.value)),
            }
        }
        let gone: Vec<String> =
            self.earlier.keys().filter(|k| !desired.iter().any(|s| &s.key == *k)).cloned().collect();
        for key in gone {
            let Some(value) = self.earlier.remove(&key) else { continue };
            match kernel.sysctl_set(&key, &value) {
                Ok(_) => out.restored.push((key, value)),
                // The device went with the setting (a tunnel removed in Cleanup): nothing to restore.
                Err(KernelError::Sysctl(crate::kernel::sysctl::SysctlError::Io { source, .. }))
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    out.errors.push(format!("sysctl {key}: restoring {value}: {e}"));
                    self.earlier.insert(key, value);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeKernel;

    const UPLINK: &str = "net.ipv4.conf.eth0.rp_filter";

    fn want(pairs: &[(&str, &str)]) -> Vec<Sysctl> {
        pairs.iter().map(|(k, v)| Sysctl { key: k.to_string(), value: v.to_string() }).collect()
    }

    #[test]
    fn a_loosened_setting_gets_the_hosts_value_back_once_no_longer_desired() {
        let kernel = FakeKernel::default();
        kernel.sysctls.borrow_mut().insert(UPLINK.into(), "1".into());
        let mut keeper = SysctlKeeper::default();
        let s = keeper.sync(&kernel, &want(&[(UPLINK, "2")]));
        assert_eq!(s.set, vec![UPLINK.to_string()]);
        assert_eq!(kernel.sysctls.borrow()[UPLINK], "2");
        // A second pass of the change neither sets nor forgets anything.
        assert_eq!(keeper.sync(&kernel, &want(&[(UPLINK, "2")])), SysctlSync::default());
        assert_eq!(keeper.remembered().get(UPLINK).map(String::as_str), Some("1"));

        let s = keeper.sync(&kernel, &[]);
        assert_eq!(s.restored, vec![(UPLINK.to_string(), "1".to_string())]);
        assert_eq!(kernel.sysctls.borrow()[UPLINK], "1");
        assert!(keeper.remembered().is_empty());
    }

    #[test]
    fn a_key_that_already_had_the_value_is_not_touched_afterwards() {
        let kernel = FakeKernel::default();
        kernel.sysctls.borrow_mut().insert(UPLINK.into(), "2".into());
        let mut keeper = SysctlKeeper::default();
        assert_eq!(keeper.sync(&kernel, &want(&[(UPLINK, "2")])), SysctlSync::default());
        assert_eq!(keeper.sync(&kernel, &[]), SysctlSync::default());
        assert_eq!(kernel.sysctls.borrow()[UPLINK], "2", "the host's own loose setting stays");
    }

    #[test]
    fn the_first_earlier_value_is_kept_when_the_desired_value_changes() {
        let kernel = FakeKernel::default();
        kernel.sysctls.borrow_mut().insert(UPLINK.into(), "0".into());
        let mut keeper = SysctlKeeper::default();
        keeper.sync(&kernel, &want(&[(UPLINK, "2")]));
        keeper.sync(&kernel, &want(&[(UPLINK, "1")]));
        keeper.sync(&kernel, &[]);
        assert_eq!(kernel.sysctls.borrow()[UPLINK], "0");
    }
}
