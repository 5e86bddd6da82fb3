//! Calico users' manifests (docs/manifests/, apiVersion changed to trellis.dev/v1) read into the
//! Trellis types without losing a field, and mean what they mean in Calico. Admission of the
//! same files on a real API server is e2e/tests/admission.rs.

use std::path::PathBuf;

use serde_json::{Value, json};
use trellis_api::installation::{Encapsulation, InstallationPool, NatOutgoing, NodeAddressAutodetection};
use trellis_api::ip_pool::AllowedUse;
use trellis_api::{IPPool, Installation, defaults};

fn manifest(name: &str) -> (String, Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/manifests").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_yaml::from_str(&text).unwrap();
    (text, value)
}

#[test]
fn tigera_installation_keeps_every_field_and_reads_as_trellis() {
    let (text, value) = manifest("installation-tigera.yaml");
    let inst: Installation = serde_yaml::from_str(&text).unwrap();
    // Every field of the manifest is in the typed object (serde would drop unknown ones).
    assert_eq!(serde_json::to_value(&inst.spec).unwrap(), value["spec"]);
    assert!(inst.spec.network.is_none(), "the manifest uses Tigera's spelling");

    let network = inst.spec.network();
    assert_eq!(
        network.ip_pools.as_deref(),
        Some(
            &[InstallationPool {
                cidr: "10.244.0.0/16".into(),
                encapsulation: Some(Encapsulation::IpipCrossSubnet),
                nat_outgoing: Some(NatOutgoing::Enabled),
                block_size: Some(24),
                node_selector: Some("all()".into()),
            }][..]
        )
    );
    assert_eq!(network.mtu, Some(1440));
    assert_eq!(
        network.node_address_autodetection,
        Some(NodeAddressAutodetection { interface: Some("eth1".into()), ..Default::default() })
    );
    assert!(inst.spec.unsupported_fields().is_empty());

    // The pool the operator creates from it is Calico's IPIP CrossSubnet pool.
    let pool = defaults::ip_pool_from_installation(&network.ip_pools.unwrap()[0]);
    let pool = serde_json::to_value(&pool).unwrap();
    assert_eq!(pool["ipipMode"], "CrossSubnet");
    assert_eq!(pool["vxlanMode"], "Never");
    assert_eq!(pool["natOutgoing"], true);
    assert_eq!(pool["blockSize"], 24);
    assert_eq!(pool["allowedUses"], json!(["Workload", "Tunnel"]));
}

#[test]
fn calico_ippool_keeps_every_field() {
    let (text, value) = manifest("ippool-calico.yaml");
    let pool: IPPool = serde_yaml::from_str(&text).unwrap();
    assert_eq!(serde_json::to_value(&pool.spec).unwrap(), value["spec"]);
    assert_eq!(pool.spec.uses(), [AllowedUse::Workload, AllowedUse::Tunnel]);
    assert!(pool.spec.allows_workload() && pool.spec.allows_tunnel() && pool.spec.assigns_automatically());
    let selector = trellis_api::Selector::parse(pool.spec.node_selector.as_deref().unwrap()).unwrap();
    let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    assert!(selector.matches(&labels(&[("location", "rack1"), ("kubernetes.io/os", "linux")])));
    assert!(!selector.matches(&labels(&[("location", "rack2"), ("kubernetes.io/os", "linux")])));
    assert_eq!(pool.spec.unsupported_fields().len(), 1, "disableBGPExport: {:?}", pool.spec.unsupported_fields());
}
