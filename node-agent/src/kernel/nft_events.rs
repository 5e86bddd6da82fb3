//! nftables change notifications: the `NFNLGRP_NFTABLES` multicast group of a
//! `NETLINK_NETFILTER` socket, filtered to Trellis' table (`inet trellis`).
//!
//! Every nftables object message (table, chain, rule, set, set element, object, flowtable)
//! names its table in attribute 1, right after the `nfgenmsg` header, so one small decoder
//! ([`concerns_table`], pure) decides whether a notification is about our table. Generation
//! messages (`NFT_MSG_NEWGEN`, one per committed batch) name none and are ignored. A receive
//! error (e.g. `ENOBUFS` after an overflow) may have hidden a change, so it counts as one.

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket};
use tokio::sync::mpsc;

use super::KernelError;
use super::netlink::KernelEvent;

/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFNLGRP_NFTABLES: u32 = 7;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of an nftables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWGEN`.
const NFT_MSG_NEWGEN: u16 = 15;
/// `NFPROTO_INET`, the family of table `inet trellis`.
pub const NFPROTO_INET: u8 = 1;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_HDRLEN: usize = 4;
/// Attribute type bits (without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The table named by one nftables netlink message (header included): (family, name).
pub(crate) fn table_of(message: &[u8]) -> Option<(u8, String)> {
    let kind = u16_at(message, 4)?;
    if kind >> 8 != NFNL_SUBSYS_NFTABLES || kind & 0xff == NFT_MSG_NEWGEN {
        return None;
    }
    let family = *message.get(NLMSG_HDRLEN)?;
    let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
    while at + NLA_HDRLEN <= message.len() {
        let len = usize::from(u16_at(message, at)?);
        let attr = u16_at(message, at + 2)? & NLA_TYPE_MASK;
        if len < NLA_HDRLEN {
            return None;
        }
        if attr == 1 {
            let value = message.get(at + NLA_HDRLEN..at + len)?;
            let name = value.split(|&b| b == 0).next()?;
            return Some((family, String::from_utf8_lossy(name).into_owned()));
        }
        at += align4(len);
    }
    None
}

/// Whether a datagram of nftables notifications (one or more netlink messages) touches table
/// `name` of `family`.
pub fn concerns_table(datagram: &[u8], family: u8, name: &str) -> bool {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= datagram.len() {
        let Some(len) = u32_at(datagram, at).and_then(|l| usize::try_from(l).ok()) else { return false };
        if len < NLMSG_HDRLEN || at + len > datagram.len() {
            return false;
        }
        if table_of(&datagram[at..at + len]).is_some_and(|(f, n)| f == family && n == name) {
            return true;
        }
        at += align4(len);
    }
    false
}

/// Sends a [`KernelEvent`] for every change to nftables table `inet <table>` in the calling
/// thread's network namespace (call inside a tokio runtime). Stops when the receiver is gone.
pub fn subscribe(table: &'static str, tx: mpsc::UnboundedSender<KernelEvent>) -> Result<(), KernelError> {
    let mut socket = TokioSocket::new(NETLINK_NETFILTER).map_err(KernelError::Socket)?;
    socket.socket_mut().bind_auto().map_err(KernelError::Socket)?;
    socket.socket_mut().add_membership(NFNLGRP_NFTABLES).map_err(KernelError::Socket)?;
    tokio::spawn(async move {
        loop {
            let changed = match socket.recv_from_full().await {
                Ok((datagram, _)) => concerns_table(&datagram, NFPROTO_INET, table),
                Err(error) => {
                    tracing::warn!(%error, "nftables notification lost; assuming a change");
                    true
                }
            };
            if changed && tx.send(KernelEvent).is_err() {
                break;
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: type, nfgenmsg family, attributes (type, value).
    fn message(kind: u16, family: u8, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 0, 0, 0];
        for (attr, value) in attrs {
            let len = NLA_HDRLEN + value.len();
            body.extend_from_slice(&u16::try_from(len).unwrap().to_ne_bytes());
            body.extend_from_slice(&attr.to_ne_bytes());
            body.extend_from_slice(value);
            body.resize(align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(NLMSG_HDRLEN + body.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&body);
        m
    }

    const DELTABLE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 2;
    const NEWRULE: u16 = (NFNL_SUBSYS_NFTABLES << 8) | 6;
    const NEWGEN: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;

    #[test]
    fn notifications_about_our_table_are_recognised() {
        let deleted = message(DELTABLE, NFPROTO_INET, &[(1, b"trellis\0"), (3, &[0, 0, 0, 1])]);
        assert!(concerns_table(&deleted, NFPROTO_INET, "trellis"));
        // A rule in our table, behind another table's message in the same datagram (nested
        // flag on the type bits must not matter).
        let mut batch = message(NEWRULE, NFPROTO_INET, &[(1 | 0x8000, b"other\0")]);
        batch.extend(message(NEWRULE, NFPROTO_INET, &[(1, b"trellis\0"), (2, b"postrouting\0")]));
        assert!(concerns_table(&batch, NFPROTO_INET, "trellis"));
    }

    #[test]
    fn other_tables_families_and_generation_messages_are_not_ours() {
        assert!(!concerns_table(&message(DELTABLE, NFPROTO_INET, &[(1, b"trellis-x\0")]), NFPROTO_INET, "trellis"));
        assert!(!concerns_table(&message(DELTABLE, 2, &[(1, b"trellis\0")]), NFPROTO_INET, "trellis"));
        assert!(!concerns_table(&message(NEWGEN, 0, &[(1, &[0, 0, 0, 5])]), NFPROTO_INET, "trellis"));
        // Another netfilter subsystem (conntrack = 1) and truncated input.
        assert!(!concerns_table(&message(1 << 8, NFPROTO_INET, &[(1, b"trellis\0")]), NFPROTO_INET, "trellis"));
        let whole = message(DELTABLE, NFPROTO_INET, &[(1, b"trellis\0")]);
        assert!(!concerns_table(&whole[..whole.len() - 6], NFPROTO_INET, "trellis"));
    }
}
