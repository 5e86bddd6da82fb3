//! Memory and CPU of a process, from /proc.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// (VmRSS, VmHWM) in KiB.
pub fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("pid {pid} gone"))?;
    let field = |key: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok())
            .with_context(|| format!("/proc/{pid}/status has no {key}"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU time the process used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("pid {pid} gone"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 12 and 13 after the state field.
    let ticks: u64 = fields.get(11).and_then(|u| u.parse::<u64>().ok()).context("utime")?
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).context("stime")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// CPU time `pid` used during `window` (slept through), as (time, share of one core).
pub fn cpu_over(pid: u32, window: Duration) -> Result<(Duration, f64)> {
    let before = cpu_time(pid)?;
    let start = Instant::now();
    std::thread::sleep(window);
    let used = cpu_time(pid)?.saturating_sub(before);
    Ok((used, used.as_secs_f64() / start.elapsed().as_secs_f64()))
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
