//! Every benchmark runs once at its smoke size and reports its figures. No figure is judged:
//! benchmarks are not timed tests (`make bench` produces the numbers).

use std::process::Command;

#[test]
#[ignore = "root: network namespaces, real agents and operator, private API servers, iperf3"]
fn every_benchmark_runs_at_smoke_size_and_reports_each_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_trellis-bench"))
        .args(["--smoke", "--profile", "debug", "--command", "cargo test -p trellis-bench"])
        .output()
        .expect("run trellis-bench");
    let report = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "trellis-bench --smoke failed:\n{log}\n{report}");
    for figure in [
        "first apply, 50 VXLAN peers",
        "no-op resync, 50 VXLAN peers",
        "no-op pass inside the running agent, 50 peers",
        "agent RSS, 50 peers",
        "agent CPU while nothing changes",
        "operator RSS, 20 nodes",
        "`kubectl patch ippool` → all 2 agents applied",
        "node join → all 2 agents route to it",
        "pod → pod TCP goodput, across subnets, VXLAN",
        "pod → pod TCP goodput, same subnet, direct route",
        "MTU end to end, across subnets, VXLAN",
    ] {
        assert!(report.contains(figure), "no row {figure:?} in the report:\n{report}");
    }
    assert!(report.contains("| kernel |"), "no machine description:\n{report}");
}
