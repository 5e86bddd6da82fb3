//! Root tests of the kernel layer against real netlink in fresh network namespaces.
//!
//! Each test gets its own namespace ([`trellis_testkit::Netns`]: deleted on drop, also on panic)
//! with a veth pair as the uplink, runs its body on a thread that `setns()`-es into it (the
//! agent's netlink socket binds to the creating thread's namespace) with a current-thread tokio
//! runtime ([`Netns::block_on`]), and checks the outcome with `ip -j` / `bridge -j`,
//! independently of the agent's own reader.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;
use trellis_agent::diff::diff;
use trellis_agent::kernel::netlink::{self, NetlinkKernel};
use trellis_agent::kernel::{Kernel, apply};
use trellis_agent::model::{Change, DesiredState, FdbEntry, MacAddr, Neighbour, Route, RouteKind, VxlanTunnel};
use trellis_agent::reconcile::{self, BoxError, DesiredSource, Host, LoopOptions, Trigger};
use trellis_testkit::Netns;

const VX: &str = "vxlan.trellis";

/// A fresh namespace for one test (deleted on drop, also on panic) with its uplink: a veth
/// pair (this host has no dummy module), node address 192.168.1.1/24.
fn node(tag: &str) -> Netns {
    let ns = Netns::unique(&format!("k-{tag}")).unwrap();
    for args in [
        &["link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"][..],
        &["addr", "add", "192.168.1.1/24", "dev", "eth0"],
        &["link", "set", "eth0p", "up"],
        &["link", "set", "eth0", "up"],
    ] {
        ns.ip(args).unwrap();
    }
    ns
}

/// How these tests read a namespace back: with iproute2, independently of the agent's reader.
trait Observe {
    fn ip_json(&self, args: &[&str]) -> Value;
    fn fdb(&self) -> Vec<(String, String)>;
    fn our_routes(&self) -> Vec<String>;
    fn neighbours(&self) -> Vec<(String, String)>;
    fn links(&self) -> Vec<String>;
}

