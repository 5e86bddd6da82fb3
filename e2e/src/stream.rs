//! A continuous traffic probe between two pods, for measuring what a live change costs.
//!
//! [`Stream::start`] runs, until [`Stream::stop`]:
//! * **UDP**: a sender in the source pod sends datagrams carrying a sequence number at a fixed
//!   rate (paced against absolute deadlines, so a late wake-up is caught up rather than
//!   lowering the rate); a receiver in the destination pod records every arrival;
//! * **TCP**: one connection from the source pod to the destination pod carrying a counter
//!   pattern at `rate` KiB/s (1 KiB writes), checked by the receiver; the sender's
//!   `TCP_INFO` gives the retransmissions and what they were ([`TcpRetransmits`]).
//!
//! Both ends are threads of this process that joined the pods' network namespaces, so the
//! probe needs no helper binary and the sockets see exactly the pods' network. Analysis is
//! pure ([`analyse`]) and the [`StreamReport`] prints as a short table row.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::netns;

/// UDP port of the probe's receiver.
pub const UDP_PORT: u16 = 47001;
/// TCP port of the probe's receiver.
pub const TCP_PORT: u16 = 47002;
const DATAGRAM: usize = 64;
const TCP_CHUNK: usize = 1024;
/// Time given to packets in flight after the sender stopped.
const DRAIN: Duration = Duration::from_millis(300);

/// One end of a stream: a network namespace and the address others reach it at.
pub trait Endpoint {
    fn netns(&self) -> &str;
    fn ip(&self) -> Ipv4Addr;
    fn label(&self) -> String;
}

impl Endpoint for crate::cluster::PodRef {
    fn netns(&self) -> &str {
        &self.netns
    }
    fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    fn label(&self) -> String {
        format!("{}@{}", self.name, self.node)
    }
}

impl Endpoint for crate::pod::PodInfo {
    fn netns(&self) -> &str {
        &self.netns
    }
    fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    fn label(&self) -> String {
        self.name.clone()
    }
}

/// A running probe.
pub struct Stream {
    label: String,
    rate: u32,
    started: Instant,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    udp_sender: Option<JoinHandle<UdpSent>>,
    udp_receiver: Option<JoinHandle<Vec<Arrival>>>,
    tcp_sender: Option<JoinHandle<TcpSent>>,
    tcp_receiver: Option<JoinHandle<TcpReceived>>,
}

/// A datagram's arrival: its sequence number and when (since the stream started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub seq: u64,
    pub at: Duration,
}

struct UdpSent {
    sent: u64,
    send_errors: u64,
    last_error: Option<String>,
}

#[derive(Default)]
struct TcpSent {
    bytes: u64,
    retransmits: Option<TcpRetransmits>,
    pmtu_at_connect: Option<u32>,
    error: Option<String>,
}

#[derive(Default)]
struct TcpReceived {
    bytes: u64,
    longest_stall: Duration,
    corrupt: bool,
    error: Option<String>,
}

fn bind_udp(ns: &str, port: u16) -> Result<UdpSocket> {
    Ok(netns::udp_socket(ns, SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))?)
}

impl Stream {
    /// Starts UDP at `rate` datagrams/s and TCP at `rate` KiB/s from `from` to `to`.
    pub fn start(from: &impl Endpoint, to: &impl Endpoint, rate: u32) -> Result<Stream> {
        if rate == 0 {
            return Err(Error::Setup("stream rate must be at least 1 packet/s".into()));
        }
        let label = format!("{} -> {}", from.label(), to.label());
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(rate));

        let rx = bind_udp(to.netns(), UDP_PORT)?;
        rx.set_read_timeout(Some(Duration::from_millis(50))).map_err(|e| Error::io("udp read timeout", e))?;
        deep_receive_buffer(&rx)?;
        let tx = bind_udp(from.netns(), 0)?;
        let listener = {
            let addr = SocketAddr::from(([0, 0, 0, 0], TCP_PORT));
            netns::enter(to.netns(), move || TcpListener::bind(addr))?
                .map_err(|e| Error::io(format!("[{}] bind tcp {addr}", to.netns()), e))?
        };
        listener.set_nonblocking(true).map_err(|e| Error::io("nonblocking listener", e))?;

