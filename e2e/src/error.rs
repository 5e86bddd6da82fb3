//! The test bed's one error type.
//!
//! Every variant carries what was observed (command line, exit status, output, last poll
//! result), because a failing end-to-end test is only useful if its message says what the
//! kernel actually did.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{command}` exited with {status}\nstdout: {stdout}\nstderr: {stderr}")]
    Command { command: String, status: String, stdout: String, stderr: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("gave up after {waited:?} waiting for {what}; last observation:\n{last}")]
    Timeout { what: String, waited: Duration, last: String },
    #[error("CNI plugin {plugin} {command} failed: {detail}")]
    Cni { plugin: String, command: String, detail: String },
    #[error("unexpected output from {what}: {detail}")]
    Parse { what: String, detail: String },
    #[error("left behind after teardown: {0}")]
    Leak(String),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The namespace helper's errors are the test bed's, variant for variant.
impl From<trellis_testkit::Error> for Error {
    fn from(e: trellis_testkit::Error) -> Self {
        match e {
            trellis_testkit::Error::Command { command, status, stdout, stderr } => {
                Error::Command { command, status, stdout, stderr }
            }
            trellis_testkit::Error::Spawn { command, source } => Error::Spawn { command, source },
            trellis_testkit::Error::Io { context, source } => Error::Io { context, source },
            trellis_testkit::Error::Setup(message) => Error::Setup(message),
        }
    }
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
}
