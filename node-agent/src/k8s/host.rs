//! The host facts autodetection needs, read from the kernel: interfaces with their addresses
//! (one netlink dump) and the source address the kernel routes towards a destination.

use std::net::{IpAddr, SocketAddr};

use super::autodetect::Interface;
use crate::kernel::netlink::host::{self, HostReadError};

/// Every interface of this network namespace with its addresses, in kernel index order.
pub async fn interfaces() -> Result<Vec<Interface>, HostReadError> {
    Ok(host::interfaces().await?.into_iter().map(|(name, addresses)| Interface { name, addresses }).collect())
}

/// The source address the kernel would use towards `destination` (an IP or a host name):
/// connecting a UDP socket sends nothing but makes the kernel pick the route and source.
/// `None` when it does not resolve or there is no route.
pub async fn source_towards(destination: &str) -> Option<IpAddr> {
    let target: SocketAddr = match destination.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, 9),
        Err(_) => match tokio::net::lookup_host((destination, 9)).await {
            Ok(mut addrs) => addrs.find(SocketAddr::is_ipv4)?,
            Err(e) => {
                tracing::warn!(destination, error = %e, "canReach destination does not resolve");
                return None;
            }
        },
    };
    let bind: SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.ok()?;
    match socket.connect(target).await {
        Ok(()) => socket.local_addr().ok().map(|a| a.ip()),
        Err(e) => {
            tracing::warn!(destination, error = %e, "no route to the canReach destination");
            None
        }
    }
}
