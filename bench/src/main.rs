//! `trellis-bench`: runs Trellis' benchmarks on this machine and writes the Markdown report
//! (`make bench` writes docs/benchmarks.md). Every figure is measured next to its reference
//! in the same run. `--smoke` runs each benchmark once at a small size: it proves they work
//! (CI), its numbers mean nothing. Needs root (network namespaces), iproute2, iperf3, the
//! test bed's API server (e2e/testbed), and the agent and operator binaries
//! (`TRELLIS_AGENT_BIN`, `TRELLIS_OPERATOR_BIN`; else debug builds are made).

mod cluster_model;
mod control_plane;
mod goodput;
mod machine;
mod memory;
mod policy;
mod procstat;
mod programming;
mod report;
mod simulated;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use report::Report;

#[derive(Parser)]
#[command(name = "trellis-bench", about = "Trellis benchmarks, each side by side with its reference")]
struct Cli {
    /// Small sizes, one repetition: proves every benchmark works; the numbers mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Where the Markdown report goes (stdout when absent).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these benchmarks (comma-separated): programming, memory, control-plane, goodput, policy.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Build profile of the binaries under test, for the report.
    #[arg(long, default_value = "release")]
    profile: String,
    /// Print the snapshot of node 0 with this many peers (YAML) and exit: for profiling the
    /// agent by hand on the benchmark's input.
    #[arg(long, value_name = "PEERS")]
    print_snapshot: Option<u32>,
    /// The command line that reproduces this report, for the report.
    #[arg(long, default_value = "make bench")]
    command: String,
}

fn wanted(cli: &Cli, name: &str) -> bool {
    cli.only.is_empty() || cli.only.iter().any(|o| o == name)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(peers) = cli.print_snapshot {
        let dir = std::env::temp_dir().join("trellis-bench-snapshot");
        return match serde_yaml::to_string(&cluster_model::snapshot(peers, &dir)) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let load = machine::load_now();
    let mut report = Report::default();
    let tag = "bn";
    let mut failures = Vec::new();
    if wanted(&cli, "programming") {
        let (sizes, reps, in_loop): (&[u32], usize, u32) =
            if cli.smoke { (&[50], 1, 50) } else { (&[1_000, 5_000, 20_000], 3, 5_000) };
        if let Err(e) = programming::run(&mut report, sizes, reps, in_loop, tag) {
            failures.push(format!("programming: {e:#}"));
        }
    }
    if wanted(&cli, "memory") {
        let (sizes, idle, nodes): (&[u32], u64, u32) =
            if cli.smoke { (&[50], 3, 20) } else { (&[1_000, 5_000], 30, 1_000) };
        if let Err(e) = memory::agent(&mut report, sizes, std::time::Duration::from_secs(idle), tag) {
            failures.push(format!("agent memory: {e:#}"));
        }
        if let Err(e) = memory::operator(&mut report, nodes) {
            failures.push(format!("operator memory: {e:#}"));
        }
    }
    if wanted(&cli, "control-plane") {
        let (agents, sims, patches, joins) = if cli.smoke { (2, 20, 2, 1) } else { (10, 1_000, 10, 3) };
        if let Err(e) = control_plane::run(&mut report, agents, sims, patches, joins, tag) {
            failures.push(format!("control plane: {e:#}"));
        }
    }
    if wanted(&cli, "goodput") {
        let (seconds, reps) = if cli.smoke { (1, 1) } else { (10, 3) };
        if let Err(e) = goodput::run(&mut report, seconds, reps, tag) {
            failures.push(format!("goodput: {e:#}"));
        }
    }
    if wanted(&cli, "policy") {
        let (pods, policies, nodes, reps) = if cli.smoke { (60, 30, 2, 1) } else { (1_000, 200, 10, 3) };
        if let Err(e) = policy::run(&mut report, pods, policies, nodes, reps, tag) {
            failures.push(format!("policy: {e:#}"));
        }
    }
    for f in &failures {
        eprintln!("bench FAILED: {f}");
    }
    if !failures.is_empty() {
        report.section("Benchmarks that failed in this run", failures.iter().map(|f| format!("* {f}\n")).collect());
    }
    let text = report.render(&machine::describe(&cli.profile, &load), &cli.command);
    match &cli.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
        None => print!("{text}"),
    }
    if failures.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
