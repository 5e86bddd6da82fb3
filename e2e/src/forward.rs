//! A TCP port of the host's loopback made reachable inside a node's namespace.
//!
//! Agents run in node namespaces but the test bed's API server listens on the host's
//! 127.0.0.1. A listener bound inside the namespace (a socket keeps the namespace it was
//! created in) accepts there and relays each connection to the same port on the host's
//! loopback, so the kubeconfig (server `https://127.0.0.1:PORT`, certificate for 127.0.0.1)
//! works unchanged inside the node. A relayed connection ends when either side closes it, so an
//! API server outage looks to the agent exactly like one.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::netns;

/// Relays `127.0.0.1:port` inside a namespace to `127.0.0.1:port` on the host; stops on drop.
pub struct LoopbackForward {
    stop: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

impl LoopbackForward {
    pub fn start(ns: &str, port: u16) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = netns::enter(ns, move || TcpListener::bind(addr))?
            .map_err(|e| Error::io(format!("[{ns}] bind {addr}"), e))?;
        listener.set_nonblocking(true).map_err(|e| Error::io("nonblocking listener", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let stop = stop.clone();
            let connections = connections.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let inside = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let _ = inside.set_nonblocking(false);
                    // The API server is down: refuse like it would.
                    let Ok(outside) = TcpStream::connect(addr) else { continue };
                    let (Ok(a), Ok(b), Ok(c), Ok(d)) =
                        (inside.try_clone(), outside.try_clone(), inside.try_clone(), outside.try_clone())
                    else {
                        continue;
                    };
                    if let Ok(mut list) = connections.lock() {
                        list.push(c);
                        list.push(d);
                    }
                    std::thread::spawn(move || pump(inside, outside));
                    std::thread::spawn(move || pump(b, a));
                }
            })
        };
        Ok(LoopbackForward { stop, connections, acceptor: Some(acceptor) })
    }
}

impl Drop for LoopbackForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(list) = self.connections.lock() {
            for stream in list.iter() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        if let Some(handle) = self.acceptor.take() {
            let _ = handle.join();
        }
    }
}
