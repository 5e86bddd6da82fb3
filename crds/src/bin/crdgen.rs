//! Writes the CRD manifests: `crdgen [DIR]` (default `crds/yaml`), or `crdgen -` to print all.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "crds/yaml".to_string());
    if arg == "-" {
        for (_, crd) in trellis_api::crdgen::all() {
            print!("---\n{}", trellis_api::crdgen::render(&crd)?);
        }
        return Ok(());
    }
    let dir = PathBuf::from(arg);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, crd) in trellis_api::crdgen::all() {
        let path = dir.join(file);
        std::fs::write(&path, trellis_api::crdgen::render(&crd)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
