//! The reconcile loop: read → diff → apply, then NAT, CNI conflist and sysctls.
//!
//! Design: one [`pass`] does the whole job from scratch (level-triggered, like flannel's and
//! Calico's route syncers): it asks a [`DesiredSource`] for the desired state, reads what the
//! kernel has, applies the diff and syncs the rest, and reports what it did. Nothing about the
//! kernel is remembered between passes, so a pass after a crash, an edit or drift is the same
//! code path; only the plan is reused while its inputs are equal ([`PlanMemo`]: planning is
//! pure). Each pass logs how long each stage took ([`Stages`]).
//! [`run`] repeats passes on two triggers: a periodic resync (catches anything) and netlink
//! notifications (links, our routes, neighbours/FDB entries and addresses on our marked
//! devices, our nftables table; see [`crate::kernel::netlink::subscribe`]) debounced by
//! ~100 ms so a burst — including the echo of our own changes — costs one pass, and drift of
//! any of these is corrected within a fraction of a second, not at the next resync.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::diff::{Diff, diff, diff_with_conflicts};
use crate::kernel::caps::{CapabilityCache, Needs};
use crate::kernel::netlink::KernelEvent;
use crate::kernel::{ApplyReport, ChangeFailure, Kernel, KernelError, apply_refusing};
use crate::model::{Capabilities, Change, CniConfig, DesiredState, NatPlan};
use crate::plan::PlanMemo;
use crate::snapshot::{Snapshot, SnapshotError};

pub mod heap;
pub mod sysctls;
pub use sysctls::SysctlKeeper;

/// Name looked at when no VXLAN pool is in use, so a device left by an earlier pass is found
/// and removed.
pub const DEFAULT_VXLAN_DEVICE: &str = "vxlan.trellis";

