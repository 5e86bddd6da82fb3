//! Capability detection: can this kernel do IPIP and VXLAN?
//!
//! Asking `/proc/modules` or `modinfo` is unreliable (built-in modules, containers without
//! `/lib/modules`), so we ask the kernel itself, cheapest first: the device already exists;
//! the module is loaded (`/sys/module/<m>`: a yes, but its absence proves nothing);
//! `modprobe` loads the module (which creates `tunl0`); creating a throw-away device of that kind
//! works. "File exists" when creating an `ipip` device also means yes: the module is there and its
//! fallback device `tunl0` already has those parameters. Any error means "no" — a kernel without
//! ipip (like the test host's) yields `ipip: false`, not a failure; the planner then reports the
//! affected pools instead of programming them.
//!
//! The agent asks lazily ([`CapabilityCache`]): a tunnel kind is probed only on a pass whose
//! pools need it, so a VXLAN-only cluster never runs `modprobe ipip` or creates an ipip probe
//! device. A "yes" is kept; a "no" is asked again on the next pass that needs the kind (the
//! module may have been installed or loaded since, without an agent restart).

use crate::kernel::Kernel;
use crate::model::{Capabilities, Encapsulation, IPIP_DEVICE};
use crate::snapshot::Pool;

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
    /// Whether the module is loaded already (see [`module_loaded`]).
    fn module_loaded(&self, module: &str) -> bool;
}

/// Whether a module is loaded (or built in with parameters): `/sys/module/<module>` exists.
pub fn module_loaded(module: &str) -> bool {
    std::path::Path::new("/sys/module").join(module).exists()
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

/// Whether the kernel can do `kind`; `existing` are devices whose existence proves it.
pub async fn supports<P: LinkProbe>(probe: &P, kind: TunnelKind, existing: &[&str]) -> bool {
    for name in existing {
        if probe.link_exists(name).await {
            return true;
        }
    }
    // A loaded module answers without a process (modprobe) or a probe device (whose removal
    // waits for an RCU grace period, tens of milliseconds).
    if probe.module_loaded(kind.module()) {
        return true;
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

/// The tunnel kinds a set of pools needs (a pool with both modes enabled needs both: the
/// planner refuses it, and the probe answer does not change that).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub ipip: bool,
    pub vxlan: bool,
}

impl Needs {
    /// The tunnel kinds the pools use, counting the settings a live change is leaving (their
    /// receive side stays until Cleanup).
    pub fn of(pools: &[Pool]) -> Self {
        let leaving = |p: &Pool| p.transition.as_ref().map(|t| t.from);
        Needs {
            ipip: pools.iter().any(|p| p.ipip_mode.is_enabled() || matches!(leaving(p), Some(Encapsulation::Ipip(_)))),
            vxlan: pools
                .iter()
                .any(|p| p.vxlan_mode.is_enabled() || matches!(leaving(p), Some(Encapsulation::Vxlan(_)))),
        }
    }
}

/// Capabilities learnt lazily (see the module comment). `None`: never probed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityCache {
    pub ipip: Option<bool>,
    pub vxlan: Option<bool>,
}

impl CapabilityCache {
    fn slot(&mut self, kind: TunnelKind) -> &mut Option<bool> {
        match kind {
            TunnelKind::Ipip => &mut self.ipip,
            TunnelKind::Vxlan => &mut self.vxlan,
        }
    }

    /// The kinds to probe now: needed, and not known to work (never probed, or "no" last time).
    pub fn to_probe(&self, needs: Needs) -> Vec<TunnelKind> {
        [(TunnelKind::Ipip, needs.ipip, self.ipip), (TunnelKind::Vxlan, needs.vxlan, self.vxlan)]
            .into_iter()
            .filter(|&(_, needed, known)| needed && known != Some(true))
            .map(|(kind, _, _)| kind)
            .collect()
    }

    /// Remembers a probe's answer.
    pub fn record(&mut self, kind: TunnelKind, supported: bool) {
        *self.slot(kind) = Some(supported);
    }

    /// What the planner gets: what is known; a kind never probed (no pool needed it) reads as
    /// unsupported — no pool depends on that answer.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities { ipip: self.ipip == Some(true), vxlan: self.vxlan == Some(true) }
    }

    /// Probes what `needs` requires (see [`Self::to_probe`]) and returns the capabilities.
    pub async fn detect<K: Kernel>(&mut self, kernel: &K, needs: Needs) -> Capabilities {
        for kind in self.to_probe(needs) {
            let supported = kernel.supports(kind).await;
            tracing::info!(kind = kind.module(), supported, "kernel capability probed");
            self.record(kind, supported);
        }
        self.capabilities()
    }
}

