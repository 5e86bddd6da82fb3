//! Running the tools the test bed drives (iproute2, nft, ping, tcpdump, CNI plugins).
//!
//! The test bed shells out on purpose: iproute2 and friends are the reference for what the
//! kernel holds, independent of the netlink code under test, and their output is what an
//! operator would look at when a test fails.

use std::process::{Command, Output};

use crate::error::Result;

pub use trellis_testkit::cmd::render;

/// Runs a command and returns its raw output whatever the exit status.
pub fn output(program: &str, args: &[&str]) -> Result<Output> {
    Ok(trellis_testkit::cmd::output(program, args)?)
}

/// Runs a command; fails with its stderr unless it exits 0. Returns stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    Ok(trellis_testkit::cmd::run(program, args)?)
}

/// Turns a finished command into its stdout or an [`Error::Command`](crate::error::Error::Command).
pub fn check(command: String, out: Output) -> Result<String> {
    Ok(trellis_testkit::cmd::check(command, out)?)
}

/// `ip -n NS ARGS...`: iproute2 inside a named network namespace.
pub fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// `ip netns exec NS PROGRAM ARGS...`, status checked.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String> {
    let out = in_ns_output(ns, program, args)?;
    check(format!("[{ns}] {}", render(program, args)), out)
}

/// `ip netns exec NS PROGRAM ARGS...`, raw output.
pub fn in_ns_output(ns: &str, program: &str, args: &[&str]) -> Result<Output> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    output("ip", &full)
}

/// A `Command` that will run inside the namespace (for spawning long-running processes).
pub fn ns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}
