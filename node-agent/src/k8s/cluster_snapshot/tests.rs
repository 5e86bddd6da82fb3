use std::sync::Arc;

use kube::api::ObjectMeta;
use trellis_api::installation::NetworkSpec;
use trellis_api::{EncapMode, IPAMBlockSpec, IPPoolSpec, InstallationSpec, NodeNetworkSpec};

use super::*;

fn me() -> LocalIdentity {
    LocalIdentity { name: "node1".into(), address: "10.0.1.11/24".parse().unwrap(), uplink: "eth0".into() }
}

fn meta(name: &str, generation: Option<i64>) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), generation, ..Default::default() }
}

fn pool(name: &str, cidr: &str, generation: i64, f: impl FnOnce(&mut IPPoolSpec)) -> Arc<IPPool> {
    let mut spec = IPPoolSpec { cidr: cidr.into(), ..Default::default() };
    f(&mut spec);
    Arc::new(IPPool { metadata: meta(name, Some(generation)), spec, status: None })
}

fn block(cidr: &str, pool: &str, node: &str) -> Arc<IPAMBlock> {
    let name = cidr.replace(['.', '/'], "-");
    Arc::new(IPAMBlock {
        metadata: meta(&name, None),
        spec: IPAMBlockSpec { cidr: cidr.into(), pool: pool.into(), node: node.into() },
        status: None,
    })
}

fn nn(name: &str, address: &str, f: impl FnOnce(&mut NodeNetworkSpec)) -> Arc<NodeNetwork> {
    let mut spec = NodeNetworkSpec { address: address.into(), ..Default::default() };
    f(&mut spec);
    Arc::new(NodeNetwork { metadata: meta(name, Some(1)), spec, status: None })
}

fn installation(mtu: Option<i32>) -> Installation {
    Installation {
        metadata: meta("default", Some(1)),
        spec: InstallationSpec { network: Some(NetworkSpec { mtu, ..Default::default() }), ..Default::default() },
        status: None,
    }
}

fn settings() -> Settings {
    Settings {
        cni: CniSettings { conf_dir: "/tmp/n1/net.d".into(), ..Default::default() },
        vxlan: VxlanSettings::default(),
    }
}

#[test]
fn own_blocks_peers_pools_and_mtu_come_from_the_cluster() {
    let pools = vec![
        pool("b-pool", "10.245.0.0/16", 3, |s| {
            s.ipip_mode = Some(EncapMode::CrossSubnet);
            s.nat_outgoing = Some(true);
            s.block_size = Some(24);
        }),
        pool("a-pool", "10.244.0.0/16", 7, |s| {
            s.vxlan_mode = Some(EncapMode::Always);
            s.disabled = Some(true);
        }),
    ];
    let blocks = vec![
        block("10.244.1.64/26", "a-pool", "node1"),
        block("10.244.1.0/26", "a-pool", "node1"),
        block("10.244.2.0/26", "a-pool", "node2"),
        block("10.245.2.0/24", "b-pool", "node2"),
    ];
    let nns = vec![
        nn("node1", "10.0.1.11/24", |_| {}),
        nn("node2", "10.0.2.12/24", |s| {
            s.vtep_mac = Some("02:aa:bb:cc:dd:ee".into());
            s.tunnel_address = Some("10.244.2.0".into());
        }),
    ];
    let got =
        snapshot_from_cluster(&me(), &pools, &blocks, &nns, Some(&installation(Some(1400))), &settings()).unwrap();
    let s = &got.snapshot;
    assert_eq!(s.node.name, "node1");
    assert_eq!(s.node.address, "10.0.1.11/24".parse::<IpNet>().unwrap());
    assert_eq!(s.node.uplink, "eth0");
    assert_eq!(s.node.blocks, vec!["10.244.1.0/26".parse().unwrap(), "10.244.1.64/26".parse::<IpNet>().unwrap()]);
    assert_eq!(s.peers.len(), 1, "own NodeNetwork is not a peer");
    let peer = &s.peers[0];
    assert_eq!(peer.name, "node2");
    assert_eq!(peer.address, "10.0.2.12/24".parse::<IpNet>().unwrap());
    assert_eq!(peer.vtep_mac, Some("02:aa:bb:cc:dd:ee".parse().unwrap()));
    assert_eq!(peer.tunnel_address, Some("10.244.2.0".parse().unwrap()));
    assert_eq!(peer.blocks, vec!["10.244.2.0/26".parse().unwrap(), "10.245.2.0/24".parse::<IpNet>().unwrap()]);
    let names: Vec<&str> = s.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["a-pool", "b-pool"], "sorted by name");
    assert_eq!(s.pools[0].vxlan_mode, EncapMode::Always);
    assert!(s.pools[0].disabled && !s.pools[0].nat_outgoing);
    assert_eq!(
        (s.pools[1].ipip_mode, s.pools[1].nat_outgoing, s.pools[1].block_size),
        (EncapMode::CrossSubnet, true, Some(24))
    );
    assert_eq!(s.mtu, Some(1400));
    assert_eq!(s.cni.conf_dir, std::path::PathBuf::from("/tmp/n1/net.d"));
    assert_eq!(got.generations, BTreeMap::from([("a-pool".to_string(), 7), ("b-pool".to_string(), 3)]));
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
}

