//! Writes the CRD manifests: `crdgen [DIR...]` (default `crds/yaml`), the same files into each
//! directory (`make crds` writes crds/yaml and the Helm chart's charts/trellis/crds), or
//! `crdgen -` to print all.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    if dirs.is_empty() {
        dirs.push("crds/yaml".to_string());
    }
    if dirs == ["-"] {
        for (_, crd) in trellis_api::crdgen::all() {
            print!("---\n{}", trellis_api::crdgen::render(&crd)?);
        }
        return Ok(());
    }
    for dir in dirs.iter().map(PathBuf::from) {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, crd) in trellis_api::crdgen::all() {
            let path = dir.join(file);
            std::fs::write(&path, trellis_api::crdgen::render(&crd)?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
