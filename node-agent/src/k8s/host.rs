//! The host facts autodetection needs, read from the kernel: interfaces with their addresses
//! (one netlink dump) and the source address the kernel routes towards a destination.

use std::net::{IpAddr, SocketAddr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;

use super::autodetect::Interface;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink dump of {what}: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Every interface of this network namespace with its addresses, in kernel index order.
pub async fn interfaces() -> Result<Vec<Interface>, HostError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(HostError::Socket)?;
    let task = tokio::spawn(connection);
    let result = async {
        let links: Vec<_> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostError::Dump { what: "links", source })?;
        let addresses: Vec<_> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostError::Dump { what: "addresses", source })?;
        let mut out: Vec<(u32, Interface)> = links
            .iter()
            .filter_map(|l| {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                let addresses = addresses
                    .iter()
                    .filter(|a| a.header.index == l.header.index)
                    .filter_map(|a| {
                        let ip = a
                            .attributes
                            .iter()
                            .find_map(|x| match x {
                                AddressAttribute::Local(ip) => Some(*ip),
                                _ => None,
                            })
                            .or_else(|| {
                                a.attributes.iter().find_map(|x| match x {
                                    AddressAttribute::Address(ip) => Some(*ip),
                                    _ => None,
                                })
                            })?;
                        IpNet::new(ip, a.header.prefix_len).ok()
                    })
                    .collect();
                Some((l.header.index, Interface { name, addresses }))
            })
            .collect();
        out.sort_by_key(|(index, _)| *index);
        Ok(out.into_iter().map(|(_, i)| i).collect())
    }
    .await;
    task.abort();
    result
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
