//! What went wrong running a tool or setting up or using a namespace.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{command}` exited with {status}\nstdout: {stdout}\nstderr: {stderr}")]
    Command { command: String, status: String, stdout: String, stderr: String },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