impl Observe for Netns {
    /// `ip -j -d -n NS args...` parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j", "-d", "-n", self.name()];
        full.extend_from_slice(args);
        parse_json(&sh("ip", &full))
    }

    /// `bridge -j fdb show dev VX` in the namespace, as (mac, dst) pairs of permanent entries.
    fn fdb(&self) -> Vec<(String, String)> {
        let v = parse_json(&sh("ip", &["netns", "exec", self.name(), "bridge", "-j", "fdb", "show", "dev", VX]));
        let mut fdb: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["state"] == "permanent" && e.get("dst").is_some())
            .map(|e| (e["mac"].as_str().unwrap().to_string(), e["dst"].as_str().unwrap().to_string()))
            .collect();
        fdb.sort();
        fdb
    }

    /// Routes with proto 84 as "dst|gateway|dev|onlink|type".
    fn our_routes(&self) -> Vec<String> {
        let v = self.ip_json(&["route", "show", "proto", "84"]);
        let mut routes: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let onlink = r["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "onlink"));
                format!(
                    "{}|{}|{}|{}|{}",
                    r["dst"].as_str().unwrap(),
                    r["gateway"].as_str().unwrap_or(""),
                    r["dev"].as_str().unwrap_or(""),
                    onlink,
                    r["type"].as_str().unwrap_or("unicast")
                )
            })
            .collect();
        routes.sort();
        routes
    }

    /// Permanent neighbours on VX as (ip, mac).
    fn neighbours(&self) -> Vec<(String, String)> {
        let v = self.ip_json(&["neigh", "show", "dev", VX, "nud", "permanent"]);
        let mut n: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["dst"].as_str().unwrap().to_string(), e["lladdr"].as_str().unwrap().to_string()))
            .collect();
        n.sort();
        n
    }

    fn links(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect()
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn parse_json(out: &str) -> Value {
    if out.trim().is_empty() { Value::Array(vec![]) } else { serde_json::from_str(out).unwrap() }
}

fn mac(n: u8, salt: u8) -> MacAddr {
    MacAddr([2, 0, 0, 0, salt, n])
}

/// VXLAN desired state: own block blackholed, peers `(n, mac salt, block)`.
fn desired(vni: u32, peers: &[(u8, u8, &str)]) -> DesiredState {
    let mut d = DesiredState {
        mtu: 1450,
        vxlan: Some(VxlanTunnel {
            name: VX.into(),
            vni,
            port: 4789,
            mac: mac(1, 0),
            local: "192.168.1.1".parse().unwrap(),
            uplink: "eth0".into(),
            mtu: 1450,
            address: Some("10.244.1.0".parse().unwrap()),
        }),
        ..Default::default()
    };
    let own: IpNet = "10.244.1.0/26".parse().unwrap();
    d.routes.insert(own, Route { dst: own, kind: RouteKind::Blackhole });
    for &(n, salt, block) in peers {
        let ip: IpAddr = format!("10.244.{n}.0").parse().unwrap();
        d.neighbours.push(Neighbour { dev: VX.into(), ip, mac: mac(n, salt) });
        d.fdb.push(FdbEntry { dev: VX.into(), mac: mac(n, salt), dst: format!("192.168.1.{n}").parse().unwrap() });
        let dst: IpNet = block.parse().unwrap();
        d.routes.insert(dst, Route { dst, kind: RouteKind::Unicast { gateway: ip, dev: VX.into(), onlink: true } });
    }
    d.neighbours.sort();
    d.fdb.sort();
    d
}

const TWO_PEERS: &[(u8, u8, &str)] = &[(2, 0, "10.244.2.0/26"), (3, 0, "10.244.3.0/26")];

/// read → diff → apply; returns the applied changes, panics on kernel refusals.
async fn converge(kernel: &NetlinkKernel, d: &DesiredState) -> Vec<Change> {
    let current = kernel.read(reconcile::vxlan_device(d, VX)).await.unwrap();
    let changes = diff(&current, d);
    let report = apply(kernel, &changes).await;
    assert!(report.ok(), "{:#?}", report.failed);
    assert_eq!(report.applied, changes);
    changes
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn vxlan_state_applies_exactly_and_idempotently() {
    let ns = node("apply");
    let d = desired(4096, TWO_PEERS);
    let dd = d.clone();
    let (first, read_back, second) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let first = converge(&kernel, &dd).await;
        let read_back = kernel.read(VX).await.unwrap();
        let second = diff(&read_back, &dd);
        (first, read_back, second)
    });
    assert_eq!(first.len(), 9, "{first:#?}");
    assert!(second.is_empty(), "second pass must be empty: {second:#?}");
    // The read-back is the desired state, field by field.
    let vx = read_back.vxlan.as_ref().unwrap();
    assert_eq!((vx.vni, vx.port, vx.mtu, vx.mac, vx.up, vx.learning), (4096, 4789, 1450, mac(1, 0), true, false));
    assert_eq!(vx.local, Some("192.168.1.1".parse().unwrap()));
    assert_eq!(vx.uplink.as_deref(), Some("eth0"));
    assert_eq!(vx.addresses, vec!["10.244.1.0/32".parse::<IpNet>().unwrap()]);
    assert_eq!(read_back.routes, d.routes);
    assert_eq!(read_back.neighbours, d.neighbours);
    assert_eq!(read_back.fdb, d.fdb);

    // Independently, with iproute2.
    let link = &ns.ip_json(&["link", "show", VX])[0];
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(
        (info["id"].as_u64(), info["port"].as_u64(), info["learning"].as_bool()),
        (Some(4096), Some(4789), Some(false))
    );
    assert_eq!(info["local"], "192.168.1.1");
    assert_eq!(info["link"], "eth0");
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], "02:00:00:00:00:01");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(
        ns.our_routes(),
        vec![
            "10.244.1.0/26|||false|blackhole",
            "10.244.2.0/26|10.244.2.0|vxlan.trellis|true|unicast",
            "10.244.3.0/26|10.244.3.0|vxlan.trellis|true|unicast",
        ]
    );
    assert_eq!(
        ns.neighbours(),
        vec![("10.244.2.0".into(), "02:00:00:00:00:02".into()), ("10.244.3.0".into(), "02:00:00:00:00:03".into())]
    );
    assert_eq!(
        ns.fdb(),
        vec![("02:00:00:00:00:02".into(), "192.168.1.2".into()), ("02:00:00:00:00:03".into(), "192.168.1.3".into())]
    );
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn changed_and_removed_peers_touch_only_themselves() {
    let ns = node("peers");
    ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, TWO_PEERS)).await;
    });
    // Not ours: routes without our protocol, one of them inside the pod range.
    ns.ip(&["route", "add", "10.99.0.0/24", "via", "192.168.1.254", "dev", "eth0"]).unwrap();
    ns.ip(&["route", "add", "10.244.9.0/26", "via", "192.168.1.254", "dev", "eth0", "proto", "static"]).unwrap();
    let foreign_before = ns.ip(&["route", "show", "10.99.0.0/24"]).unwrap();

    // Peer 3 gets a new MAC and a new block.
    let changed = desired(4096, &[(2, 0, "10.244.2.0/26"), (3, 9, "10.244.3.64/26")]);
    let changes = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &changed).await
    });
    let kinds: Vec<&str> = changes.iter().map(Change::kind).collect();
    assert_eq!(kinds, ["neighbour~", "fdb+", "route+", "route-", "fdb-"], "{changes:#?}");
    assert_eq!(
        ns.fdb(),
        vec![("02:00:00:00:00:02".into(), "192.168.1.2".into()), ("02:00:00:00:09:03".into(), "192.168.1.3".into())]
    );
    assert_eq!(
        ns.neighbours(),
        vec![("10.244.2.0".into(), "02:00:00:00:00:02".into()), ("10.244.3.0".into(), "02:00:00:00:09:03".into())]
    );

    // Peer 2 leaves.
    let removed = desired(4096, &[(3, 9, "10.244.3.64/26")]);
    let (changes, rest) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let changes = converge(&kernel, &removed).await;
        (changes, diff(&kernel.read(VX).await.unwrap(), &removed))
    });
    assert!(rest.is_empty(), "{rest:#?}");
    assert_eq!(
        changes.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![
            "route del 10.244.2.0/26 via 10.244.2.0 dev vxlan.trellis onlink proto 84",
            "neigh del 10.244.2.0 dev vxlan.trellis",
            "fdb del 02:00:00:00:00:02 dev vxlan.trellis dst 192.168.1.2 self",
        ]
    );
    assert_eq!(
        ns.our_routes(),
        vec!["10.244.1.0/26|||false|blackhole", "10.244.3.64/26|10.244.3.0|vxlan.trellis|true|unicast"]
    );
    assert_eq!(ns.neighbours(), vec![("10.244.3.0".into(), "02:00:00:00:09:03".into())]);
    assert_eq!(ns.fdb(), vec![("02:00:00:00:09:03".into(), "192.168.1.3".into())]);
    // Foreign routes survive.
    assert_eq!(ns.ip(&["route", "show", "10.99.0.0/24"]).unwrap(), foreign_before);
    assert!(ns.ip(&["route", "show", "10.244.9.0/26"]).unwrap().contains("via 192.168.1.254"));
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn vni_change_recreates_the_device_and_its_peers() {
    let ns = node("vni");
    let d = desired(4097, TWO_PEERS);
    let (changes, rest) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, TWO_PEERS)).await;
        let changes = converge(&kernel, &d).await;
        (changes, diff(&kernel.read(VX).await.unwrap(), &d))
    });
    assert!(matches!(&changes[0], Change::DeleteVxlan { reason, .. } if reason.contains("vni 4096 -> 4097")));
    assert!(matches!(&changes[1], Change::CreateVxlan(t) if t.vni == 4097));
    assert!(rest.is_empty(), "{rest:#?}");
    assert_eq!(ns.ip_json(&["link", "show", VX])[0]["linkinfo"]["info_data"]["id"], 4097);
    assert_eq!(ns.our_routes().len(), 3);
    assert_eq!(ns.neighbours().len(), 2);
    assert_eq!(ns.fdb().len(), 2);
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn mtu_and_mac_change_in_place() {
    let ns = node("mtu");
    let mut d = desired(4096, TWO_PEERS);
    let t = d.vxlan.as_mut().unwrap();
    t.mtu = 1400;
    t.mac = mac(1, 7);
    ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, TWO_PEERS)).await;
    });
    let before = ns.ip_json(&["link", "show", VX])[0]["ifindex"].clone();
    let changes = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &d).await
    });
    assert_eq!(changes.len(), 1, "{changes:#?}");
    let link = &ns.ip_json(&["link", "show", VX])[0];
    assert_eq!(link["ifindex"], before, "same device");
    assert_eq!(link["mtu"], 1400);
    assert_eq!(link["address"], "02:00:00:00:07:01");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(ns.our_routes().len(), 3, "routes kept");
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn refused_route_rolls_back_the_new_peers_neighbour_and_fdb() {
    let ns = node("rollback");
    let report = ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, &[])).await;
        // Peer 4's route is not onlink and its gateway is on no subnet: the kernel refuses it.
        let mut d = desired(4096, &[(4, 0, "10.244.4.0/26")]);
        let dst: IpNet = "10.244.4.0/26".parse().unwrap();
        d.routes.insert(
            dst,
            Route {
                dst,
                kind: RouteKind::Unicast { gateway: "10.244.4.0".parse().unwrap(), dev: VX.into(), onlink: false },
            },
        );
        let changes = diff(&kernel.read(VX).await.unwrap(), &d);
        apply(&kernel, &changes).await
    });
    assert_eq!(report.failed.len(), 1, "{:#?}", report.failed);
    assert!(matches!(report.failed[0].change, Change::AddRoute(_)));
    assert_eq!(report.rolled_back.len(), 2, "{:#?}", report.rolled_back);
    assert!(ns.neighbours().is_empty());
    assert!(ns.fdb().is_empty());
    assert_eq!(ns.our_routes(), vec!["10.244.1.0/26|||false|blackhole"]);
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn refusals_in_a_batch_of_many_windows_are_reported_against_their_own_changes() {
    let ns = node("many");
    // 253 peers: 759 neighbour/FDB/route requests, several pipeline windows. Every 50th
    // peer's route is not onlink with a gateway on no subnet, so the kernel refuses it.
    let refused: Vec<u8> = (2..=254).filter(|n| n % 50 == 7).collect();
    let peers: Vec<(u8, u8, String)> = (2..=254).map(|n| (n, 0, format!("10.244.{n}.0/26"))).collect();
    let wanted = refused.clone();
    let report = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, &[])).await;
        let list: Vec<(u8, u8, &str)> = peers.iter().map(|(n, s, b)| (*n, *s, b.as_str())).collect();
        let mut d = desired(4096, &list);
        for n in wanted {
            let dst: IpNet = format!("10.244.{n}.0/26").parse().unwrap();
            let gateway = format!("10.244.{n}.0").parse().unwrap();
            d.routes.insert(dst, Route { dst, kind: RouteKind::Unicast { gateway, dev: VX.into(), onlink: false } });
        }
        let changes = diff(&kernel.read(VX).await.unwrap(), &d);
        apply(&kernel, &changes).await
    });
    let failed: Vec<String> = report
        .failed
        .iter()
        .map(|f| match &f.change {
            Change::AddRoute(r) => {
                assert!(f.error.errno().is_some(), "{}", f.error);
                r.dst.to_string()
            }
            other => panic!("unexpected failure {other}: {}", f.error),
        })
        .collect();
    let want: Vec<String> = refused.iter().map(|n| format!("10.244.{n}.0/26")).collect();
    assert_eq!(failed, want);
    assert_eq!(report.applied.len(), 253 * 3 - refused.len(), "every other change applied");
    assert_eq!(report.rolled_back.len(), 2 * refused.len(), "{:#?}", report.rolled_back);
    assert_eq!(ns.neighbours().len(), 253 - refused.len());
    assert_eq!(ns.fdb().len(), 253 - refused.len());
    assert_eq!(ns.our_routes().len(), 1 + 253 - refused.len());
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn rollback_keeps_the_neighbour_and_fdb_an_existing_route_still_uses() {
    let ns = node("rollback-keep");
    ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, TWO_PEERS)).await;
    });
    // Peer 2's neighbour and FDB entry vanish (drift); its block route stays.
    ns.ip(&["neigh", "del", "10.244.2.0", "dev", VX]).unwrap();
    sh(
        "ip",
        &["netns", "exec", ns.name(), "bridge", "fdb", "del", "02:00:00:00:00:02", "dev", VX, "dst", "192.168.1.2"],
    );
    let report = ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        // Peer 2 gets a second block whose route the kernel refuses (not onlink, gateway on no
        // subnet); the pass restores its neighbour and FDB entry for the first block too.
        let mut d = desired(4096, TWO_PEERS);
        let dst: IpNet = "10.244.2.64/26".parse().unwrap();
        d.routes.insert(
            dst,
            Route {
                dst,
                kind: RouteKind::Unicast { gateway: "10.244.2.0".parse().unwrap(), dev: VX.into(), onlink: false },
            },
        );
        let changes = diff(&kernel.read(VX).await.unwrap(), &d);
        let kinds: Vec<&str> = changes.iter().map(Change::kind).collect();
        assert_eq!(kinds, ["neighbour+", "fdb+", "route+"], "{changes:#?}");
        apply(&kernel, &changes).await
    });
    assert_eq!(report.failed.len(), 1, "{:#?}", report.failed);
    assert!(report.rolled_back.is_empty(), "{:#?}", report.rolled_back);
    // The existing route to peer 2 still has what it needs.
    assert_eq!(
        ns.neighbours(),
        vec![("10.244.2.0".into(), "02:00:00:00:00:02".into()), ("10.244.3.0".into(), "02:00:00:00:00:03".into())]
    );
    assert_eq!(
        ns.fdb(),
        vec![("02:00:00:00:00:02".into(), "192.168.1.2".into()), ("02:00:00:00:00:03".into(), "192.168.1.3".into())]
    );
    assert!(ns.our_routes().contains(&"10.244.2.0/26|10.244.2.0|vxlan.trellis|true|unicast".to_string()));
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn capabilities_match_what_the_kernel_can_create() {
    let ns = node("caps");
    // Independent check: can iproute2 create an ipip device here? ("File exists" = the fallback
    // tunl0 is there, i.e. yes.)
    let probe = Command::new("ip").args(["-n", ns.name(), "link", "add", "ipprobe", "type", "ipip"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&probe.stderr).to_string();
    let ipip_expected = probe.status.success() || stderr.contains("File exists");
    if probe.status.success() {
        ns.ip(&["link", "del", "ipprobe"]).unwrap();
    }
    let links_before = ns.links();
    let (caps, ensure) = ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        let caps = kernel.capabilities().await;
        let ensure = kernel.apply_one(&Change::EnsureTunl0).await.map_err(|e| e.to_string());
        (caps, ensure)
    });
    assert!(caps.vxlan);
    assert_eq!(caps.ipip, ipip_expected, "ip said: {stderr}");
    assert_eq!(ensure.is_ok(), ipip_expected, "{ensure:?}");
    if !ipip_expected {
        assert!(ensure.unwrap_err().contains("no ipip support"));
        assert_eq!(ns.links(), links_before, "probes leave nothing behind");
    }
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn sysctls_are_per_namespace() {
    let ns = node("sysctl");
    let host_value = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim().to_string();
    // The namespace starts with the opposite of the host's value (a new namespace inherits the
    // host's IPv4 settings, devconf_inherit_init_net=0, so it is set here, never assumed): then
    // reading the host instead would show, and so would writing it.
    let other = if host_value == "1" { "0" } else { "1" };
    ns.ip(&["link", "add", VX, "type", "vxlan", "id", "5", "dstport", "4789"]).unwrap();
    let set = |kv: &str| sh("ip", &["netns", "exec", ns.name(), "sysctl", "-qw", kv]);
    set(&format!("net.ipv4.ip_forward={other}"));
    set("net.ipv4.conf.vxlan/trellis.rp_filter=0");
    let (host, other_owned) = (host_value.clone(), other.to_string());
    let (before, to_host, again, back, per_device) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let before = kernel.sysctl_get("net.ipv4.ip_forward").unwrap();
        let to_host = kernel.sysctl_set("net.ipv4.ip_forward", &host).unwrap();
        let again = kernel.sysctl_set("net.ipv4.ip_forward", &host).unwrap();
        let back = kernel.sysctl_set("net.ipv4.ip_forward", &other_owned).unwrap();
        // sysctl(8) spelling of a device name with a dot.
        let per_device = kernel.sysctl_set("net.ipv4.conf.vxlan/trellis.rp_filter", "2").unwrap();
        (before, to_host, again, back, per_device)
    });
    assert_eq!(before, other, "the agent reads the namespace's value, not the host's ({host_value})");
    assert!(to_host && !again && back, "each change reported once: {to_host} {again} {back}");
    let cat = |path: &str| sh("ip", &["netns", "exec", ns.name(), "cat", path]).trim().to_string();
    assert_eq!(cat("/proc/sys/net/ipv4/ip_forward"), other);
    assert!(per_device);
    assert_eq!(cat("/proc/sys/net/ipv4/conf/vxlan.trellis/rp_filter"), "2");
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap().trim(), host_value, "host untouched");
}