        let udp_receiver = {
            let (stop, received) = (stop.clone(), received.clone());
            std::thread::spawn(move || udp_receive(rx, started, &stop, &received))
        };
        let target = SocketAddr::V4(SocketAddrV4::new(to.ip(), UDP_PORT));
        let udp_sender = {
            let stop = stop.clone();
            std::thread::spawn(move || udp_send(tx, target, started, interval, &stop))
        };
        let tcp_receiver = {
            let stop = stop.clone();
            std::thread::spawn(move || tcp_receive(listener, &stop))
        };
        let tcp_target = SocketAddr::V4(SocketAddrV4::new(to.ip(), TCP_PORT));
        let from_ns = from.netns().to_string();
        let tcp_sender = {
            let stop = stop.clone();
            std::thread::spawn(move || tcp_send(&from_ns, tcp_target, interval, &stop))
        };
        Ok(Stream {
            label,
            rate,
            started,
            stop,
            received,
            udp_sender: Some(udp_sender),
            udp_receiver: Some(udp_receiver),
            tcp_sender: Some(tcp_sender),
            tcp_receiver: Some(tcp_receiver),
        })
    }

    /// When the stream started (arrival times and loss windows count from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until datagrams arrive (the path works), at most `timeout`.
    pub fn wait_flowing(&self, timeout: Duration) -> Result<()> {
        let before = self.received();
        crate::probe::wait_until(&format!("stream {} to deliver", self.label), timeout, || {
            let now = self.received();
            if now > before + 10 { Ok(()) } else { Err(format!("{now} datagrams received")) }
        })
    }

    /// Stops both streams and analyses what arrived.
    pub fn stop(mut self) -> StreamReport {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.udp_sender.take().and_then(|h| h.join().ok());
        let tcp_sent = self.tcp_sender.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let arrivals = self.udp_receiver.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let tcp_received = self.tcp_receiver.take().and_then(|h| h.join().ok()).unwrap_or_default();
        let (sent, send_errors, last_error) =
            sent.map(|s| (s.sent, s.send_errors, s.last_error)).unwrap_or((0, 0, Some("sender panicked".into())));
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(self.rate));
        let udp = analyse(sent, &arrivals, interval);
        StreamReport {
            label: self.label.clone(),
            rate: self.rate,
            duration: self.started.elapsed(),
            udp,
            send_errors,
            last_send_error: last_error,
            tcp: TcpReport {
                bytes_sent: tcp_sent.bytes,
                bytes_received: tcp_received.bytes,
                retransmits: tcp_sent.retransmits.map(|r| r.total),
                retransmit_kinds: tcp_sent.retransmits,
                longest_stall: tcp_received.longest_stall,
                corrupt: tcp_received.corrupt,
                error: tcp_sent.error.or(tcp_received.error),
            },
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Receive buffer of the UDP receiver: room for seconds of datagrams, so a receiver thread
/// the scheduler leaves waiting (a loaded CI machine) does not overflow its socket and count
/// the overflow as network loss. SO_RCVBUFFORCE (root) is not capped by `net.core.rmem_max`.
const RECEIVE_BUFFER: libc::c_int = 16 << 20;

fn deep_receive_buffer(socket: &UdpSocket) -> Result<()> {
    let size = RECEIVE_BUFFER;
    // SAFETY: a valid socket fd and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(Error::io("SO_RCVBUFFORCE on the UDP receiver", std::io::Error::last_os_error())) }
}

fn udp_send(tx: UdpSocket, target: SocketAddr, started: Instant, interval: Duration, stop: &AtomicBool) -> UdpSent {
    let mut out = UdpSent { sent: 0, send_errors: 0, last_error: None };
    let mut buf = [0u8; DATAGRAM];
    while !stop.load(Ordering::Relaxed) {
        let due = started + interval * (out.sent as u32);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        buf[..8].copy_from_slice(&out.sent.to_be_bytes());
        if let Err(e) = tx.send_to(&buf, target) {
            out.send_errors += 1;
            out.last_error = Some(e.to_string());
        }
        out.sent += 1;
    }
    out
}

fn udp_receive(rx: UdpSocket, started: Instant, stop: &AtomicBool, received: &AtomicU64) -> Vec<Arrival> {
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 256];
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let t = *stopped_at.get_or_insert_with(Instant::now);
            if t.elapsed() > DRAIN {
                break;
            }
        }
        match rx.recv_from(&mut buf) {
            Ok((n, _)) if n >= 8 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&buf[..8]);
                arrivals.push(Arrival { seq: u64::from_be_bytes(seq), at: started.elapsed() });
                received.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
    arrivals
}

