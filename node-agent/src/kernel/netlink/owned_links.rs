//! Which notifications may mean drift: the links carrying Trellis' owner mark, learnt from link
//! messages, narrow neighbour and address notifications to our devices. Pure.

use std::collections::BTreeSet;

use rtnetlink::packet_route::RouteNetlinkMessage;

use super::decode::owner_marked;
use crate::model::ROUTE_PROTOCOL;

/// Indexes of the links carrying Trellis' owner mark, kept up to date from link notifications,
/// so that neighbour and address notifications can be narrowed to our devices (ARP/ND churn
/// on the uplink and pod veths is constant and none of our business).
#[derive(Debug, Default)]
pub struct OwnedLinks(BTreeSet<u32>);

impl OwnedLinks {
    /// Learns from a link message (a dump entry or a notification).
    pub fn observe(&mut self, message: &RouteNetlinkMessage) {
        match message {
            RouteNetlinkMessage::NewLink(l) if owner_marked(l) => {
                self.0.insert(l.header.index);
            }
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                self.0.remove(&l.header.index);
            }
            _ => {}
        }
    }

    /// Whether a notification may mean drift of what Trellis owns.
    pub fn relevant(&self, message: &RouteNetlinkMessage) -> bool {
        match message {
            RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => true,
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                u8::from(r.header.protocol) == ROUTE_PROTOCOL
            }
            // Neighbours and FDB entries (family AF_BRIDGE) alike; a deletion does not carry
            // the entry's old state, so the device decides.
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                self.0.contains(&n.header.ifindex)
            }
            RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a) => self.0.contains(&a.header.index),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests;
