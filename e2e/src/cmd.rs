//! Running the tools the test bed drives (iproute2, nft, ping, tcpdump, CNI plugins).
//!
//! The test bed shells out on purpose: iproute2 and friends are the reference for what the
//! kernel holds, independent of the netlink code under test, and their output is what an
//! operator would look at when a test fails.

use std::process::{Command, Output};

use crate::error::{Error, Result};

/// Renders a command line for messages.
pub fn render(program: &str, args: &[&str]) -> String {
    std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ")
}

/// Runs a command and returns its raw output whatever the exit status.
pub fn output(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program).args(args).output().map_err(|source| Error::Spawn { command: render(program, args), source })
}

/// Runs a command; fails with its stderr unless it exits 0. Returns stdout.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = output(program, args)?;
    check(render(program, args), out)
}

/// Turns a finished command into its stdout or an [`Error::Command`].
pub fn check(command: String, out: Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(Error::Command {
            command,
            status: out.status.to_string(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
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