fn tcp_send(ns: &str, target: SocketAddr, interval: Duration, stop: &AtomicBool) -> TcpSent {
    let mut out = TcpSent::default();
    // Connect, retrying until the path works or the stream is stopped.
    let mut stream = loop {
        match netns::enter(ns, move || TcpStream::connect_timeout(&target, Duration::from_secs(1))) {
            Ok(Ok(s)) => break s,
            Ok(Err(e)) => out.error = Some(format!("connect {target}: {e}")),
            Err(e) => out.error = Some(e.to_string()),
        }
        if stop.load(Ordering::Relaxed) {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    out.error = None;
    out.pmtu_at_connect = sender_info(&stream).map(|i| i.tcpi_pmtu);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let started = Instant::now();
    let mut chunks: u32 = 0;
    let mut counter: u64 = 0;
    let mut pending: Vec<u8> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let due = started + interval * chunks;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        chunks += 1;
        // Keep at most a few chunks unsent so a stalled path does not pile up memory.
        if pending.len() < 8 * TCP_CHUNK {
            for _ in 0..TCP_CHUNK / 8 {
                pending.extend_from_slice(&counter.to_be_bytes());
                counter += 1;
            }
        }
        match stream.write(&pending) {
            Ok(n) => {
                out.bytes += n as u64;
                pending.drain(..n);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                out.error = Some(format!("write: {e}"));
                break;
            }
        }
    }
    out.retransmits = sender_info_len(&stream).map(|(i, len)| TcpRetransmits::from_info(&i, len, out.pmtu_at_connect));
    let _ = stream.shutdown(std::net::Shutdown::Both);
    out
}

/// `TCP_INFO` of a connected socket and how many bytes of it the kernel filled (fields newer
/// than the running kernel stay zero).
fn sender_info(stream: &TcpStream) -> Option<libc::tcp_info> {
    sender_info_len(stream).map(|(info, _)| info)
}

fn sender_info_len(stream: &TcpStream) -> Option<(libc::tcp_info, usize)> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket fd, a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((info, len as usize))
}

/// `tcpi_total_retrans` of a connected socket.
pub fn total_retransmits(stream: &TcpStream) -> Option<u32> {
    sender_info(stream).map(|i| i.tcpi_total_retrans)
}

/// The sender's retransmissions and the socket counters that tell their kind apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpRetransmits {
    /// Segments sent again (`tcpi_total_retrans`).
    pub total: u32,
    /// Bytes sent again (`tcpi_bytes_retrans`).
    pub bytes: u64,
    /// Retransmission timeouts (`tcpi_total_rto`; `None` before Linux 6.7, which lacks it).
    pub timeouts: Option<u32>,
    /// Segments the receiver reported as already received (`tcpi_dsack_dups`): spurious
    /// retransmissions (reordering taken for loss, a tail loss probe or a timeout that
    /// fired while the original was still on its way).
    pub duplicates_reported: u32,
    /// Times the sender saw its segments arrive out of order (`tcpi_reord_seen`).
    pub reordering_seen: u32,
    /// Path MTU when the connection was made and at the end (`tcpi_pmtu`): lower at the end
    /// when an ICMP "fragmentation needed" lowered it.
    pub pmtu_at_connect: Option<u32>,
    pub pmtu: u32,
}

impl TcpRetransmits {
    fn from_info(i: &libc::tcp_info, len: usize, pmtu_at_connect: Option<u32>) -> TcpRetransmits {
        let has_rto = len >= std::mem::offset_of!(libc::tcp_info, tcpi_total_rto) + 2;
        TcpRetransmits {
            total: i.tcpi_total_retrans,
            bytes: i.tcpi_bytes_retrans,
            timeouts: has_rto.then_some(u32::from(i.tcpi_total_rto)),
            duplicates_reported: i.tcpi_dsack_dups,
            reordering_seen: i.tcpi_reord_seen,
            pmtu_at_connect,
            pmtu: i.tcpi_pmtu,
        }
    }

