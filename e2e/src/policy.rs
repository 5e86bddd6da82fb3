//! Network policy probing in the style of the upstream conformance suite: every pod serves
//! TCP 80, TCP 81 and UDP 80; a [`Matrix`] is the truth table "can `from` reach `to` on this
//! port" observed with real packets, all probes of a table in parallel with short timeouts.
//!
//! Servers are sockets bound inside the pod's namespace and served by threads of the test
//! process (a socket stays in the namespace it was created in). TCP answers `ok\n` on accept and
//! then echoes lines; UDP echoes datagrams.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::netns;

/// How long a probe waits before calling the path closed.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1200);

/// A port a probe uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Tcp(u16),
    Udp(u16),
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Port::Tcp(p) => write!(f, "TCP/{p}"),
            Port::Udp(p) => write!(f, "UDP/{p}"),
        }
    }
}

/// The ports every probed pod serves.
pub const PORTS: [Port; 3] = [Port::Tcp(80), Port::Tcp(81), Port::Udp(80)];

/// A pod the matrix probes: a display name (`x/a`), its namespace and address.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub netns: String,
    pub ip: IpAddr,
}

/// Starts the servers of [`PORTS`] inside `netns` (threads live as long as the process).
pub fn serve(netns: &str) -> Result<()> {
    for port in PORTS {
        match port {
            Port::Tcp(p) => {
                let bind = SocketAddr::from(([0, 0, 0, 0], p));
                let listener = netns::enter(netns, move || TcpListener::bind(bind))?
                    .map_err(|e| Error::io(format!("[{netns}] listen tcp {p}"), e))?;
                std::thread::spawn(move || {
                    for conn in listener.incoming().flatten() {
                        std::thread::spawn(move || echo(conn));
                    }
                });
            }
            Port::Udp(p) => {
                let socket = netns::udp_socket(netns, SocketAddr::from(([0, 0, 0, 0], p)))?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(&buf[..n], from);
                    }
                });
            }
        }
    }
    Ok(())
}

fn echo(mut conn: TcpStream) {
    if conn.write_all(b"ok\n").is_err() {
        return;
    }
    let Ok(reader) = conn.try_clone() else { return };
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { return };
        if conn.write_all(format!("{line}\n").as_bytes()).is_err() {
            return;
        }
    }
}

/// One probe from inside `netns`: did `to:port` answer?
pub fn reachable(netns: &str, to: IpAddr, port: Port) -> bool {
    let probe = move || match port {
        Port::Tcp(p) => TcpStream::connect_timeout(&SocketAddr::new(to, p), PROBE_TIMEOUT)
            .and_then(|mut s| {
                s.set_read_timeout(Some(PROBE_TIMEOUT))?;
                let mut buf = [0u8; 3];
                s.read_exact(&mut buf)
            })
            .is_ok(),
        Port::Udp(p) => {
            let Ok(socket) = UdpSocket::bind(SocketAddr::new(
                if to.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) },
                0,
            )) else {
                return false;
            };
            // Two tries, in case the first datagram met an unresolved neighbour.
            (0..2).any(|_| {
                let _ = socket.set_read_timeout(Some(PROBE_TIMEOUT / 2));
                let mut buf = [0u8; 16];
                socket.send_to(b"probe", SocketAddr::new(to, p)).is_ok() && socket.recv_from(&mut buf).is_ok()
            })
        }
    };
    netns::enter(netns, probe).unwrap_or(false)
}

/// An observed (or expected) truth table on one port.
#[derive(Clone, PartialEq, Eq)]
pub struct Matrix {
    pub port: Port,
    pub names: Vec<String>,
    /// (from, to) → reachable; a pod to itself is not probed.
    pub cells: BTreeMap<(String, String), bool>,
}