/// A boxed error from a pluggable part (desired-state source, NAT, CNI).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("cannot compute the desired state: {0}")]
    Desired(#[source] BoxError),
    #[error("cannot read the kernel state: {0}")]
    Read(#[source] KernelError),
}

/// Where the desired state comes from (a snapshot file standalone, the API server in-cluster).
#[allow(async_fn_in_trait)]
pub trait DesiredSource<K: Kernel> {
    /// The desired state now (shared: a source may hand out the same plan while its inputs
    /// stay the same, see [`PlanMemo`]).
    async fn desired(&mut self, kernel: &K) -> Result<Arc<DesiredState>, BoxError>;

    /// The configured VXLAN device name, so a device stays found (and is removed) when no
    /// pool uses VXLAN any more. Default: [`DEFAULT_VXLAN_DEVICE`].
    fn vxlan_device(&self) -> &str {
        DEFAULT_VXLAN_DEVICE
    }
}

/// The non-netlink parts of the host: the nftables table and the CNI conflist.
pub trait Host {
    fn sync_nat(&self, plan: &NatPlan) -> Result<bool, BoxError>;
    fn write_cni(&self, config: &CniConfig) -> Result<bool, BoxError>;
}

/// The real host: [`crate::nat::sync`] and [`crate::cni::write`].
pub struct SystemHost;

impl Host for SystemHost {
    fn sync_nat(&self, plan: &NatPlan) -> Result<bool, BoxError> {
        Ok(crate::nat::sync(plan)?)
    }
    fn write_cni(&self, config: &CniConfig) -> Result<bool, BoxError> {
        Ok(crate::cni::write(config)?)
    }
}

/// The standalone source: a snapshot file, read again whenever it changed (editing the file is
/// how standalone mode gets live changes), planned against fixed capabilities or against what
/// the kernel answers when a pool needs it ([`CapabilityCache`]).
pub struct SnapshotSource {
    pub path: PathBuf,
    /// Fixed capabilities; `None`: probed lazily (see [`crate::kernel::caps`]).
    pub caps: Option<Capabilities>,
    /// What the kernel answered so far (when `caps` is `None`).
    pub detected: CapabilityCache,
    /// `vxlan.device` of the last snapshot read.
    pub vxlan_device: String,
    /// The last snapshot parsed and the version of the file it came from.
    parsed: Option<(FileVersion, Snapshot)>,
    memo: PlanMemo,
}

/// What tells one version of a file from another without reading it: a write changes the
/// size or the change time (which no one can set back), a replacement changes the inode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileVersion {
    dev: u64,
    inode: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileVersion {
    /// Matches no file: what a read file whose version could not be taken gets.
    const NONE: FileVersion = FileVersion { dev: 0, inode: 0, len: u64::MAX, mtime: (0, 0), ctime: (0, 0) };

    fn of(path: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            inode: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

impl SnapshotSource {
    /// Plans against fixed capabilities.
    pub fn new(path: PathBuf, caps: Capabilities) -> Self {
        Self { caps: Some(caps), ..Self::detecting(path) }
    }

    /// Probes the kernel for a tunnel kind only when a pool of the snapshot needs it.
    pub fn detecting(path: PathBuf) -> Self {
        Self {
            path,
            caps: None,
            detected: CapabilityCache::default(),
            vxlan_device: DEFAULT_VXLAN_DEVICE.to_string(),
            parsed: None,
            memo: PlanMemo::default(),
        }
    }

    /// The snapshot in the file, parsed again only when the file changed since the last read
    /// (parsing thousands of peers costs more than the rest of a pass that changes nothing).
    pub fn load(&mut self) -> Result<&Snapshot, SnapshotError> {
        load_snapshot(&self.path, &mut self.parsed)
    }
}

/// See [`SnapshotSource::load`]; `parsed` is the last file version read and its snapshot.
fn load_snapshot<'a>(
    path: &std::path::Path,
    parsed: &'a mut Option<(FileVersion, Snapshot)>,
) -> Result<&'a Snapshot, SnapshotError> {
    // The version is taken before the read: a write in between makes the next call read again.
    let version = FileVersion::of(path);
    let fresh = matches!((&version, &*parsed), (Some(version), Some((seen, _))) if version == seen);
    match (fresh, parsed) {
        (true, Some((_, snapshot))) => Ok(snapshot),
        // A file whose version could not be taken is read again next time.
        (_, slot) => Ok(&slot.insert((version.unwrap_or(FileVersion::NONE), Snapshot::from_file(path)?)).1),
    }
}

impl<K: Kernel> DesiredSource<K> for SnapshotSource {
    async fn desired(&mut self, kernel: &K) -> Result<Arc<DesiredState>, BoxError> {
        let snapshot = load_snapshot(&self.path, &mut self.parsed)?;
        self.vxlan_device.clone_from(&snapshot.vxlan.device);
        let caps = match self.caps {
            Some(caps) => caps,
            None => self.detected.detect(kernel, Needs::of(&snapshot.pools)).await,
        };
        let uplink_mtu = uplink_mtu(kernel, snapshot).await?;
        Ok(self.memo.plan(snapshot, uplink_mtu, caps)?)
    }

    fn vxlan_device(&self) -> &str {
        &self.vxlan_device
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotPlanError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("cannot read the MTU of uplink {uplink}: {source}")]
    UplinkMtu { uplink: String, source: KernelError },
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
}

/// The uplink MTU to plan with: the snapshot's, else what the kernel says (`None` when the
/// kernel cannot say and the snapshot has an explicit pod MTU, which does not need it).
pub async fn uplink_mtu<K: Kernel>(kernel: &K, snapshot: &Snapshot) -> Result<Option<u32>, SnapshotPlanError> {
    if snapshot.node.uplink_mtu.is_some() {
        return Ok(snapshot.node.uplink_mtu);
    }
    match kernel.link_mtu(&snapshot.node.uplink).await {
        Ok(mtu) => Ok(Some(mtu)),
        Err(e) if snapshot.mtu.is_some() => {
            tracing::warn!(uplink = %snapshot.node.uplink, error = %e, "uplink MTU unknown");
            Ok(None)
        }
        Err(source) => Err(SnapshotPlanError::UplinkMtu { uplink: snapshot.node.uplink.clone(), source }),
    }
}

/// Fills the uplink MTU from the kernel when the snapshot has none, then plans (once; a loop
/// plans through a [`PlanMemo`]).
pub async fn desired_from_snapshot<K: Kernel>(
    kernel: &K,
    mut snapshot: Snapshot,
    caps: Capabilities,
) -> Result<DesiredState, SnapshotPlanError> {
    snapshot.node.uplink_mtu = uplink_mtu(kernel, &snapshot).await?;
    Ok(crate::plan::plan(&snapshot, caps)?)
}

/// The VXLAN device name to read for `desired` (`fallback` when no pool uses VXLAN).
pub fn vxlan_device<'a>(desired: &'a DesiredState, fallback: &'a str) -> &'a str {
    desired.vxlan.as_ref().map_or(fallback, |t| t.name.as_str())
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    pub kernel: ApplyReport,
    /// Whether the nftables table changed (None: failed, see `errors`).
    pub nat_changed: Option<bool>,
    /// Whether the conflist changed (None: failed or no CNI config planned).
    pub cni_changed: Option<bool>,
    pub sysctls_changed: usize,
    /// Sysctls given back the host's earlier value (key, value), see [`SysctlKeeper`].
    pub sysctls_restored: Vec<(String, String)>,
    /// NAT, CNI and sysctl failures.
    pub errors: Vec<String>,
    /// Pools the planner could not program here (pool name, reason), e.g. no ipip support.
    pub pool_errors: Vec<(String, String)>,
    /// Why this node has no CNI config (no new pods can start here), if it has none.
    pub cni_unavailable: Option<String>,
    /// Where the pass spent its time.
    pub stages: Stages,
}

/// Wall-clock time of each stage of a pass, in milliseconds (logged with each pass, so a slow
/// pass says which stage was slow).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stages {
    /// Desired state: the source's inputs and the plan.
    pub desired_ms: f64,
    /// Reading the kernel's state (netlink dumps, decoding).
    pub read_ms: f64,
    pub diff_ms: f64,
    /// Applying the changes (zero requests when there are none).
    pub apply_ms: f64,
    /// Sysctls, NAT table, CNI conflist.
    pub host_ms: f64,
}

