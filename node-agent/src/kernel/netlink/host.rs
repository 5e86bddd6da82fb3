//! One-shot reads of the calling thread's network namespace outside the reconcile loop, each
//! over a short-lived rtnetlink connection: the interfaces with their addresses (for address
//! autodetection) and which interface each host route leaves through (for the policy enforcer:
//! the CNI plugin's `<pod IP>/32 dev veth…` route names a pod's host-side interface), and the
//! route notifications that say when the latter changed. They live here so this directory
//! stays the only code that knows rtnetlink.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::RouteMessage;

use super::decode;

#[derive(Debug, thiserror::Error)]
pub enum HostReadError {
    #[error("netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("netlink dump of {what}: {source}")]
    Dump {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// Every interface of this network namespace (its name) with its addresses, in kernel index order.
pub async fn interfaces() -> Result<Vec<(String, Vec<IpNet>)>, HostReadError> {
    with_handle(async |handle| {
        let links = dump_links(handle).await?;
        let addresses: Vec<AddressMessage> = handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostReadError::Dump { what: "addresses", source })?;
        Ok(interfaces_of(&links, &addresses))
    })
    .await
}

/// Host route destination (a /32 or /128) → name of the interface it leaves through.
pub async fn host_route_interfaces() -> Result<BTreeMap<IpAddr, String>, HostReadError> {
    with_handle(async |handle| {
        let names = decode::link_names(&dump_links(handle).await?);
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let mut dump: Vec<RouteMessage> = handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(|source| HostReadError::Dump { what: "routes", source })?;
            // A kernel without IPv6 answers an IPv6 dump with every family's routes.
            dump.retain(|r| r.header.address_family == family);
            routes.append(&mut dump);
        }
        Ok(decode::host_route_interfaces(&routes, &names))
    })
    .await
}

/// Sends `()` on every IPv4/IPv6 route notification of the calling thread's network namespace
/// (a pod's host route appearing or going). Call inside a tokio runtime.
pub fn subscribe_routes(tx: tokio::sync::mpsc::UnboundedSender<()>) -> Result<(), HostReadError> {
    use futures::StreamExt;
    use rtnetlink::MulticastGroup;
    let (connection, _, mut messages) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Ipv4Route, MulticastGroup::Ipv6Route])
            .map_err(HostReadError::Socket)?;
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

/// Runs `read` on a fresh connection, closed afterwards whatever `read` returned.
async fn with_handle<T>(read: impl AsyncFnOnce(&Handle) -> Result<T, HostReadError>) -> Result<T, HostReadError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(HostReadError::Socket)?;
    let task = tokio::spawn(connection);
    let result = read(&handle).await;
    task.abort();
    result
}

async fn dump_links(handle: &Handle) -> Result<Vec<LinkMessage>, HostReadError> {
    handle.link().get().execute().try_collect().await.map_err(|source| HostReadError::Dump { what: "links", source })
}

/// The named links with their addresses (the local address where there is one: on
/// point-to-point links `Address` is the peer's), in index order. Pure.
fn interfaces_of(links: &[LinkMessage], addresses: &[AddressMessage]) -> Vec<(String, Vec<IpNet>)> {
    let mut out: Vec<(u32, (String, Vec<IpNet>))> = links
        .iter()
        .filter_map(|l| {
            let name = decode::link_name(l)?.to_string();
            let addresses = addresses
                .iter()
                .filter(|a| a.header.index == l.header.index)
                .filter_map(|a| {
                    let attribute = |local: bool| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Local(ip) if local => Some(*ip),
                            AddressAttribute::Address(ip) if !local => Some(*ip),
                            _ => None,
                        })
                    };
                    IpNet::new(attribute(true).or_else(|| attribute(false))?, a.header.prefix_len).ok()
                })
                .collect();
            Some((l.header.index, (name, addresses)))
        })
        .collect();
    out.sort_by_key(|(index, _)| *index);
    out.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_route::link::LinkAttribute;

    use super::*;

    fn link(index: u32, name: Option<&str>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.extend(name.map(|n| LinkAttribute::IfName(n.to_string())));
        m
    }

    fn address(index: u32, prefix_len: u8, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = prefix_len;
        m.attributes = attributes;
        m
    }

    #[test]
    fn interfaces_come_in_index_order_with_their_local_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let links = [link(3, Some("eth1")), link(1, Some("lo")), link(2, Some("eth0")), link(4, None)];
        let addresses = [
            address(2, 24, vec![AddressAttribute::Address(ip("192.168.1.10"))]),
            // Point-to-point: `Address` is the peer's, `Local` this end's.
            address(3, 32, vec![AddressAttribute::Address(ip("10.9.9.2")), AddressAttribute::Local(ip("10.9.9.1"))]),
            address(2, 64, vec![AddressAttribute::Address(ip("fd00::10"))]),
            address(4, 24, vec![AddressAttribute::Local(ip("172.16.0.1"))]),
        ];
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            interfaces_of(&links, &addresses),
            vec![
                ("lo".to_string(), vec![]),
                ("eth0".to_string(), vec![net("192.168.1.10/24"), net("fd00::10/64")]),
                ("eth1".to_string(), vec![net("10.9.9.1/32")]),
            ],
            "a link without a name is left out"
        );
    }
}