    /// A short breakdown for tables, e.g. `4: 2 RTO, 1 DSACK, reord 1, pmtu 1500→1480`.
    pub fn breakdown(&self) -> String {
        let timeouts = self.timeouts.map_or("?".to_string(), |n| n.to_string());
        let mut out = format!(
            "{}: {timeouts} RTO, {} DSACK, reord {}",
            self.total, self.duplicates_reported, self.reordering_seen
        );
        match self.pmtu_at_connect {
            Some(start) if start != self.pmtu => out.push_str(&format!(", pmtu {start}→{}", self.pmtu)),
            _ => out.push_str(&format!(", pmtu {}", self.pmtu)),
        }
        out
    }
}

fn tcp_receive(listener: TcpListener, stop: &AtomicBool) -> TcpReceived {
    let mut out = TcpReceived::default();
    let mut conn = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    out.error = Some("no TCP connection was established".into());
                    return out;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                out.error = Some(format!("accept: {e}"));
                return out;
            }
        }
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut expected: u64 = 0;
    let mut partial: Vec<u8> = Vec::new();
    let mut last_data = Instant::now();
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let t = *stopped_at.get_or_insert_with(Instant::now);
            if t.elapsed() > DRAIN {
                break;
            }
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stopped_at.is_none() {
                    out.longest_stall = out.longest_stall.max(last_data.elapsed());
                }
                last_data = Instant::now();
                out.bytes += n as u64;
                partial.extend_from_slice(&buf[..n]);
                let whole = partial.len() / 8 * 8;
                for word in partial[..whole].chunks_exact(8) {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(word);
                    if u64::from_be_bytes(w) != expected {
                        out.corrupt = true;
                    }
                    expected += 1;
                }
                partial.drain(..whole);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                out.error = Some(format!("read: {e}"));
                break;
            }
        }
    }
    out
}

/// What the UDP stream saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UdpReport {
    pub sent: u64,
    /// Distinct sequence numbers received.
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Datagrams that arrived after one with a higher sequence number.
    pub reordered: u64,
    /// The longest run of consecutive lost datagrams, and that run's length in time.
    pub longest_gap_packets: u64,
    pub longest_gap: Duration,
    /// Runs of consecutive lost datagrams: (time of the first lost one's departure since the
    /// start, number lost).
    pub loss_windows: Vec<(Duration, u64)>,
}

/// Loss, duplicates, reordering and gaps of `sent` datagrams sent every `interval`, from the
/// arrivals in arrival order.
pub fn analyse(sent: u64, arrivals: &[Arrival], interval: Duration) -> UdpReport {
    let mut seen = vec![false; sent as usize];
    let (mut duplicated, mut reordered, mut highest) = (0, 0, None::<u64>);
    for a in arrivals {
        if let Some(h) = highest
            && a.seq < h
        {
            reordered += 1;
        }
        highest = Some(highest.map_or(a.seq, |h| h.max(a.seq)));
        match seen.get_mut(a.seq as usize) {
            Some(s) if *s => duplicated += 1,
            Some(s) => *s = true,
            None => {}
        }
    }
    let received = seen.iter().filter(|s| **s).count() as u64;
    let mut windows = Vec::new();
    let mut run_start = None;
    for (i, s) in seen.iter().chain(std::iter::once(&true)).enumerate() {
        match (s, run_start) {
            (false, None) => run_start = Some(i),
            (true, Some(start)) => {
                windows.push((interval * start as u32, (i - start) as u64));
                run_start = None;
            }
            _ => {}
        }
    }
    let longest = windows.iter().map(|w| w.1).max().unwrap_or(0);
    UdpReport {
        sent,
        received,
        lost: sent - received,
        duplicated,
        reordered,
        longest_gap_packets: longest,
        longest_gap: interval * longest as u32,
        loss_windows: windows,
    }
}

/// What the TCP stream saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpReport {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// `tcpi_total_retrans` of the sender; `None` if never connected.
    pub retransmits: Option<u32>,
    /// What the retransmissions were; `None` if never connected.
    pub retransmit_kinds: Option<TcpRetransmits>,
    /// Longest time the receiver waited for data while the sender was sending.
    pub longest_stall: Duration,
    /// The received bytes were not the sent pattern.
    pub corrupt: bool,
    pub error: Option<String>,
}

/// Everything a stream measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamReport {
    pub label: String,
    pub rate: u32,
    pub duration: Duration,
    pub udp: UdpReport,
    pub send_errors: u64,
    pub last_send_error: Option<String>,
    pub tcp: TcpReport,
}