/// Milliseconds since `start`, to 10 µs.
fn ms_since(start: std::time::Instant) -> f64 {
    (start.elapsed().as_secs_f64() * 1e5).round() / 100.0
}

impl PassReport {
    /// Everything that should have been applied was.
    pub fn ok(&self) -> bool {
        self.kernel.ok() && self.errors.is_empty()
    }

    /// Number of kernel changes applied.
    pub fn changes(&self) -> usize {
        self.kernel.applied.len()
    }

    /// Counts per kind of applied kernel change plus `nat`, `cni`, `sysctl`.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = self.kernel.counts();
        if self.nat_changed == Some(true) {
            counts.insert("nat", 1);
        }
        if self.cni_changed == Some(true) {
            counts.insert("cni", 1);
        }
        if self.sysctls_changed + self.sysctls_restored.len() > 0 {
            counts.insert("sysctl", self.sysctls_changed + self.sysctls_restored.len());
        }
        counts
    }
}

/// The changes a pass would make, without making them (for `plan`). `vxlan_fallback` is the
/// VXLAN device name to look at when no pool uses VXLAN.
pub async fn preview<K: Kernel>(
    kernel: &K,
    desired: &DesiredState,
    vxlan_fallback: &str,
) -> Result<Vec<Change>, ReconcileError> {
    let current = kernel.read(vxlan_device(desired, vxlan_fallback)).await.map_err(ReconcileError::Read)?;
    Ok(diff(&current, desired))
}