struct Fixed(DesiredState);

impl DesiredSource<NetlinkKernel> for Fixed {
    async fn desired(&mut self, _kernel: &NetlinkKernel) -> Result<std::sync::Arc<DesiredState>, BoxError> {
        Ok(std::sync::Arc::new(self.0.clone()))
    }
}

struct NoHost;

impl Host for NoHost {
    fn sync_nat(&self, _plan: &trellis_agent::model::NatPlan) -> Result<bool, BoxError> {
        Ok(false)
    }
    fn write_cni(&self, _config: &trellis_agent::model::CniConfig) -> Result<bool, BoxError> {
        Ok(false)
    }
}

/// Polls `check` (every 50 ms, at most ~10 s) until it holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

type Passes = Vec<(Trigger, BTreeMap<&'static str, usize>)>;

#[test]
#[ignore = "root: netlink in network namespaces"]
fn reconcile_loop_repairs_out_of_band_deletions_on_kernel_events() {
    let ns = node("drift");
    let name = ns.name().to_string();
    let passes: Passes = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let events = netlink::subscribe().unwrap();
        let mut source = Fixed(desired(4096, TWO_PEERS));
        // Resync an hour away: within the test only kernel events can repair drift.
        let options = LoopOptions { resync_interval: Duration::from_secs(3600), ..LoopOptions::default() };
        let stop = tokio::sync::Notify::new();
        let passes: std::cell::RefCell<Passes> = Default::default();
        let record = |t: Trigger, r: &Result<reconcile::PassReport, reconcile::ReconcileError>| {
            passes.borrow_mut().push((t, r.as_ref().unwrap().counts()));
        };
        let ip = |args: &[&str]| {
            let mut full = vec!["-n", name.as_str()];
            full.extend_from_slice(args);
            Command::new("ip").args(&full).output().unwrap()
        };
        let has_route =
            |dst: &str| String::from_utf8_lossy(&ip(&["route", "show", "proto", "84"]).stdout).contains(dst);
        let permanent_neighbours = || {
            String::from_utf8_lossy(&ip(&["-j", "neigh", "show", "dev", VX, "nud", "permanent"]).stdout)
                .matches("lladdr")
                .count()
        };
        let driver = async {
            eventually("initial pass", || has_route("10.244.3.0/26") && permanent_neighbours() == 2).await;
            // A peer route disappears.
            assert!(ip(&["route", "del", "10.244.2.0/26", "proto", "84"]).status.success());
            eventually("route restored", || has_route("10.244.2.0/26")).await;
            // The whole VXLAN device disappears (with its neighbours, FDB and routes).
            assert!(ip(&["link", "del", VX]).status.success());
            eventually("device and routes restored", || {
                has_route("10.244.2.0/26") && has_route("10.244.3.0/26") && permanent_neighbours() == 2
            })
            .await;
            stop.notify_one();
        };
        tokio::join!(
            reconcile::run(&kernel, &mut source, &NoHost, options, Some(events), stop.notified(), record),
            driver
        );
        passes.take()
    });
    assert_eq!(passes[0].0, Trigger::Start);
    // Every repair came from a kernel event (resync is an hour away).
    assert!(passes[1..].iter().all(|(t, _)| *t == Trigger::KernelEvent), "{passes:?}");
    assert!(passes.iter().any(|(_, c)| c.get("route+") == Some(&1) && c.len() == 1), "{passes:?}");
    assert!(passes[1..].iter().any(|(_, c)| c.get("link+") == Some(&1)), "{passes:?}");
    assert_eq!(ns.fdb().len(), 2);
}

