//! Running the tools root tests drive (iproute2, nft, ping, tcpdump), with errors that carry
//! the command line, its exit status and both outputs.

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
