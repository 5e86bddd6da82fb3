use std::cell::RefCell;
use std::rc::Rc;

use tokio::sync::{Notify, mpsc};

use super::*;
use crate::kernel::fake::FakeKernel;
use crate::model::{FdbEntry, MacAddr, Neighbour, PoolPlan, Route, RouteKind, Sysctl, VxlanTunnel};

const VX: &str = "vxlan.trellis";

fn desired() -> DesiredState {
    let mut d = DesiredState {
        mtu: 1450,
        vxlan: Some(VxlanTunnel {
            name: VX.into(),
            vni: 4096,
            port: 4789,
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            local: "192.168.1.1".parse().unwrap(),
            uplink: "eth0".into(),
            mtu: 1450,
            address: Some("10.244.1.0".parse().unwrap()),
        }),
        sysctls: vec![Sysctl { key: "net.ipv4.ip_forward".into(), value: "1".into() }],
        pools: vec![PoolPlan {
            name: "ipip-pool".into(),
            encapsulation: crate::model::Encapsulation::None,
            phase: None,
            disabled: false,
            error: Some("no ipip support in this kernel".into()),
        }],
        cni: CniConfig {
            path: "/tmp/unused/10-trellis.conflist".into(),
            conflist: serde_json::json!({}),
            unavailable: None,
        },
        ..Default::default()
    };
    let blackhole: IpNet = "10.244.1.0/26".parse().unwrap();
    d.routes.insert(blackhole, Route { dst: blackhole, kind: RouteKind::Blackhole });
    for n in [2u8, 3] {
        let ip: std::net::IpAddr = format!("10.244.{n}.0").parse().unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, n]);
        d.neighbours.push(Neighbour { dev: VX.into(), ip, mac });
        d.fdb.push(FdbEntry { dev: VX.into(), mac, dst: format!("192.168.1.{n}").parse().unwrap() });
        let dst: IpNet = format!("10.244.{n}.0/26").parse().unwrap();
        d.routes.insert(dst, Route { dst, kind: RouteKind::Unicast { gateway: ip, dev: VX.into(), onlink: true } });
    }
    d
}

use ipnet::IpNet;

struct Fixed(DesiredState);

impl DesiredSource<FakeKernel> for Fixed {
    async fn desired(&mut self, _kernel: &FakeKernel) -> Result<std::sync::Arc<DesiredState>, BoxError> {
        Ok(std::sync::Arc::new(self.0.clone()))
    }
}

#[derive(Default)]
struct FakeHost {
    nat: RefCell<Option<NatPlan>>,
    cni_writes: RefCell<usize>,
}

