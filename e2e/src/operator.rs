//! Running the real `trellis-operator` binary against the test bed's API server.
//!
//! Each [`OperatorProcess`] is one replica: its own identity, its log in a temporary file
//! (printed when a test fails), its health address on a free loopback port, killed (SIGKILL,
//! like a crashed pod) or stopped (SIGTERM, like a rolling update) by the test, and killed when
//! dropped. The binary is the workspace's own build: `TRELLIS_OPERATOR_BIN` if set, otherwise
//! `cargo build -p trellis-operator` runs once per test process.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Path of the operator binary (see the module header).
pub fn binary() -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    if let Some(path) = std::env::var_os("TRELLIS_OPERATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    BUILT.get_or_init(build).clone().map_err(Error::Setup)
}

fn build() -> std::result::Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "-p", "trellis-operator", "--bin", "trellis-operator"])
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run {cargo} build -p trellis-operator: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p trellis-operator failed: {status}"));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("trellis-operator");
    if bin.exists() { Ok(bin) } else { Err(format!("built, but {} does not exist", bin.display())) }
}

/// A free loopback port (bound and released; the operator binds it right after).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("binding a free port", e))?;
    Ok(l.local_addr().map_err(|e| Error::io("reading the bound port", e))?.port())
}

/// One running operator replica.
pub struct OperatorProcess {
    pub identity: String,
    pub health_addr: SocketAddr,
    child: Option<Child>,
    log: tempfile::NamedTempFile,
}

impl OperatorProcess {
    /// Starts `trellis-operator --identity IDENTITY --health-addr 127.0.0.1:PORT ARGS...` with
    /// `KUBECONFIG` pointing at the test bed.
    pub fn start(kubeconfig: &Path, identity: &str, args: &[&str]) -> Result<Self> {
        let bin = binary()?;
        let log = tempfile::NamedTempFile::new().map_err(|e| Error::io("creating the operator log", e))?;
        let out = log.reopen().map_err(|e| Error::io("opening the operator log", e))?;
        let err = out.try_clone().map_err(|e| Error::io("opening the operator log", e))?;
        let health_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let addr = health_addr.to_string();
        let mut full = vec!["--identity", identity, "--health-addr", addr.as_str()];
        full.extend_from_slice(args);
        let command = format!("{} {}", bin.display(), full.join(" "));
        let child = Command::new(&bin)
            .args(&full)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("TRELLIS_OPERATOR_LOG").unwrap_or_else(|_| "info,trellis_operator=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|source| Error::Spawn { command, source })?;
        Ok(OperatorProcess { identity: identity.to_string(), health_addr, child: Some(child), log })
    }

    /// Everything the replica logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.log.path()) {
            use std::io::Read;
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, like a crashed pod: nothing is released.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; true if it exited in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut c) = self.child.take() else { return true };
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// GET `path` on the replica's health address: (status code, body).
    pub fn http_get(&self, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&self.health_addr, Duration::from_secs(2))
            .map_err(|e| Error::io(format!("connecting to {}", self.health_addr), e))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| Error::io("socket timeout", e))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .map_err(|e| Error::io(format!("GET {path}"), e))?;
        let mut response = String::new();
        s.read_to_string(&mut response).map_err(|e| Error::io(format!("reading GET {path}"), e))?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::Parse { what: format!("GET {path}"), detail: response.clone() })?;
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((code, body))
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- log of operator {} ---\n{}", self.identity, self.log());
        }
    }
}
