//! Probes: observe what the data plane does with real packets.
//!
//! Every probe returns an observed fact (did the ping come back and what did ping print,
//! which source address the receiver saw, which packets crossed a wire) rather than a
//! verdict, so tests state their expectation next to the observation. Waiting is always a
//! bounded poll for a condition ([`wait_until`]), never a sleep followed by an assertion.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::error::{Error, Result};
use crate::netns;

/// `TRELLIS_E2E_TIME_SCALE` (default 1): how much slower than a normal host this machine is;
/// the VM runner sets it (its CPU is emulated). Bounds of waits are multiplied by it.
pub fn time_scale() -> u32 {
    std::env::var("TRELLIS_E2E_TIME_SCALE").ok().and_then(|v| v.parse().ok()).filter(|s| *s > 0).unwrap_or(1)
}

/// `d` times [`time_scale`], for bounds of waits.
pub fn scaled(d: Duration) -> Duration {
    d * time_scale()
}

/// Polls `check` until it yields a value or `timeout` passes. `check` returns `Err(text)`
/// describing the last observation while the condition does not hold.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<T, String>) -> Result<T> {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() >= timeout => {
                return Err(Error::Timeout { what: what.to_string(), waited: start.elapsed(), last });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// [`wait_until`] for asynchronous checks (API calls), polling every 200 ms on tokio's timer.