impl Host for FakeHost {
    fn sync_nat(&self, plan: &NatPlan) -> Result<bool, BoxError> {
        let changed = self.nat.borrow().as_ref() != Some(plan);
        *self.nat.borrow_mut() = Some(plan.clone());
        Ok(changed)
    }
    fn write_cni(&self, _config: &CniConfig) -> Result<bool, BoxError> {
        *self.cni_writes.borrow_mut() += 1;
        Ok(*self.cni_writes.borrow() == 1)
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

#[test]
fn pass_converges_then_is_idempotent() {
    rt().block_on(async {
        let kernel = FakeKernel::default();
        let host = FakeHost::default();
        let mut source = Fixed(desired());
        let first = pass(&kernel, &mut source, &host).await.unwrap();
        assert!(first.ok(), "{first:?}");
        assert_eq!(first.changes(), 9);
        let counts = first.counts();
        assert_eq!(counts.get("route+"), Some(&3));
        assert_eq!(counts.get("sysctl"), Some(&1));
        assert_eq!(counts.get("nat"), Some(&1));
        assert_eq!(counts.get("cni"), Some(&1));
        assert_eq!(first.pool_errors, vec![("ipip-pool".to_string(), "no ipip support in this kernel".to_string())]);
        assert_eq!(kernel.sysctls.borrow().get("net.ipv4.ip_forward").map(String::as_str), Some("1"));

        let second = pass(&kernel, &mut source, &host).await.unwrap();
        assert!(second.ok());
        assert_eq!(second.changes(), 0);
        assert!(second.counts().is_empty(), "{:?}", second.counts());
    });
}

#[test]
fn refused_change_is_reported_and_others_still_apply() {
    rt().block_on(async {
        let kernel = FakeKernel::default();
        *kernel.refuse.borrow_mut() =
            Some(Box::new(|c| matches!(c, Change::AddRoute(r) if r.kind == RouteKind::Blackhole)));
        let report = pass(&kernel, &mut Fixed(desired()), &FakeHost::default()).await.unwrap();
        assert!(!report.ok());
        assert_eq!(report.kernel.failed.len(), 1);
        assert_eq!(report.changes(), 8);
        assert_eq!(kernel.state.borrow().routes.len(), 2);
    });
}

struct Custom(DesiredState);

impl DesiredSource<FakeKernel> for Custom {
    async fn desired(&mut self, _kernel: &FakeKernel) -> Result<std::sync::Arc<DesiredState>, BoxError> {
        Ok(std::sync::Arc::new(self.0.clone()))
    }
    fn vxlan_device(&self) -> &str {
        "vx.custom"
    }
}

#[test]
fn configured_vxlan_name_is_read_when_no_pool_uses_vxlan() {
    rt().block_on(async {
        let kernel = FakeKernel::default();
        let mut with_vxlan = desired();
        with_vxlan.vxlan.as_mut().unwrap().name = "vx.custom".into();
        pass(&kernel, &mut Custom(with_vxlan), &FakeHost::default()).await.unwrap();
        // Pools moved to IPIP: the device must still be found to be removed.
        let report = pass(&kernel, &mut Custom(DesiredState::default()), &FakeHost::default()).await.unwrap();
        assert_eq!(*kernel.reads.borrow(), vec!["vx.custom", "vx.custom"]);
        assert_eq!(report.counts().get("link-"), Some(&1), "{:?}", report.counts());
        assert!(kernel.state.borrow().vxlan.is_none());
    });
}

type Passes = Rc<RefCell<Vec<(Trigger, usize)>>>;

/// Virtual time of each pass since the loop started.
type Times = Rc<RefCell<Vec<Duration>>>;

/// Runs the loop next to `driver` until the driver returns; the loop's passes are recorded.
async fn with_loop<F, Fut>(
    kernel: &FakeKernel,
    events: Option<mpsc::UnboundedReceiver<KernelEvent>>,
    driver: F,
) -> (Vec<(Trigger, usize)>, Vec<Duration>)
where
    F: FnOnce(Passes, Rc<Notify>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let passes: Passes = Rc::default();
    let pass_done = Rc::new(Notify::new());
    let stop = Notify::new();
    let host = FakeHost::default();
    let mut source = Fixed(desired());
    let options = LoopOptions {
        resync_interval: Duration::from_secs(3600),
        debounce: Duration::from_millis(100),
        retry_initial: Duration::from_secs(1),
    };
    let times: Times = Rc::default();
    let record = {
        let passes = passes.clone();
        let times = times.clone();
        let pass_done = pass_done.clone();
        let start = tokio::time::Instant::now();
        move |trigger: Trigger, result: &Result<PassReport, ReconcileError>| {
            let changes = result.as_ref().map(PassReport::changes).unwrap_or(usize::MAX);
            passes.borrow_mut().push((trigger, changes));
            times.borrow_mut().push(start.elapsed());
            pass_done.notify_one();
        }
    };
    let driven = async {
        driver(passes.clone(), pass_done.clone()).await;
        stop.notify_one();
    };
    tokio::join!(run(kernel, &mut source, &host, options, events, stop.notified(), record), driven);
    (passes.take(), times.take())
}

#[test]
fn kernel_event_triggers_a_pass_that_repairs_drift() {
    rt().block_on(async {
        let kernel = FakeKernel::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let k = &kernel;
        let (passes, _) = with_loop(&kernel, Some(rx), |_, pass_done| async move {
            pass_done.notified().await; // start pass
            // Drift: someone deletes a peer route; the kernel tells us (a burst of events).
            k.state.borrow_mut().routes.remove(&"10.244.2.0/26".parse().unwrap());
            for _ in 0..10 {
                tx.send(KernelEvent).unwrap();
            }
            pass_done.notified().await;
        })
        .await;
        // The burst collapsed into one pass, which re-added exactly the route.
        assert_eq!(passes, vec![(Trigger::Start, 9), (Trigger::KernelEvent, 1)]);
        assert_eq!(kernel.state.borrow().routes.len(), 3);
    });
}

#[test]
fn periodic_resync_repairs_drift_without_events() {
    rt().block_on(async {
        let kernel = FakeKernel::default();
        let k = &kernel;
        let (passes, _) = with_loop(&kernel, None, |_, pass_done| async move {
            pass_done.notified().await;
            k.state.borrow_mut().vxlan = None; // device deleted, nobody tells us
            pass_done.notified().await;
            pass_done.notified().await;
        })
        .await;
        assert_eq!(passes[0], (Trigger::Start, 9));
        assert_eq!(passes[1].0, Trigger::Resync);
        assert!(passes[1].1 >= 1, "{passes:?}");
        assert_eq!(passes[2], (Trigger::Resync, 0));
        assert!(kernel.state.borrow().vxlan.is_some());
    });
}

#[test]
fn failed_pass_is_retried_with_backoff_until_it_succeeds() {
    rt().block_on(async {
        let kernel = FakeKernel::default();
        // The blackhole route is refused three times, then accepted (e.g. a transient error).
        let refusals = Rc::new(RefCell::new(3));
        let r = refusals.clone();
        *kernel.refuse.borrow_mut() = Some(Box::new(move |c| {
            let refuse = matches!(c, Change::AddRoute(route) if route.kind == RouteKind::Blackhole) && *r.borrow() > 0;
            if refuse {
                *r.borrow_mut() -= 1;
            }
            refuse
        }));
        let (passes, times) = with_loop(&kernel, None, |passes, pass_done| async move {
            while passes.borrow().len() < 5 {
                pass_done.notified().await;
            }
        })
        .await;
        let triggers: Vec<Trigger> = passes.iter().map(|(t, _)| *t).collect();
        assert_eq!(triggers, [Trigger::Start, Trigger::Retry, Trigger::Retry, Trigger::Retry, Trigger::Resync]);
        assert_eq!(passes[3].1, 1, "the last retry applied the route");
        let secs: Vec<u64> = times.iter().map(Duration::as_secs).collect();
        // Backoff 1 s, 2 s, 4 s; then the regular resync an hour later.
        assert_eq!(secs, [0, 1, 3, 7, 3607]);
    });
}

#[test]
fn changes_that_do_not_stick_do_not_spin_the_loop_on_their_own_echo() {
    rt().block_on(async {
        let kernel = FakeKernel::default();
        let (tx, rx) = mpsc::unbounded_channel();
        // The blackhole is accepted but never reads back; every accepted change echoes an event.
        *kernel.forget.borrow_mut() =
            Some(Box::new(|c| matches!(c, Change::AddRoute(r) if r.kind == RouteKind::Blackhole)));
        *kernel.on_change.borrow_mut() = Some(Box::new(move || {
            let _ = tx.send(KernelEvent);
        }));
        let (passes, times) = with_loop(&kernel, Some(rx), |passes, pass_done| async move {
            while passes.borrow().len() < 6 {
                pass_done.notified().await;
            }
        })
        .await;
        let triggers: Vec<Trigger> = passes.iter().map(|(t, _)| *t).collect();
        // Start, the echo pass (same change again: detected), then backoff instead of echoes.
        assert_eq!(
            triggers,
            [
                Trigger::Start,
                Trigger::KernelEvent,
                Trigger::KernelEvent,
                Trigger::Retry,
                Trigger::Retry,
                Trigger::Retry
            ]
        );
        assert!(passes[1..].iter().all(|(_, n)| *n == 1), "{passes:?}");
        let millis: Vec<u128> = times.iter().map(Duration::as_millis).collect();
        assert_eq!(millis, [0, 100, 200, 1200, 3200, 7200]);
    });
}

#[test]
fn snapshot_source_probes_a_tunnel_kind_only_when_a_pool_needs_it_and_again_after_a_no() {
    use crate::kernel::caps::TunnelKind::{Ipip, Vxlan};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.yaml");
    let write = |mode: &str| {
        let node = "{name: node1, address: 10.0.1.11/24, uplink: eth0, uplinkMtu: 1500, blocks: [10.244.0.0/26]}";
        let pool = format!("{{name: p, cidr: 10.244.0.0/16, {mode}: Always}}");
        std::fs::write(&path, format!("node: {node}\npools: [{pool}]\n")).unwrap();
    };
    let kernel = FakeKernel::default();
    let mut source = SnapshotSource::detecting(path.clone());
    let rt = rt();
    let mut pool_error = || rt.block_on(source.desired(&kernel)).unwrap().pools[0].error.clone();

    // VXLAN only: ipip is never probed (no modprobe ipip); the "yes" for VXLAN is kept.
    write("vxlanMode");
    assert_eq!(pool_error(), None);
    assert_eq!(pool_error(), None);
    assert_eq!(*kernel.probes.borrow(), vec![Vxlan]);

    // An IPIP pool on a kernel without ipip: probed, and asked again on the next pass.
    write("ipipMode");
    assert!(pool_error().is_some_and(|e| e.contains("no ipip support")));
    assert!(pool_error().is_some());
    assert_eq!(*kernel.probes.borrow(), vec![Vxlan, Ipip, Ipip]);

    // The module appears: the next pass sees it, and keeps the answer.
    kernel.ipip.set(true);
    assert_eq!(pool_error(), None);
    assert_eq!(pool_error(), None);
    assert_eq!(*kernel.probes.borrow(), vec![Vxlan, Ipip, Ipip, Ipip]);
}

#[test]
fn snapshot_file_is_parsed_again_after_every_edit_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot.yaml");
    let write = |mtu: u32| {
        let node = "{name: node1, address: 10.0.1.11/24, uplink: eth0, uplinkMtu: 1500, blocks: [10.244.0.0/26]}";
        std::fs::write(&path, format!("node: {node}\nmtu: {mtu}\npools: []\n")).unwrap();
    };
    let mut source = SnapshotSource::detecting(path.clone());
    write(1400);
    assert_eq!(source.load().unwrap().mtu, Some(1400));
    // Unchanged file: served from what was parsed (marked here to tell it from a new parse).
    source.parsed.as_mut().unwrap().1.node.name = "parsed-before".into();
    assert_eq!(source.load().unwrap().node.name, "parsed-before");
    // An edit of the same size, at once, is read.
    write(1300);
    let again = source.load().unwrap();
    assert_eq!((again.mtu, again.node.name.as_str()), (Some(1300), "node1"));
    // A replacement by rename too.
    let other = dir.path().join("other.yaml");
    std::fs::copy(&path, &other).unwrap();
    source.parsed.as_mut().unwrap().1.node.name = "parsed-before".into();
    std::fs::rename(&other, &path).unwrap();
    assert_eq!(source.load().unwrap().node.name, "node1");
}