impl Matrix {
    /// Probes every ordered pair of `targets` on `port`, all in parallel.
    pub fn probe(targets: &[Target], port: Port) -> Matrix {
        let cells = std::thread::scope(|scope| {
            let handles: Vec<_> = targets
                .iter()
                .flat_map(|from| targets.iter().filter(move |to| to.name != from.name).map(move |to| (from, to)))
                .map(|(from, to)| {
                    let key = (from.name.clone(), to.name.clone());
                    (key, scope.spawn(move || reachable(&from.netns, to.ip, port)))
                })
                .collect();
            handles.into_iter().map(|(k, h)| (k, h.join().unwrap_or(false))).collect()
        });
        Matrix { port, names: targets.iter().map(|t| t.name.clone()).collect(), cells }
    }

    /// The table `allowed(from, to)` describes.
    pub fn expected(targets: &[Target], port: Port, allowed: impl Fn(&str, &str) -> bool) -> Matrix {
        let mut cells = BTreeMap::new();
        for from in targets {
            for to in targets.iter().filter(|t| t.name != from.name) {
                cells.insert((from.name.clone(), to.name.clone()), allowed(&from.name, &to.name));
            }
        }
        Matrix { port, names: targets.iter().map(|t| t.name.clone()).collect(), cells }
    }
}

impl fmt::Display for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Columns as wide as the longest name (`x/a` or `pod-a`), so headers never run together.
        let width = self.names.iter().map(|n| n.chars().count()).max().unwrap_or(0) + 2;
        let first = width.max(8);
        write!(f, "{:first$}", self.port.to_string())?;
        for to in &self.names {
            write!(f, "{to:>width$}")?;
        }
        for from in &self.names {
            write!(f, "\n{from:first$}")?;
            for to in &self.names {
                let mark = match self.cells.get(&(from.clone(), to.clone())) {
                    None => ".",
                    Some(true) => "✓",
                    Some(false) => "✗",
                };
                write!(f, "{mark:>width$}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\n{self}")
    }
}

/// Probes every port of [`PORTS`] and compares with `allowed(port, from, to)`; the error shows
/// both matrices of every port that differs.
pub fn check(targets: &[Target], case: &str, allowed: impl Fn(Port, &str, &str) -> bool) -> Result<()> {
    let observed: Vec<Matrix> =
        std::thread::scope(|s| PORTS.map(|port| s.spawn(move || Matrix::probe(targets, port))).map(|h| h.join()))
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::Setup("a probe thread panicked".into()))?;
    let mut report = String::new();
    for (port, got) in PORTS.into_iter().zip(observed) {
        let want = Matrix::expected(targets, port, |f, t| allowed(port, f, t));
        if got != want {
            report += &format!("\nobserved (rows: from, columns: to):\n{got}\nexpected:\n{want}\n");
        }
    }
    if report.is_empty() { Ok(()) } else { Err(Error::Setup(format!("case {case}: truth table differs{report}"))) }
}

/// An open TCP connection from inside a pod to another pod's port 80, checked with a line echo:
/// what a policy change must keep (allowed) or cut (newly denied).
pub struct Connection(TcpStream, BufReader<TcpStream>);

impl Connection {
    pub fn open(from: &Target, to: &Target) -> Result<Connection> {
        let addr = SocketAddr::new(to.ip, 80);
        let stream = netns::enter(&from.netns, move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?
            .map_err(|e| Error::io(format!("[{}] connect {addr}", from.netns), e))?;
        let io = |e| Error::io(format!("[{}] connection to {addr}", from.netns), e);
        stream.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
        let mut hello = String::new();
        reader.read_line(&mut hello).map_err(io)?;
        if hello != "ok\n" {
            return Err(Error::Setup(format!("unexpected greeting {hello:?} from {addr}")));
        }
        Ok(Connection(stream, reader))
    }

    /// Whether a line sent now comes back.
    pub fn echoes(&mut self, text: &str) -> bool {
        let mut line = String::new();
        self.0.write_all(format!("{text}\n").as_bytes()).is_ok()
            && self.1.read_line(&mut line).is_ok()
            && line == format!("{text}\n")
    }
}