pub async fn wait_until_async<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() >= timeout => {
                return Err(Error::Timeout { what: what.to_string(), waited: start.elapsed(), last });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One ping and what it printed.
#[derive(Clone, Debug)]
pub struct PingResult {
    pub ok: bool,
    pub output: String,
}

impl PingResult {
    /// True when ping refused to send because the packet exceeds an MTU with DF set
    /// ("message too long" locally, or "Frag needed" from a router on the path).
    pub fn too_big(&self) -> bool {
        let o = self.output.to_lowercase();
        !self.ok && (o.contains("message too long") || o.contains("frag needed"))
    }
}

/// `ping -c 1 -W 1 [extra] DST` inside `ns`.
pub fn ping(ns: &str, dst: IpAddr, extra: &[&str]) -> Result<PingResult> {
    let dst = dst.to_string();
    let mut args = vec!["-n", "-c", "1", "-W", "1"];
    args.extend_from_slice(extra);
    args.push(&dst);
    let out = cmd::in_ns_output(ns, "ping", &args)?;
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(PingResult { ok: out.status.success(), output })
}

/// Pings until one reply arrives (first packets may wait for ARP or a route being
/// installed), within `timeout`.
pub fn wait_ping(ns: &str, dst: IpAddr, timeout: Duration) -> Result<PingResult> {
    wait_until(&format!("[{ns}] ping {dst}"), timeout, || match ping(ns, dst, &[]) {
        Ok(r) if r.ok => Ok(r),
        Ok(r) => Err(r.output),
        Err(e) => Err(e.to_string()),
    })
}

/// A ping with Don't Fragment set and `payload` bytes of ICMP data (IP packet = payload + 28).
pub fn ping_df(ns: &str, dst: IpAddr, payload: u32) -> Result<PingResult> {
    ping(ns, dst, &["-M", "do", "-s", &payload.to_string()])
}

/// Sends UDP datagrams from namespace `from` to `dst:port` where a socket in namespace `to`
/// listens, and returns the source address the receiver saw (the address after any NAT).
pub fn udp_source_seen(from: &str, to: &str, dst: Ipv4Addr, port: u16, timeout: Duration) -> Result<SocketAddr> {
    let receiver = netns::udp_socket(to, SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))?;
    let sender = netns::udp_socket(from, SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
    receiver.set_read_timeout(Some(Duration::from_millis(300))).map_err(|e| Error::io("set_read_timeout", e))?;
    let target = SocketAddr::V4(SocketAddrV4::new(dst, port));
    let mut buf = [0u8; 64];
    wait_until(&format!("UDP [{from}] -> {target} received in [{to}]"), timeout, || {
        sender.send_to(b"trellis-probe", target).map_err(|e| format!("send_to: {e}"))?;
        match receiver.recv_from(&mut buf) {
            Ok((n, src)) if &buf[..n] == b"trellis-probe" => Ok(src),
            Ok((n, src)) => Err(format!("unexpected {n} bytes from {src}")),
            Err(e) => Err(format!("nothing received yet ({e})")),
        }
    })
}

/// A running `tcpdump` on one interface of one namespace.
pub struct Capture {
    child: Option<Child>,
    /// tcpdump exited by itself (after `-c` packets) and was reaped.
    exited: bool,
    what: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

/// What a capture saw: one line per packet (tcpdump -n text form).
#[derive(Clone, Debug, Default)]
pub struct Captured {
    pub what: String,
    pub packets: Vec<String>,
}

impl Captured {
    pub fn count(&self) -> usize {
        self.packets.len()
    }
    /// Packets whose line contains `needle`.
    pub fn matching(&self, needle: &str) -> usize {
        self.packets.iter().filter(|l| l.contains(needle)).count()
    }
}

impl std::fmt::Display for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: {} packets", self.what, self.packets.len())?;
        for p in self.packets.iter().take(20) {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl Capture {
    /// Starts `tcpdump -i IFACE FILTER` in `ns` and returns once it is listening.
    pub fn start(ns: &str, iface: &str, filter: &str) -> Result<Capture> {
        Capture::spawn(ns, iface, filter, None)
    }

    /// [`Capture::start`] that ends by itself after `count` packets (`tcpdump -c`): a capture
    /// that cannot outlive what it is meant to see.
    pub fn start_counted(ns: &str, iface: &str, filter: &str, count: usize) -> Result<Capture> {
        Capture::spawn(ns, iface, filter, Some(count))
    }

    fn spawn(ns: &str, iface: &str, filter: &str, count: Option<usize>) -> Result<Capture> {
        let what = format!("[{ns}] tcpdump -i {iface} '{filter}'");
        let mut command = cmd::ns_command(ns, "tcpdump");
        command.args(["-i", iface, "-n", "-l", "-p", "--immediate-mode"]);
        if let Some(n) = count {
            command.args(["-c", &n.to_string()]);
        }
        let mut child = command
            .arg(filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn { command: what.clone(), source })?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            if let Some(out) = stdout {
                for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                    if let Ok(mut v) = sink.lock()
                        && !line.trim().is_empty()
                    {
                        v.push(line);
                    }
                }
            }
        });
        // tcpdump says "listening on IFACE" on stderr once the socket is attached.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Some(err) = stderr {
                for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                    let _ = tx.send(line);
                }
            }
        });
        let mut capture =
            Capture { child: Some(child), exited: false, what: what.clone(), lines, reader: Some(reader) };
        let limit = scaled(Duration::from_secs(10));
        let deadline = Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("listening on") => return Ok(capture),
                Ok(line) => seen.push(line),
                Err(_) => {
                    capture.kill();
                    return Err(Error::Timeout {
                        what: format!("{what} to start listening"),
                        waited: limit,
                        last: seen.join("\n"),
                    });
                }
            }
        }
    }

    /// Packets seen so far.
    pub fn seen(&self) -> usize {
        self.lines.lock().map(|v| v.len()).unwrap_or_default()
    }

    /// Waits until `n` packets were seen or `timeout` passed; the count seen.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while self.seen() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.seen()
    }

    /// Waits until tcpdump exits by itself (a [`Capture::start_counted`] capture that saw its
    /// packets) or `timeout` passes; true if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => return false,
                Ok(Some(_)) | Err(_) => {
                    self.exited = true;
                    return true;
                }
            }
        }
        false
    }

    /// Stops tcpdump (SIGINT, so it flushes) and returns what it saw. Packets still in
    /// flight get a moment to be printed first: stop once the count is stable for 300 ms.
    /// Bounded: a tcpdump that has not exited 2 s after SIGINT is killed.
    pub fn stop(mut self) -> Captured {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.seen();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            let now = self.seen();
            if now == last {
                break;
            }
            last = now;
        }
        if let Some(mut child) = self.child.take().filter(|_| !self.exited) {
            // SAFETY: kill(2) on the tcpdump process this guard spawned and has not reaped, so
            // the pid is still its own.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(2);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let packets = self.lines.lock().map(|v| v.clone()).unwrap_or_default();
        Captured { what: self.what.clone(), packets }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What crossed one wire while an action ran, split by how it was carried.
#[derive(Clone, Debug)]
pub struct WireSample {
    /// VXLAN: `udp port 4789`.
    pub vxlan: Captured,
    /// IP-in-IP: `ip proto 4`.
    pub ipip: Captured,
    /// Unencapsulated ICMP from or to pod addresses (encapsulated ICMP does not match: BPF
    /// `icmp` tests the outer header).
    pub plain: Captured,
}

impl std::fmt::Display for WireSample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.vxlan, self.ipip, self.plain)
    }
}