/// One full pass (see the module comment), on its own: a sysctl it sets is not restored later
/// (a loop keeps a [`SysctlKeeper`] across passes: [`pass_keeping`]).
pub async fn pass<K: Kernel, S: DesiredSource<K>, H: Host>(
    kernel: &K,
    source: &mut S,
    host: &H,
) -> Result<PassReport, ReconcileError> {
    pass_keeping(kernel, source, host, &mut SysctlKeeper::default()).await
}

/// One full pass; `sysctls` remembers the host's values of the sysctls it changed, so one no
/// longer desired is restored.
pub async fn pass_keeping<K: Kernel, S: DesiredSource<K>, H: Host>(
    kernel: &K,
    source: &mut S,
    host: &H,
    sysctls: &mut SysctlKeeper,
) -> Result<PassReport, ReconcileError> {
    let mut stages = Stages::default();
    let mut clock = std::time::Instant::now();
    let mut lap = |stage: &mut f64| {
        *stage = ms_since(clock);
        clock = std::time::Instant::now();
    };
    let desired = source.desired(kernel).await.map_err(ReconcileError::Desired)?;
    lap(&mut stages.desired_ms);
    let current = kernel.read(vxlan_device(&desired, source.vxlan_device())).await.map_err(ReconcileError::Read)?;
    lap(&mut stages.read_ms);
    let Diff { changes, conflicts } = diff_with_conflicts(&current, &desired);
    drop(current);
    lap(&mut stages.diff_ms);
    // A route that would take over a foreign one is reported per route, like a refusal.
    let refused = conflicts
        .into_iter()
        .map(|c| ChangeFailure {
            change: c.change(),
            error: KernelError::ForeignRoute { dst: c.route.dst, protocol: c.protocol },
        })
        .collect();
    let mut report = PassReport { kernel: apply_refusing(kernel, &changes, refused).await, ..Default::default() };
    lap(&mut stages.apply_ms);

    // After the devices exist: per-interface sysctls need them.
    let synced = sysctls.sync(kernel, &desired.sysctls);
    for key in &synced.set {
        tracing::info!(%key, "sysctl set");
    }
    for (key, value) in &synced.restored {
        tracing::info!(%key, %value, "sysctl no longer needed: the host's earlier value restored");
    }
    report.sysctls_changed = synced.set.len();
    report.sysctls_restored = synced.restored;
    report.errors.extend(synced.errors);
    match host.sync_nat(&desired.nat) {
        Ok(changed) => report.nat_changed = Some(changed),
        Err(e) => report.errors.push(format!("nat: {e}")),
    }
    if !desired.cni.path.as_os_str().is_empty() {
        match host.write_cni(&desired.cni) {
            Ok(changed) => report.cni_changed = Some(changed),
            Err(e) => report.errors.push(format!("cni {}: {e}", desired.cni.path.display())),
        }
    }
    report.cni_unavailable = desired.cni.unavailable.clone();
    lap(&mut stages.host_ms);
    report.stages = stages;
    for pool in &desired.pools {
        if let Some(error) = &pool.error {
            report.pool_errors.push((pool.name.clone(), error.clone()));
        }
    }
    for error in &report.errors {
        tracing::error!(%error, "host sync failed");
    }
    for (pool, error) in &report.pool_errors {
        tracing::warn!(%pool, %error, "pool not programmed on this node");
    }
    if let Some(reason) = &report.cni_unavailable {
        tracing::warn!(%reason, "no CNI config on this node");
    }
    Ok(report)
}

/// Loop timing.
#[derive(Clone, Copy, Debug)]
pub struct LoopOptions {
    /// Full pass at least this often, events or not.
    pub resync_interval: Duration,
    /// Quiet time after a kernel event before the pass (bursts collapse into one pass).
    pub debounce: Duration,
    /// First retry delay after a pass that did not apply everything; doubles per failed pass
    /// up to `resync_interval`, back to this after a clean pass.
    pub retry_initial: Duration,
}

impl Default for LoopOptions {
    fn default() -> Self {
        Self {
            resync_interval: Duration::from_secs(30),
            debounce: Duration::from_millis(100),
            retry_initial: Duration::from_secs(1),
        }
    }
}

