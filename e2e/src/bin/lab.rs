//! `make lab`: a 3-node Trellis cluster on this machine and the classic pod-network
//! experiments on it (see `trellis_e2e::lab`). Exit 0 only if every experiment is ok.
//!
//! ```text
//! lab [--keep] [--no-vm]   run the lab (as root); --keep leaves the cluster up until Ctrl-C
//! lab down                 remove whatever a killed or kept lab left (make lab-down)
//! lab ipip-vm              (inside the kernel VM) the IPIP chapter's cluster
//! ```

use std::process::ExitCode;

use trellis_e2e::lab::{self, Options, cleanup, ipip_vm};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("down") => cleanup::down().map(|_| true),
        Some("ipip-vm") => ipip_vm::in_vm().map(|_| true),
        _ => {
            if let Some(bad) = args.iter().find(|a| !matches!(a.as_str(), "--keep" | "--no-vm")) {
                eprintln!("lab: unknown argument {bad} (lab [--keep] [--no-vm] | lab down)");
                return ExitCode::from(2);
            }
            let keep = args.iter().any(|a| a == "--keep");
            let vm = !args.iter().any(|a| a == "--no-vm");
            lab::run(Options { keep, vm })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            cleanup::hold_if_interrupted();
            eprintln!("lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