#[test]
fn peer_with_blocks_but_no_node_network_is_left_out_with_a_warning() {
    let pools = vec![pool("p", "10.244.0.0/16", 1, |_| {})];
    let blocks = vec![block("10.244.3.0/26", "p", "node3"), block("10.244.2.0/26", "p", "node2")];
    let nns = vec![nn("node2", "10.0.1.12/24", |_| {})];
    let got = snapshot_from_cluster(&me(), &pools, &blocks, &nns, None, &settings()).unwrap();
    assert_eq!(got.snapshot.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["node2"]);
    assert_eq!(got.warnings.len(), 1);
    assert!(got.warnings[0].contains("node3") && got.warnings[0].contains("no NodeNetwork"), "{:?}", got.warnings);
    assert_eq!(got.snapshot.mtu, None, "no Installation: computed MTU");
}

#[test]
fn peer_without_blocks_is_not_a_peer() {
    let pools = vec![pool("p", "10.244.0.0/16", 1, |_| {})];
    let nns = vec![nn("node2", "10.0.1.12/24", |_| {})];
    let got = snapshot_from_cluster(&me(), &pools, &[], &nns, None, &settings()).unwrap();
    assert!(got.snapshot.peers.is_empty());
    assert!(got.warnings.is_empty());
}

#[test]
fn malformed_peer_fields_leave_only_that_peer_out() {
    let pools = vec![pool("p", "10.244.0.0/16", 1, |_| {})];
    let blocks = vec![block("10.244.2.0/26", "p", "node2"), block("10.244.3.0/26", "p", "node3")];
    let nns =
        vec![nn("node2", "not-an-address", |_| {}), nn("node3", "10.0.1.13/24", |s| s.vtep_mac = Some("zz".into()))];
    let got = snapshot_from_cluster(&me(), &pools, &blocks, &nns, None, &settings()).unwrap();
    assert!(got.snapshot.peers.is_empty());
    assert_eq!(got.warnings.len(), 2, "{:?}", got.warnings);
    assert!(got.warnings[0].contains("node2") && got.warnings[1].contains("vtepMAC"), "{:?}", got.warnings);
}

#[test]
fn malformed_pool_or_own_block_is_an_error_not_a_partial_snapshot() {
    let bad_pool = vec![pool("p", "10.244.0.0/33", 1, |_| {})];
    assert_eq!(
        snapshot_from_cluster(&me(), &bad_pool, &[], &[], None, &settings()).unwrap_err(),
        ClusterSnapshotError::PoolCidr { pool: "p".into(), cidr: "10.244.0.0/33".into() }
    );
    let pools = vec![pool("p", "10.244.0.0/16", 1, |_| {})];
    let bad_block = vec![block("10.244.1.0/99", "p", "node1")];
    let err = snapshot_from_cluster(&me(), &pools, &bad_block, &[], None, &settings()).unwrap_err();
    assert!(matches!(err, ClusterSnapshotError::OwnBlockCidr { .. }), "{err}");
    let err = snapshot_from_cluster(&me(), &pools, &[], &[], Some(&installation(Some(-1))), &settings()).unwrap_err();
    assert_eq!(err, ClusterSnapshotError::Mtu(-1));
}

#[test]
fn the_snapshot_plans_routes_to_the_peer_blocks() {
    let pools = vec![pool("p", "10.244.0.0/16", 1, |s| s.vxlan_mode = Some(EncapMode::Always))];
    let blocks = vec![block("10.244.1.0/26", "p", "node1"), block("10.244.2.0/26", "p", "node2")];
    let nns = vec![nn("node2", "10.0.1.12/24", |_| {})];
    let mut got = snapshot_from_cluster(&me(), &pools, &blocks, &nns, None, &settings()).unwrap();
    got.snapshot.node.uplink_mtu = Some(1500);
    let desired = crate::plan::plan(&got.snapshot, crate::model::Capabilities::default()).unwrap();
    assert!(desired.routes.contains_key(&"10.244.2.0/26".parse::<IpNet>().unwrap()), "{:?}", desired.routes);
    assert!(desired.vxlan.is_some());
}

