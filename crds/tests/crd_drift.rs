//! The checked-in CRD YAML must be exactly what the types generate (`make crds` regenerates it),
//! in crds/yaml and in the Helm chart's crds/ folder alike.

use std::path::Path;

/// The files of `dir` (relative to the repository root) that differ from the types, and the
/// `.yaml` files there that no type generates.
fn stale_files(dir: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut stale = Vec::new();
    let all = trellis_api::crdgen::all();
    for (file, crd) in &all {
        let want = trellis_api::crdgen::render(crd).unwrap();
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if have != want {
            stale.push(file.to_string());
        }
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && !all.iter().any(|(f, _)| *f == name) {
            stale.push(format!("{name} (no CRD generates it)"));
        }
    }
    stale
}

#[test]
fn checked_in_crds_match_the_types() {
    let stale = stale_files("crds/yaml");
    assert!(stale.is_empty(), "crds/yaml is stale for {stale:?}: run `make crds` and commit the result");
}

#[test]
fn helm_chart_crds_match_the_types() {
    let stale = stale_files("charts/trellis/crds");
    assert!(stale.is_empty(), "charts/trellis/crds is stale for {stale:?}: run `make crds` and commit the result");
}

#[test]
fn every_kind_is_cluster_scoped_with_status() {
    for (file, crd) in trellis_api::crdgen::all() {
        assert_eq!(crd.spec.scope, "Cluster", "{file}");
        assert_eq!(crd.spec.group, "trellis.dev", "{file}");
        let v = &crd.spec.versions[0];
        // Policies are desired state only (as in Calico): nothing reports back into them.
        if file == "globalnetworkpolicies.yaml" {
            assert!(v.subresources.is_none(), "{file} has no status");
            continue;
        }
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "{file} has a status subresource");
    }
}