/// Whether a module is loaded (or built in with parameters) or at least loadable, without
/// loading it: `/sys/module/<m>` or `modprobe --dry-run`.
fn module_available(module: &str) -> bool {
    module_loaded(module)
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
        loaded: Vec<&'static str>,
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
        fn module_loaded(&self, module: &str) -> bool {
            self.loaded.contains(&module)
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
            loaded: vec![],
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
            loaded: vec![],
            create: |_| ProbeOutcome::Refused("must not be called".into()),
            created: RefCell::default(),
        });
        assert_eq!(caps, Capabilities { ipip: true, vxlan: true });
        assert!(created.is_empty());
    }

    #[test]
    fn a_loaded_module_answers_without_modprobe_or_a_probe_device() {
        let (caps, created) = run(Fake {
            links: RefCell::new(vec![]),
            modules: vec![],
            loaded: vec!["vxlan", "ipip"],
            create: |_| ProbeOutcome::Refused("must not be called".into()),
            created: RefCell::default(),
        });
        assert_eq!(caps, Capabilities { ipip: true, vxlan: true });
        assert!(created.is_empty());
    }

    #[test]
    fn only_kinds_a_pool_needs_are_probed() {
        let cache = CapabilityCache::default();
        assert_eq!(cache.to_probe(Needs { ipip: false, vxlan: true }), vec![TunnelKind::Vxlan]);
        assert_eq!(cache.to_probe(Needs { ipip: true, vxlan: false }), vec![TunnelKind::Ipip]);
        assert!(cache.to_probe(Needs::default()).is_empty());
        assert_eq!(cache.capabilities(), Capabilities { ipip: false, vxlan: false });
    }

    #[test]
    fn a_yes_is_kept_and_a_no_is_asked_again() {
        let mut cache = CapabilityCache::default();
        let both = Needs { ipip: true, vxlan: true };
        cache.record(TunnelKind::Vxlan, true);
        cache.record(TunnelKind::Ipip, false);
        assert_eq!(cache.to_probe(both), vec![TunnelKind::Ipip]);
        assert_eq!(cache.capabilities(), Capabilities { ipip: false, vxlan: true });
        cache.record(TunnelKind::Ipip, true);
        assert!(cache.to_probe(both).is_empty());
        assert_eq!(cache.capabilities(), Capabilities { ipip: true, vxlan: true });
    }

    #[test]
    fn needs_follow_the_pools_modes() {
        let pool = |ipip: &str, vxlan: &str| -> Pool {
            serde_json::from_value(serde_json::json!({
                "name": "p", "cidr": "10.244.0.0/16", "ipipMode": ipip, "vxlanMode": vxlan
            }))
            .unwrap()
        };
        assert_eq!(Needs::of(&[pool("Never", "Always")]), Needs { ipip: false, vxlan: true });
        assert_eq!(
            Needs::of(&[pool("Never", "Never"), pool("CrossSubnet", "Never")]),
            Needs { ipip: true, vxlan: false }
        );
        assert_eq!(Needs::of(&[]), Needs::default());
        let mut leaving_vxlan = pool("Never", "Never");
        leaving_vxlan.transition = Some(crate::snapshot::PoolTransition {
            from: Encapsulation::Vxlan(trellis_api::EncapMode::Always),
            from_nat_outgoing: false,
            phase: crate::model::Phase::Switch,
        });
        assert_eq!(Needs::of(&[leaving_vxlan]), Needs { ipip: false, vxlan: true }, "until Cleanup");
    }

    #[test]
    fn file_exists_for_ipip_means_supported() {
        let (caps, _) = run(Fake {
            links: RefCell::new(vec![]),
            modules: vec![],
            loaded: vec![],
            create: |k| match k {
                TunnelKind::Ipip => ProbeOutcome::Exists,
                TunnelKind::Vxlan => ProbeOutcome::Refused("no".into()),
            },
            created: RefCell::default(),
        });
        assert_eq!(caps, Capabilities { ipip: true, vxlan: false });
    }
}
