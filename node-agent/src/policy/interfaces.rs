//! Which host-side interface leads to a pod: the interface of the host route to the pod's
//! address (`<pod IP>/32 dev veth…`, which the CNI plugin installs), read with one netlink
//! dump of links and routes of the calling thread's network namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};

const RT_TABLE_MAIN: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink dump of {what}: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Host route destination (a /32 or /128) → name of the interface it leaves through.
pub async fn host_route_interfaces() -> Result<BTreeMap<IpAddr, String>, InterfaceError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(InterfaceError::Socket)?;
    let task = tokio::spawn(connection);
    let result = async {
        let links: Vec<_> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| InterfaceError::Dump { what: "links", source })?;
        let names: BTreeMap<u32, String> = links
            .iter()
            .filter_map(|l| {
                l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some((l.header.index, n.clone())),
                    _ => None,
                })
            })
            .collect();
        let mut out = BTreeMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let routes: Vec<RouteMessage> = handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|source| InterfaceError::Dump { what: "routes", source })?;
            for r in routes {
                let full = if family == AddressFamily::Inet { 32 } else { 128 };
                // Only unicast routes of table main: the local table lists the node's own addresses.
                if r.header.destination_prefix_length != full
                    || r.header.table != RT_TABLE_MAIN
                    || r.header.kind != RouteType::Unicast
                {
                    continue;
                }
                let dst = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Destination(d) => address(d),
                    _ => None,
                });
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => names.get(i).cloned(),
                    _ => None,
                });
                if let (Some(dst), Some(oif)) = (dst, oif) {
                    out.entry(dst).or_insert(oif);
                }
            }
        }
        Ok(out)
    }
    .await;
    task.abort();
    result
}

/// Sends `()` on every IPv4/IPv6 route notification of the calling thread's network namespace
/// (a pod's host route appearing or going). Call inside a tokio runtime.
pub fn subscribe_routes(tx: tokio::sync::mpsc::UnboundedSender<()>) -> Result<(), InterfaceError> {
    use futures::StreamExt;
    use rtnetlink::MulticastGroup;
    let (connection, _, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route])
            .map_err(InterfaceError::Socket)?;
    tokio::spawn(connection);
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(())
}
