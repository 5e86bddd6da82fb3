//! What the numbers were measured on.

use std::process::Command;

fn first_line_with(text: &str, key: &str) -> Option<String> {
    text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

/// CPU model, cores, kernel, iproute2, build profile, load at start and end of the run.
pub fn describe(profile: &str, load_at_start: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = first_line_with(&cpuinfo, "model name").unwrap_or_else(|| "?".to_string());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| first_line_with(&m, "MemTotal"))
        .unwrap_or_else(|| "?".to_string());
    let iproute = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "| | |\n|---|---|\n| CPU | {model} |\n| cores | {cores} |\n| memory | {memory} |\n| kernel | {} |\n| iproute2 \
         | {iproute} |\n| build profile | {profile} |\n| load average (1/5/15 min) at start | {load_at_start} |\n| load \
         average at end | {} |",
        kernel.trim(),
        load()
    )
}

pub fn load_now() -> String {
    load()
}
