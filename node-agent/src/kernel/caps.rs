//! Capability detection: can this kernel do IPIP and VXLAN?
//!
//! Asking `/proc/modules` or `modinfo` is unreliable (built-in modules, containers without
//! `/lib/modules`), so we ask the kernel itself, cheapest first: the device already exists;
//! `modprobe` loads the module (which creates `tunl0`); creating a throw-away device of that kind
//! works. "File exists" when creating an `ipip` device also means yes: the module is there and its
//! fallback device `tunl0` already has those parameters. Any error means "no" — a kernel without
//! ipip (like the test host's) yields `ipip: false`, not a failure; the planner then reports the
//! affected pools instead of programming them.

use crate::desired::{Capabilities, IPIP_DEVICE};

/// A tunnel kind to probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelKind {
    Ipip,
    Vxlan,
}

impl TunnelKind {
    pub fn module(self) -> &'static str {
        match self {
            TunnelKind::Ipip => "ipip",
            TunnelKind::Vxlan => "vxlan",
        }
    }
}

/// Result of trying to create a probe device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// Created (and deleted again).
    Created,
    /// The kernel says an equivalent device exists: the kind is supported.
    Exists,
    /// Refused: not supported (or not allowed), with the kernel's words.
    Refused(String),
}

/// The few kernel operations the detection needs.
#[allow(async_fn_in_trait)]
pub trait LinkProbe {
    async fn link_exists(&self, name: &str) -> bool;
    /// Creates a device of `kind` named `name` and deletes it again.
    async fn try_create(&self, kind: TunnelKind, name: &str) -> ProbeOutcome;
    /// `modprobe <module>`; whether it succeeded.
    fn load_module(&self, module: &str) -> bool;
}

/// Runs `modprobe -q`, quietly failing where there is no modprobe or no module.
pub fn modprobe(module: &str) -> bool {
    std::process::Command::new("modprobe")
        .args(["-q", module])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Name of a throw-away probe device (unique per process; ≤ 15 bytes).
fn probe_name(kind: TunnelKind) -> String {
    let tag = match kind {
        TunnelKind::Ipip => "ip",
        TunnelKind::Vxlan => "vx",
    };
    format!("trlp{tag}{}", std::process::id() % 1_000_000_000)
}

async fn supports<P: LinkProbe>(probe: &P, kind: TunnelKind, existing: &[&str]) -> bool {
    for name in existing {
        if probe.link_exists(name).await {
            return true;
        }
    }
    if probe.load_module(kind.module()) && kind == TunnelKind::Ipip && probe.link_exists(IPIP_DEVICE).await {
        return true;
    }
    match probe.try_create(kind, &probe_name(kind)).await {
        ProbeOutcome::Created | ProbeOutcome::Exists => true,
        ProbeOutcome::Refused(why) => {
            tracing::info!(kind = kind.module(), %why, "kernel cannot create this tunnel kind");
            false
        }
    }
}

/// Detects the capabilities; `vxlan_device` is Trellis' VXLAN device (its existence proves VXLAN).
pub async fn detect<P: LinkProbe>(probe: &P, vxlan_device: &str) -> Capabilities {
    Capabilities {
        ipip: supports(probe, TunnelKind::Ipip, &[IPIP_DEVICE]).await,
        vxlan: supports(probe, TunnelKind::Vxlan, &[vxlan_device]).await,
    }
}

/// Whether a module is loaded (or built in with parameters) or at least loadable, without
/// loading it: `/sys/module/<m>` or `modprobe --dry-run`.
fn module_available(module: &str) -> bool {
    std::path::Path::new("/sys/module").join(module).exists()
        || std::process::Command::new("modprobe")
            .args(["-n", "-q", module])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Read-only detection for `plan`: never loads a module or creates a device (both would be
/// changes), so it may say "yes" for a module that is available but not loaded yet.
pub async fn detect_passive<P: LinkProbe>(probe: &P, vxlan_device: &str) -> Capabilities {
    Capabilities {
        ipip: probe.link_exists(IPIP_DEVICE).await || module_available("ipip"),
        vxlan: probe.link_exists(vxlan_device).await || module_available("vxlan"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct Fake {
        links: RefCell<Vec<String>>,
        modules: Vec<&'static str>,
        create: fn(TunnelKind) -> ProbeOutcome,
        created: RefCell<Vec<TunnelKind>>,
    }

    impl LinkProbe for Fake {
        async fn link_exists(&self, name: &str) -> bool {
            self.links.borrow().iter().any(|l| l == name)
        }
        async fn try_create(&self, kind: TunnelKind, _name: &str) -> ProbeOutcome {
            self.created.borrow_mut().push(kind);
            (self.create)(kind)
        }
        fn load_module(&self, module: &str) -> bool {
            let ok = self.modules.contains(&module);
            if ok && module == "ipip" {
                self.links.borrow_mut().push(IPIP_DEVICE.to_string());
            }
            ok
        }
    }

    fn run(f: Fake) -> (Capabilities, Vec<TunnelKind>) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let caps = rt.block_on(detect(&f, "vxlan.trellis"));
        (caps, f.created.into_inner())
    }

    #[test]
    fn host_without_ipip_module_says_no_ipip() {
        let (caps, _) = run(Fake {
            links: RefCell::new(vec![]),
            modules: vec![],
            create: |k| match k {
                TunnelKind::Ipip => ProbeOutcome::Refused("Operation not supported".into()),
                TunnelKind::Vxlan => ProbeOutcome::Created,
            },
            created: RefCell::default(),
        });
        assert_eq!(caps, Capabilities { ipip: false, vxlan: true });
    }

    #[test]
    fn existing_devices_or_modprobe_answer_without_creating() {
        let (caps, created) = run(Fake {
            links: RefCell::new(vec!["vxlan.trellis".into()]),
            modules: vec!["ipip"],
            create: |_| ProbeOutcome::Refused("must not be called".into()),
            created: RefCell::default(),
        });
        assert_eq!(caps, Capabilities { ipip: true, vxlan: true });
        assert!(created.is_empty());
    }

    #[test]
    fn file_exists_for_ipip_means_supported() {
        let (caps, _) = run(Fake {
            links: RefCell::new(vec![]),
            modules: vec![],
            create: |k| match k {
                TunnelKind::Ipip => ProbeOutcome::Exists,
                TunnelKind::Vxlan => ProbeOutcome::Refused("no".into()),
            },
            created: RefCell::default(),
        });
        assert_eq!(caps, Capabilities { ipip: true, vxlan: false });
    }
}
