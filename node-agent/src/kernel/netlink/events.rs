//! Triggers for a pass: kernel notifications (netlink multicast groups and the nftables table)
//! and, standalone, edits of the snapshot file.

use futures::{StreamExt, TryStreamExt};
use rtnetlink::MulticastGroup;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::LinkMessage;
use tokio::sync::mpsc;

use super::OwnedLinks;
use crate::kernel::{KernelError, nft_events};

/// Something changed that may need a pass: in the kernel (a link, one of our routes, a
/// neighbour, FDB entry or address on one of our devices, our nftables table) or, from
/// [`watch_file`], in the snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEvent;

/// Subscribes to link, IPv4/IPv6 route, neighbour and address notifications of the calling
/// thread's network namespace and to changes of the nftables table `inet trellis` (call inside
/// a tokio runtime). Each relevant notification becomes one [`KernelEvent`]; the reconcile
/// loop debounces them.
pub fn subscribe() -> Result<mpsc::UnboundedReceiver<KernelEvent>, KernelError> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    let (connection, handle, mut messages) =
        rtnetlink::new_multicast_connection(&groups).map_err(KernelError::Socket)?;
    tokio::spawn(connection);
    let (tx, rx) = mpsc::unbounded_channel();
    nft_events::subscribe(crate::nat::TABLE, tx.clone())?;
    tokio::spawn(async move {
        // The devices that exist already; notifications keep the set current from here on
        // (the subscription came first, so nothing in between is missed).
        let mut owned = OwnedLinks::default();
        match handle.link().get().execute().try_collect::<Vec<LinkMessage>>().await {
            Ok(links) => links.into_iter().for_each(|l| owned.observe(&RouteNetlinkMessage::NewLink(l))),
            Err(error) => tracing::warn!(%error, "cannot list links; our devices are learnt from notifications"),
        }
        while let Some((message, _)) = messages.next().await {
            if let NetlinkPayload::InnerMessage(inner) = &message.payload {
                owned.observe(inner);
                if owned.relevant(inner) && tx.send(KernelEvent).is_err() {
                    break;
                }
            }
        }
    });
    Ok(rx)
}

/// Sends a [`KernelEvent`] whenever `path`'s modification time or size changes (polled every
/// `interval`), so editing a standalone snapshot is applied within a second, not at the next
/// resync. Call inside a tokio runtime; stops when the receiver is gone.
pub fn watch_file(path: std::path::PathBuf, interval: std::time::Duration, tx: mpsc::UnboundedSender<KernelEvent>) {
    let stamp = move || std::fs::metadata(&path).ok().map(|m| (m.modified().ok(), m.len()));
    tokio::spawn(async move {
        let mut last = stamp();
        loop {
            tokio::time::sleep(interval).await;
            let now = stamp();
            if now != last {
                last = now;
                if tx.send(KernelEvent).is_err() {
                    break;
                }
            }
        }
    });
}