/// Needs a kernel with ipip (`make test-vm` runs it in the full-kernel VM).
#[test]
#[ignore = "vm: needs the ipip module (full-kernel VM)"]
fn vm_ipip_adopts_tunl0_and_only_downs_it_on_removal() {
    use trellis_agent::model::{IPIP_DEVICE, IpipTunnel};
    let ns = node("ipip");
    let mut d = DesiredState {
        mtu: 1480,
        ipip: Some(IpipTunnel { mtu: 1480, address: Some("10.244.1.0".parse().unwrap()) }),
        ..Default::default()
    };
    let own: IpNet = "10.244.1.0/26".parse().unwrap();
    d.routes.insert(own, Route { dst: own, kind: RouteKind::Blackhole });
    let peer: IpNet = "10.244.2.0/26".parse().unwrap();
    d.routes.insert(
        peer,
        Route {
            dst: peer,
            kind: RouteKind::Unicast { gateway: "192.168.1.2".parse().unwrap(), dev: IPIP_DEVICE.into(), onlink: true },
        },
    );
    let (caps, rest) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let caps = kernel.capabilities().await;
        converge(&kernel, &d).await;
        (caps, diff(&kernel.read(VX).await.unwrap(), &d))
    });
    assert!(caps.ipip, "{caps:?}");
    assert!(rest.is_empty(), "{rest:#?}");
    let link = &ns.ip_json(&["link", "show", IPIP_DEVICE])[0];
    assert_eq!(link["mtu"], 1480);
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert!(
        ns.ip(&["addr", "show", "dev", IPIP_DEVICE]).unwrap().contains("inet 10.244.1.0/32 scope global tunl0:trellis")
    );
    assert_eq!(link["ifalias"], "trellis", "adopted tunl0 carries the owner mark");
    assert_eq!(
        ns.our_routes(),
        vec!["10.244.1.0/26|||false|blackhole", "10.244.2.0/26|192.168.1.2|tunl0|true|unicast"]
    );

    // Removal: tunl0 stays (the kernel's fallback device cannot be deleted), down, without our address.
    ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &DesiredState::default()).await;
    });
    let link = &ns.ip_json(&["link", "show", IPIP_DEVICE])[0];
    assert!(!link["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{link}");
    assert!(!ns.ip(&["addr", "show", "dev", IPIP_DEVICE]).unwrap().contains("10.244.1.0"));
    assert!(ns.our_routes().is_empty());
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn ipv6_pod_network_over_vxlan_reads_back_exactly() {
    let ns = node("v6");
    // Dual stack: IPv4 peers as usual plus an IPv6 pool, tunnelled over the IPv4 underlay.
    let mut d = desired(4096, TWO_PEERS);
    let own6: IpNet = "fd00:10:244:1::/122".parse().unwrap();
    d.routes.insert(own6, Route { dst: own6, kind: RouteKind::Blackhole });
    let gw6: IpAddr = "fd00:10:244:2::".parse().unwrap();
    d.neighbours.push(Neighbour { dev: VX.into(), ip: gw6, mac: mac(2, 0) });
    d.neighbours.sort();
    let peer6: IpNet = "fd00:10:244:2::/122".parse().unwrap();
    d.routes
        .insert(peer6, Route { dst: peer6, kind: RouteKind::Unicast { gateway: gw6, dev: VX.into(), onlink: true } });
    let dd = d.clone();
    let (rest, read_back) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &dd).await;
        let read_back = kernel.read(VX).await.unwrap();
        (diff(&read_back, &dd), read_back)
    });
    assert!(rest.is_empty(), "{rest:#?}");
    assert_eq!(read_back.routes, d.routes);
    assert_eq!(read_back.neighbours, d.neighbours);
    let routes6 = ns.ip(&["-6", "route", "show", "proto", "84"]).unwrap();
    assert!(routes6.contains("fd00:10:244:2::/122 via fd00:10:244:2:: dev vxlan.trellis"), "{routes6}");
    assert!(routes6.contains("blackhole fd00:10:244:1::/122"), "{routes6}");
    let neigh6 = ns.ip(&["-6", "neigh", "show", "dev", VX, "nud", "permanent"]).unwrap();
    assert!(neigh6.contains("fd00:10:244:2:: lladdr 02:00:00:00:00:02"), "{neigh6}");

    // Removing the IPv6 pool removes exactly its route, neighbour and blackhole.
    let v4_only = desired(4096, TWO_PEERS);
    let changes = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &v4_only).await
    });
    let kinds: Vec<&str> = changes.iter().map(Change::kind).collect();
    assert_eq!(kinds, ["route-", "route-", "neighbour-"], "{changes:#?}");
    assert!(ns.ip(&["-6", "route", "show", "proto", "84"]).unwrap().trim().is_empty());
    assert_eq!(ns.our_routes().len(), 3);
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn renamed_vxlan_device_replaces_the_old_one_and_foreign_devices_survive() {
    let ns = node("rename");
    ns.ip(&["link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "8472", "dev", "eth0"]).unwrap();
    let mut renamed = desired(4096, TWO_PEERS);
    let rename = |dev: &mut String| *dev = "vx.renamed".into();
    rename(&mut renamed.vxlan.as_mut().unwrap().name);
    renamed.neighbours.iter_mut().for_each(|n| rename(&mut n.dev));
    renamed.fdb.iter_mut().for_each(|f| rename(&mut f.dev));
    for route in renamed.routes.values_mut() {
        if let RouteKind::Unicast { dev, .. } = &mut route.kind {
            rename(dev);
        }
    }
    ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, TWO_PEERS)).await;
    });
    assert_eq!(ns.ip_json(&["link", "show", VX])[0]["ifalias"], "trellis", "our device carries the owner mark");
    // A restarted agent (new kernel handle) with the new name.
    let r = renamed.clone();
    let (changes, rest) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let changes = converge(&kernel, &r).await;
        (changes, diff(&kernel.read("vx.renamed").await.unwrap(), &r))
    });
    assert!(rest.is_empty(), "{rest:#?}");
    // The old device goes first (the kernel refuses a second device with VNI 4096 on port 4789).
    assert!(matches!(&changes[0], Change::DeleteVxlan { name, .. } if name == VX), "{changes:#?}");
    assert!(matches!(&changes[1], Change::CreateVxlan(t) if t.name == "vx.renamed"), "{changes:#?}");
    let links = ns.links();
    assert!(links.contains(&"vx.renamed".to_string()) && !links.contains(&VX.to_string()), "{links:?}");
    assert!(links.contains(&"flannel.1".to_string()), "foreign VXLAN device untouched: {links:?}");
    assert_eq!(
        ns.our_routes(),
        vec![
            "10.244.1.0/26|||false|blackhole",
            "10.244.2.0/26|10.244.2.0|vx.renamed|true|unicast",
            "10.244.3.0/26|10.244.3.0|vx.renamed|true|unicast",
        ]
    );
}