/// Captures on `iface` in `ns` while `action` runs (e.g. a ping between pods).
pub fn observe_wire<T>(
    ns: &str,
    iface: &str,
    pod_net: &str,
    action: impl FnOnce() -> Result<T>,
) -> Result<(T, WireSample)> {
    let vxlan = Capture::start(ns, iface, "udp port 4789")?;
    let ipip = Capture::start(ns, iface, "ip proto 4")?;
    let plain = Capture::start(ns, iface, &format!("icmp and net {pod_net}"))?;
    let out = action()?;
    Ok((out, WireSample { vxlan: vxlan.stop(), ipip: ipip.stop(), plain: plain.stop() }))
}

/// The MTU of a link, `None` if it does not exist.
pub fn link_mtu(ns: &str, dev: &str) -> Result<Option<u32>> {
    let out = cmd::output("ip", &["-n", ns, "-j", "link", "show", "dev", dev])?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Parse { what: format!("ip -j link show {dev}"), detail: e.to_string() })?;
    Ok(v[0]["mtu"].as_u64().map(|m| m as u32))
}

/// Routes of `ns` with the given protocol (`ip route show proto PROTO`), one per line.
pub fn routes_with_proto(ns: &str, proto: u8) -> Result<Vec<String>> {
    let out = cmd::ip(ns, &["route", "show", "proto", &proto.to_string()])?;
    Ok(out.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// Packet counters of a link (`ip -s -j link show DEV`), `None` if the link does not exist.
pub fn link_counters(ns: &str, dev: &str) -> Result<Option<(u64, u64)>> {
    let out = cmd::output("ip", &["-n", ns, "-s", "-j", "link", "show", "dev", dev])?;
    if !out.status.success() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::Parse { what: format!("ip -s -j link show {dev}"), detail: e.to_string() })?;
    let stats = &v[0]["stats64"];
    let tx = stats["tx"]["packets"].as_u64().unwrap_or_default();
    let rx = stats["rx"]["packets"].as_u64().unwrap_or_default();
    Ok(Some((tx, rx)))
}

/// A human-readable dump of a namespace's network state, for failure messages.
pub fn dump(ns: &str) -> String {
    let mut out = format!("===== [{ns}] =====\n");
    let sections: [(&str, &[&str]); 7] = [
        ("ip -br addr", &["ip", "-br", "addr"]),
        ("ip -d link", &["ip", "-d", "link"]),
        ("ip route", &["ip", "route"]),
        ("ip neigh", &["ip", "neigh"]),
        ("bridge fdb (vxlan)", &["bridge", "fdb", "show", "dev", "vxlan.trellis"]),
        ("nft list ruleset", &["nft", "list", "ruleset"]),
        ("sysctl forwarding", &["sysctl", "net.ipv4.ip_forward"]),
    ];
    for (title, argv) in sections {
        let text = match cmd::in_ns_output(ns, argv[0], &argv[1..]) {
            Ok(o) => format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => e.to_string(),
        };
        out.push_str(&format!("--- {title}\n{text}"));
    }
    out
}
