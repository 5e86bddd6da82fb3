//! The model is a leaf: no file in `src/model/` names another module of the crate, so the
//! layers built on it (plan, diff, kernel, reconcile, k8s) can never form a cycle through it.

use std::path::Path;

/// Every `crate::` or `super::super::` path in `source` that leaves the model (code and doc
/// links alike).
fn outside_references(source: &str) -> Vec<String> {
    let escapes = source.match_indices("super::super::").map(|(at, _)| at);
    source
        .match_indices("crate::")
        .map(|(at, _)| at)
        .chain(escapes)
        .map(|at| &source[at..])
        .filter(|rest| !rest.starts_with("crate::model"))
        .map(|rest| rest.split(|c: char| !(c.is_alphanumeric() || c == ':' || c == '_')).next().unwrap_or(rest))
        .map(str::to_string)
        .collect()
}

#[test]
fn model_files_import_nothing_outside_the_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/model");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") && path.file_name() != Some("leaf.rs".as_ref()) {
            let found = outside_references(&std::fs::read_to_string(&path).unwrap());
            assert!(found.is_empty(), "{} reaches out of the model: {found:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} model files found in {}", dir.display());
}

#[test]
fn outside_references_are_found_in_code_and_docs() {
    let source = "use crate::kernel::KernelState;\n/// See [`crate::diff::diff`].\nuse crate::model::Route;\nuse super::super::plan;";
    assert_eq!(outside_references(source), ["crate::kernel::KernelState", "crate::diff::diff", "super::super::plan"]);
}