/// Routes with proto 84 in every table, both families, as "dst type table".
fn proto_84_everywhere(ns: &Netns) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        for r in ns.ip_json(&[family, "route", "show", "table", "all", "proto", "84"]).as_array().unwrap() {
            out.push(format!(
                "{} {} {}",
                r["dst"].as_str().unwrap(),
                r["type"].as_str().unwrap_or("unicast"),
                r["table"].as_str().unwrap_or("main")
            ));
        }
    }
    out.sort();
    out
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn stray_proto_84_routes_of_every_shape_and_table_are_swept() {
    let ns = node("sweep");
    ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &desired(4096, TWO_PEERS)).await;
    });
    // Stamped as ours, in shapes the planner never produces.
    let strays: &[&[&str]] = &[
        &["route", "add", "10.50.0.0/24", "dev", "eth0", "proto", "84"],
        &["route", "add", "unreachable", "10.51.0.0/24", "proto", "84"],
        &["route", "add", "prohibit", "10.52.0.0/24", "proto", "84"],
        &[
            "route",
            "add",
            "10.53.0.0/24",
            "proto",
            "84",
            "nexthop",
            "via",
            "192.168.1.2",
            "dev",
            "eth0",
            "nexthop",
            "via",
            "192.168.1.3",
            "dev",
            "eth0",
        ],
        &["route", "add", "10.54.0.0/24", "via", "192.168.1.2", "dev", "eth0", "table", "100", "proto", "84"],
        &["route", "add", "blackhole", "10.55.0.0/24", "table", "1000", "proto", "84"],
        // A second route to one of our destinations, with a metric.
        &["route", "add", "10.244.2.0/26", "via", "192.168.1.2", "dev", "eth0", "proto", "84", "metric", "50"],
        &["-6", "route", "add", "unreachable", "fd00:99::/64", "proto", "84"],
        &["-6", "route", "add", "fd00:98::/64", "dev", "eth0", "table", "200", "proto", "84"],
    ];
    for args in strays {
        ns.ip(args).unwrap();
    }
    // Not ours: same shapes without our protocol.
    ns.ip(&["route", "add", "unreachable", "10.60.0.0/24"]).unwrap();
    ns.ip(&["route", "add", "10.61.0.0/24", "via", "192.168.1.2", "dev", "eth0", "table", "100", "proto", "static"])
        .unwrap();
    ns.ip(&["-6", "route", "add", "unreachable", "fd00:97::/64", "proto", "static"]).unwrap();
    assert_eq!(proto_84_everywhere(&ns).len(), 3 + strays.len());

    let d = desired(4096, TWO_PEERS);
    let (changes, rest) = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let changes = converge(&kernel, &d).await;
        (changes, diff(&kernel.read(VX).await.unwrap(), &d))
    });
    assert!(rest.is_empty(), "{rest:#?}");
    assert_eq!(changes.len(), strays.len(), "{changes:#?}");
    assert!(changes.iter().all(|c| c.kind() == "route-"), "{changes:#?}");
    assert_eq!(
        proto_84_everywhere(&ns),
        vec!["10.244.1.0/26 blackhole main", "10.244.2.0/26 unicast main", "10.244.3.0/26 unicast main"]
    );
    assert_eq!(
        ns.our_routes(),
        vec![
            "10.244.1.0/26|||false|blackhole",
            "10.244.2.0/26|10.244.2.0|vxlan.trellis|true|unicast",
            "10.244.3.0/26|10.244.3.0|vxlan.trellis|true|unicast",
        ]
    );
    assert!(ns.ip(&["route", "show", "10.60.0.0/24"]).unwrap().contains("unreachable"));
    assert!(ns.ip(&["route", "show", "table", "100"]).unwrap().contains("10.61.0.0/24 via 192.168.1.2"));
    assert!(ns.ip(&["-6", "route", "show", "fd00:97::/64"]).unwrap().contains("unreachable"));
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn a_foreign_route_to_a_desired_destination_is_reported_not_taken_over() {
    let ns = node("foreign");
    // Somebody else's route to what will be peer 3's block, and to peer 2's (different metric).
    ns.ip(&["route", "add", "10.244.3.0/26", "via", "192.168.1.254", "dev", "eth0", "proto", "static"]).unwrap();
    ns.ip(&["route", "add", "10.244.2.0/26", "via", "192.168.1.253", "dev", "eth0", "metric", "100"]).unwrap();
    let report = ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        let mut source = Fixed(desired(4096, TWO_PEERS));
        reconcile::pass(&kernel, &mut source, &NoHost).await.unwrap()
    });
    assert!(!report.ok());
    let failed: Vec<String> = report.kernel.failed.iter().map(|f| format!("{}: {}", f.change, f.error)).collect();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert!(failed[0].starts_with("route replace 10.244.2.0/26") && failed[0].contains("proto boot"), "{failed:#?}");
    assert!(failed[1].starts_with("route replace 10.244.3.0/26") && failed[1].contains("proto static"), "{failed:#?}");
    assert!(failed.iter().all(|f| f.contains("does not take it over")), "{failed:#?}");
    // The foreign routes are as they were; ours (the blackhole) went in.
    assert_eq!(
        ns.ip(&["route", "show", "10.244.3.0/26"]).unwrap().trim(),
        "10.244.3.0/26 via 192.168.1.254 dev eth0 proto static"
    );
    assert_eq!(
        ns.ip(&["route", "show", "10.244.2.0/26"]).unwrap().trim(),
        "10.244.2.0/26 via 192.168.1.253 dev eth0 metric 100"
    );
    assert_eq!(ns.our_routes(), vec!["10.244.1.0/26|||false|blackhole"]);
    // The peers whose only route was held back were rolled back: nothing half-added.
    assert!(ns.neighbours().is_empty() && ns.fdb().is_empty(), "{:?} {:?}", ns.neighbours(), ns.fdb());
}