#[test]
fn mtu_is_read_from_tigeras_calico_network_spelling_too() {
    let tigera = Installation {
        metadata: meta("default", Some(1)),
        spec: InstallationSpec {
            calico_network: Some(NetworkSpec { mtu: Some(1410), ..Default::default() }),
            ..Default::default()
        },
        status: None,
    };
    let got = snapshot_from_cluster(&me(), &[], &[], &[], Some(&tigera), &settings()).unwrap();
    assert_eq!(got.snapshot.mtu, Some(1410));
}

fn with_status(pool: Arc<IPPool>, f: impl FnOnce(&mut trellis_api::IPPoolStatus)) -> Arc<IPPool> {
    let mut pool = (*pool).clone();
    let mut status = pool.status.take().unwrap_or_default();
    f(&mut status);
    pool.status = Some(status);
    Arc::new(pool)
}

fn condition(type_: &str, status: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "R".into(),
        message: String::new(),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        observed_generation: None,
    }
}

#[test]
fn allowed_uses_are_carried_into_the_snapshot() {
    use trellis_api::ip_pool::AllowedUse;
    let pools = vec![pool("p", "10.244.0.0/16", 1, |s| s.allowed_uses = Some(vec![AllowedUse::Workload]))];
    let got = snapshot_from_cluster(&me(), &pools, &[], &[], None, &settings()).unwrap();
    assert!(got.snapshot.pools[0].allows_workload());
    assert!(!got.snapshot.pools[0].allows_tunnel());
}

#[test]
fn a_pool_the_operator_found_overlapping_is_not_used() {
    let pools = vec![
        pool("old", "10.244.0.0/16", 1, |_| {}),
        with_status(pool("new", "10.244.0.0/24", 1, |_| {}), |s| s.conditions.push(condition("CIDROverlap", "True"))),
        with_status(pool("fine", "10.245.0.0/16", 1, |_| {}), |s| s.conditions.push(condition("CIDROverlap", "False"))),
    ];
    let got = snapshot_from_cluster(&me(), &pools, &[], &[], None, &settings()).unwrap();
    let names: Vec<&str> = got.snapshot.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["fine", "old"]);
    assert!(got.warnings.iter().any(|w| w.contains("IPPool new") && w.contains("CIDROverlap")), "{:?}", got.warnings);
}

#[test]
fn a_live_change_runs_the_settings_the_operator_says() {
    use crate::model::{Encapsulation, Phase};
    use crate::snapshot::PoolTransition;
    use trellis_api::ip_pool::{ActiveSettings, LIVE_CHANGE_ANNOTATION, Transition};
    let patched = || {
        pool("p", "10.244.0.0/16", 5, |s| {
            s.vxlan_mode = Some(EncapMode::Always);
            s.nat_outgoing = Some(true);
        })
    };
    let active = |s: &mut trellis_api::IPPoolStatus| {
        s.active = Some(ActiveSettings { generation: 4, encapsulation: "None".into(), nat_outgoing: false })
    };
    let pool_of = |p: Arc<IPPool>| {
        snapshot_from_cluster(&me(), &[p], &[], &[], None, &settings()).map(|c| c.snapshot.pools[0].clone())
    };

    // No operator has looked at the pool yet: the spec, at once.
    let p = pool_of(patched()).unwrap();
    assert_eq!((p.vxlan_mode, p.nat_outgoing, p.transition), (EncapMode::Always, true, None));

    // A newer spec waits at the active settings until the operator starts the change.
    let p = pool_of(with_status(patched(), active)).unwrap();
    assert_eq!((p.vxlan_mode, p.nat_outgoing, p.transition), (EncapMode::Never, false, None));

    // In a change: the target, the settings being left and the phase.
    let in_change = |phase: &str| {
        with_status(patched(), |s| {
            active(s);
            s.transition = Some(Transition {
                from: "None".into(),
                to: "VXLAN/CrossSubnet".into(),
                from_nat_outgoing: false,
                to_nat_outgoing: true,
                generation: 5,
                phase: phase.into(),
                ..Default::default()
            });
        })
    };
    let p = pool_of(in_change("Switch")).unwrap();
    assert_eq!((p.vxlan_mode, p.nat_outgoing), (EncapMode::CrossSubnet, true), "the transition's target");
    assert_eq!(
        p.transition,
        Some(PoolTransition { from: Encapsulation::None, from_nat_outgoing: false, phase: Phase::Switch })
    );
    let err = pool_of(in_change("Sideways")).unwrap_err();
    assert!(err.to_string().contains("Sideways"), "{err}");

    // Phases off: the spec, whatever the status says.
    let mut direct = (*in_change("Receive")).clone();
    direct.metadata.annotations = Some([(LIVE_CHANGE_ANNOTATION.to_string(), "direct".to_string())].into());
    let p = pool_of(Arc::new(direct)).unwrap();
    assert_eq!((p.vxlan_mode, p.nat_outgoing, p.transition), (EncapMode::Always, true, None));
}
