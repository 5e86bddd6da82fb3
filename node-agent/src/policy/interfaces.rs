//! Which host-side interface leads to a pod: the interface of the host route to the pod's
//! address (`<pod IP>/32 dev veth…`, which the CNI plugin installs), read with one netlink
//! dump of links and routes of the calling thread's network namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::route::RouteMessage;

use crate::kernel::netlink::decode;

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
        let names = decode::link_names(&links);
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
                .map_err(|source| InterfaceError::Dump { what: "routes", source })?;
            // A kernel without IPv6 answers an IPv6 dump with every family's routes.
            dump.retain(|r| r.header.address_family == family);
            routes.append(&mut dump);
        }
        let out = decode::host_route_interfaces(&routes, &names);
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