/// Needs a kernel with ipip (`make test-vm` runs it in the full-kernel VM).
#[test]
#[ignore = "vm: needs the ipip module (full-kernel VM)"]
fn vm_foreign_tunl0_state_and_addresses_are_left_alone() {
    use trellis_agent::model::{IPIP_DEVICE, IpipTunnel};
    let ns = node("tunl0own");
    // Loading the module gives every namespace its tunl0.
    sh("modprobe", &["ipip"]);
    // Somebody else uses tunl0: up, with their address.
    ns.ip(&["addr", "add", "10.99.0.1/32", "dev", IPIP_DEVICE]).unwrap();
    ns.ip(&["link", "set", IPIP_DEVICE, "up"]).unwrap();
    let tunl0_up = |ns: &Netns| {
        ns.ip_json(&["link", "show", IPIP_DEVICE])[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP")
    };
    let addresses = |ns: &Netns| ns.ip(&["-4", "addr", "show", "dev", IPIP_DEVICE]).unwrap();

    // No IPIP pool: nothing on tunl0 is touched.
    let changes = ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &DesiredState::default()).await
    });
    assert!(changes.is_empty(), "{changes:#?}");
    assert!(tunl0_up(&ns));
    assert!(addresses(&ns).contains("inet 10.99.0.1/32"), "{}", addresses(&ns));

    // An IPIP pool: adopted (marked), our labelled address next to theirs.
    let d = DesiredState {
        mtu: 1480,
        ipip: Some(IpipTunnel { mtu: 1480, address: Some("10.244.1.0".parse().unwrap()) }),
        ..Default::default()
    };
    ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &d).await;
    });
    assert_eq!(ns.ip_json(&["link", "show", IPIP_DEVICE])[0]["ifalias"], "trellis");
    let both = addresses(&ns);
    assert!(
        both.contains("inet 10.99.0.1/32") && both.contains("inet 10.244.1.0/32 scope global tunl0:trellis"),
        "{both}"
    );

    // The pool goes: exactly our address and our mark go, and the adopted device is set down.
    ns.block_on(|| async {
        let kernel = NetlinkKernel::new().unwrap();
        converge(&kernel, &DesiredState::default()).await;
    });
    let after = addresses(&ns);
    assert!(after.contains("inet 10.99.0.1/32") && !after.contains("10.244.1.0"), "{after}");
    assert!(!tunl0_up(&ns));
    assert!(ns.ip_json(&["link", "show", IPIP_DEVICE])[0].get("ifalias").is_none());
}