/// Why a pass ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Start,
    Resync,
    KernelEvent,
    /// The previous pass did not apply everything.
    Retry,
}

/// Waits for the next event; never returns once the stream is gone (resync still runs).
async fn next_event(events: &mut Option<UnboundedReceiver<KernelEvent>>) {
    match events {
        Some(rx) => {
            if rx.recv().await.is_none() {
                tracing::warn!("kernel event stream ended; relying on periodic resync");
                *events = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Runs passes until `shutdown` resolves: at start, every `resync_interval`, `debounce` after
/// kernel events, and with backoff after a pass that did not apply everything. `on_pass` sees every pass's outcome (summaries, tests).
pub async fn run<K, S, H>(
    kernel: &K,
    source: &mut S,
    host: &H,
    options: LoopOptions,
    mut events: Option<UnboundedReceiver<KernelEvent>>,
    shutdown: impl std::future::Future<Output = ()>,
    mut on_pass: impl FnMut(Trigger, &Result<PassReport, ReconcileError>),
) where
    K: Kernel,
    S: DesiredSource<K>,
    H: Host,
{
    tokio::pin!(shutdown);
    let mut trigger = Trigger::Start;
    let mut retry = options.retry_initial;
    let mut last_applied: Vec<Change> = Vec::new();
    let mut not_sticking = false;
    let mut sysctls = SysctlKeeper::default();
    loop {
        let started = std::time::Instant::now();
        let result = pass_keeping(kernel, source, host, &mut sysctls).await;
        // The pass's own duration in ms, to 10 µs (desired state, kernel read, diff, apply, host sync).
        let took_ms = ms_since(started);
        let applied = result.as_ref().map(|r| r.kernel.applied.clone()).unwrap_or_default();
        // Changes the kernel accepts but that do not read back as applied would be re-applied
        // by every pass, and their echo would trigger the next one: a hot loop. Seen twice in a
        // row from an event, they are treated like a failure — back off, ignore events — until
        // a pass applies something else (or nothing).
        let repeated = !applied.is_empty() && applied == last_applied;
        let newly = repeated && !not_sticking && trigger == Trigger::KernelEvent;
        not_sticking = repeated && (not_sticking || trigger == Trigger::KernelEvent);
        if newly {
            tracing::warn!(changes = ?applied.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "applied changes do not stick (the kernel reads them back differently); backing off");
        }
        last_applied = applied;
        let failed = not_sticking || result.as_ref().map_or(true, |report| !report.ok());
        // A failed pass is retried sooner than the resync, backing off while it keeps failing.
        let (wait, timer_trigger) = if failed {
            let wait = retry.min(options.resync_interval);
            retry = (retry * 2).min(options.resync_interval);
            (wait, Trigger::Retry)
        } else {
            retry = options.retry_initial;
            (options.resync_interval, Trigger::Resync)
        };
        match &result {
            Ok(report) if report.changes() > 0 || !report.ok() => {
                tracing::info!(?trigger, counts = ?report.counts(), failed = report.kernel.failed.len(), took_ms,
                    stages = ?report.stages, "pass done")
            }
            Ok(report) => tracing::debug!(?trigger, took_ms, stages = ?report.stages, "pass done, nothing to change"),
            Err(error) => tracing::error!(?trigger, %error, took_ms, "pass failed"),
        }
        on_pass(trigger, &result);
        drop(result);
        heap::release_free_memory();

        if not_sticking {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => trigger = timer_trigger,
            }
            if let Some(rx) = events.as_mut() {
                while rx.try_recv().is_ok() {}
            }
            continue;
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(wait) => trigger = timer_trigger,
            () = next_event(&mut events) => {
                trigger = Trigger::KernelEvent;
                // Debounce: let the burst (often the echo of our own changes) arrive, then
                // swallow it: one pass covers all of it.
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(options.debounce) => {}
                }
                if let Some(rx) = events.as_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