impl StreamReport {
    /// Datagrams lost among those sent from `offset` (since the stream started) on.
    pub fn lost_after(&self, offset: Duration) -> u64 {
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(self.rate));
        self.udp
            .loss_windows
            .iter()
            .map(|(at, n)| {
                let skipped = if *at >= offset { 0 } else { ((offset - *at).as_nanos() / interval.as_nanos()) as u64 };
                n.saturating_sub(skipped)
            })
            .sum()
    }

    /// When the last loss window ended, since the stream started (zero without loss).
    pub fn loss_ended_at(&self) -> Duration {
        let interval = Duration::from_nanos(1_000_000_000 / u64::from(self.rate));
        self.udp.loss_windows.last().map(|(at, n)| *at + interval * (*n as u32)).unwrap_or_default()
    }
}

impl std::fmt::Display for StreamReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let u = &self.udp;
        write!(
            f,
            "{}: {:.1}s at {}/s: UDP sent {} lost {} ({:.2}%) dup {} reordered {} longest gap {} pkts ({:?}) in {} window(s)",
            self.label,
            self.duration.as_secs_f64(),
            self.rate,
            u.sent,
            u.lost,
            if u.sent == 0 { 0.0 } else { 100.0 * u.lost as f64 / u.sent as f64 },
            u.duplicated,
            u.reordered,
            u.longest_gap_packets,
            u.longest_gap,
            u.loss_windows.len()
        )?;
        if self.send_errors > 0 {
            write!(f, ", {} send errors ({})", self.send_errors, self.last_send_error.as_deref().unwrap_or(""))?;
        }
        let t = &self.tcp;
        write!(
            f,
            "; TCP {} B sent, {} B received, retransmits {}, longest stall {:?}",
            t.bytes_sent,
            t.bytes_received,
            t.retransmits.map_or("-".to_string(), |r| r.to_string()),
            t.longest_stall
        )?;
        if t.corrupt {
            write!(f, ", CORRUPT")?;
        }
        if let Some(e) = &t.error {
            write!(f, ", error: {e}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrivals(seqs: &[u64]) -> Vec<Arrival> {
        seqs.iter().map(|s| Arrival { seq: *s, at: Duration::from_millis(*s) }).collect()
    }

    #[test]
    fn loss_duplicates_reordering_and_gaps_are_counted() {
        let ms = Duration::from_millis(1);
        let r = analyse(10, &arrivals(&[0, 1, 3, 2, 2, 7, 8, 9]), ms);
        assert_eq!(r.received, 7);
        assert_eq!(r.lost, 3, "4, 5, 6");
        assert_eq!(r.duplicated, 1);
        assert_eq!(r.reordered, 2, "2 after 3, and its duplicate");
        assert_eq!(r.longest_gap_packets, 3);
        assert_eq!(r.longest_gap, 3 * ms);
        assert_eq!(r.loss_windows, vec![(4 * ms, 3)]);
    }

    #[test]
    fn a_clean_stream_has_no_loss_and_a_lost_tail_counts() {
        let ms = Duration::from_millis(1);
        let clean = analyse(4, &arrivals(&[0, 1, 2, 3]), ms);
        assert_eq!((clean.lost, clean.reordered, clean.duplicated, clean.longest_gap_packets), (0, 0, 0, 0));
        assert!(clean.loss_windows.is_empty());
        let tail = analyse(5, &arrivals(&[0, 1]), ms);
        assert_eq!(tail.loss_windows, vec![(2 * ms, 3)]);
        let nothing = analyse(3, &[], ms);
        assert_eq!((nothing.lost, nothing.longest_gap_packets), (3, 3));
    }

    #[test]
    fn loss_after_an_instant_counts_only_the_later_part_of_a_window() {
        let ms = Duration::from_millis(1);
        let udp = analyse(10, &arrivals(&[0, 1, 6, 9]), ms);
        assert_eq!(udp.loss_windows, vec![(2 * ms, 4), (7 * ms, 2)]);
        let report = StreamReport {
            label: "a -> b".into(),
            rate: 1000,
            duration: 10 * ms,
            udp,
            send_errors: 0,
            last_send_error: None,
            tcp: TcpReport::default(),
        };
        assert_eq!(report.lost_after(Duration::ZERO), 6);
        assert_eq!(report.lost_after(4 * ms), 4, "4, 5, 7, 8");
        assert_eq!(report.lost_after(8 * ms), 1);
        assert_eq!(report.loss_ended_at(), 9 * ms);
    }
}