#[test]
#[ignore = "root: netlink in network namespaces"]
fn reconcile_loop_repairs_neighbour_fdb_address_and_nft_drift_on_events() {
    let ns = node("drift2");
    let name = ns.name().to_string();
    let passes: Passes = ns.block_on(move || async move {
        let kernel = NetlinkKernel::new().unwrap();
        let events = netlink::subscribe().unwrap();
        let mut d = desired(4096, TWO_PEERS);
        let pools: Vec<IpNet> = vec!["10.244.0.0/16".parse().unwrap()];
        d.nat = trellis_agent::model::NatPlan { nat_sources: pools.clone(), all_pools: pools };
        let mut source = Fixed(d);
        // Resync five minutes away: within the test only notifications can repair drift.
        let options = LoopOptions { resync_interval: Duration::from_secs(300), ..LoopOptions::default() };
        let stop = tokio::sync::Notify::new();
        let passes: std::cell::RefCell<Passes> = Default::default();
        let record = |t: Trigger, r: &Result<reconcile::PassReport, reconcile::ReconcileError>| {
            passes.borrow_mut().push((t, r.as_ref().unwrap().counts()));
        };
        // `cmd args` in the namespace: (success, stdout).
        let exec = |cmd: &str, args: &[&str]| {
            let mut full = vec!["netns", "exec", name.as_str(), cmd];
            full.extend_from_slice(args);
            let out = Command::new("ip").args(&full).output().unwrap();
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
        };
        let run = |cmd: &str, args: &[&str]| assert!(exec(cmd, args).0, "{cmd} {args:?}");
        let neighbour = |ip: &str| exec("ip", &["neigh", "show", ip, "dev", VX, "nud", "permanent"]).1;
        let fdb = || exec("bridge", &["fdb", "show", "dev", VX]).1;
        let address = || exec("ip", &["-4", "addr", "show", "dev", VX]).1;
        let nft_table = || exec("nft", &["list", "table", "inet", "trellis"]).0;
        let driver = async {
            eventually("initial pass", || {
                neighbour("10.244.3.0").contains("lladdr") && fdb().contains("dst 192.168.1.3") && nft_table()
            })
            .await;
            // A permanent neighbour is deleted, another changed.
            run("ip", &["neigh", "del", "10.244.2.0", "dev", VX]);
            eventually("neighbour restored", || neighbour("10.244.2.0").contains("02:00:00:00:00:02")).await;
            run(
                "ip",
                &["neigh", "replace", "10.244.3.0", "lladdr", "02:00:00:00:99:99", "dev", VX, "nud", "permanent"],
            );
            eventually("neighbour corrected", || neighbour("10.244.3.0").contains("02:00:00:00:00:03")).await;
            // An FDB entry is deleted.
            run("bridge", &["fdb", "del", "02:00:00:00:00:03", "dev", VX, "dst", "192.168.1.3"]);
            eventually("fdb restored", || fdb().contains("02:00:00:00:00:03 dst 192.168.1.3")).await;
            // The tunnel address is deleted.
            run("ip", &["addr", "del", "10.244.1.0/32", "dev", VX]);
            eventually("address restored", || address().contains("inet 10.244.1.0/32")).await;
            // The NAT table is deleted.
            run("nft", &["delete", "table", "inet", "trellis"]);
            eventually("nft table restored", nft_table).await;
            stop.notify_one();
        };
        tokio::join!(
            reconcile::run(
                &kernel,
                &mut source,
                &reconcile::SystemHost,
                options,
                Some(events),
                stop.notified(),
                record
            ),
            driver
        );
        passes.take()
    });
    assert_eq!(passes[0].0, Trigger::Start);
    // Every repair came from a notification (no resync, no retry).
    assert!(passes[1..].iter().all(|(t, _)| *t == Trigger::KernelEvent), "{passes:?}");
    for kind in ["neighbour+", "neighbour~", "fdb+", "address+", "nat"] {
        assert!(passes[1..].iter().any(|(_, c)| c.contains_key(kind)), "no event-driven {kind} repair: {passes:?}");
    }
}
