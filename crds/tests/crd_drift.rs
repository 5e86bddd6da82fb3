//! The checked-in CRD YAML must be exactly what the types generate (`make crds` regenerates it).

use std::path::Path;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("yaml");
    let mut stale = Vec::new();
    for (file, crd) in trellis_api::crdgen::all() {
        let want = trellis_api::crdgen::render(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if have != want {
            stale.push(file);
        }
    }
    assert!(stale.is_empty(), "crds/yaml is stale for {stale:?}: run `make crds` and commit the result");
}

#[test]
fn every_kind_is_cluster_scoped_with_status() {
    for (file, crd) in trellis_api::crdgen::all() {
        assert_eq!(crd.spec.scope, "Cluster", "{file}");
        assert_eq!(crd.spec.group, "trellis.dev", "{file}");
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{file} has a status subresource");
    }
}
