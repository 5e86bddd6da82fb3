//! Whether one nftables table exists, asked over netlink (`NFT_MSG_GETTABLE` on a
//! `NETLINK_NETFILTER` socket) instead of running `nft list tables`: a pass that has no NAT to
//! program still has to find a table left by an earlier pass, and one request answers that
//! without starting a process.
//!
//! The request names the table (`NFTA_TABLE_NAME`); the kernel answers with the table
//! (`NFT_MSG_NEWTABLE`) or an error: `ENOENT` for no such table, `EOPNOTSUPP` /
//! `EPROTONOSUPPORT` when the kernel has no nf_tables at all (so no table either).
//! [`request`] and [`answer`] are pure; [`exists`] is the socket.

use netlink_sys::protocols::NETLINK_NETFILTER;
use netlink_sys::{Socket, SocketAddr};

use super::nft_events::table_of;

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE`.
const GETTABLE: u16 = (10 << 8) | 1;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE`.
const NEWTABLE: u16 = 10 << 8;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
/// `NFTA_TABLE_NAME`.
const TABLE_NAME: u16 = 1;
const ENOENT: i32 = 2;
const EOPNOTSUPP: i32 = 95;
const EPROTONOSUPPORT: i32 = 93;

/// The `NFT_MSG_GETTABLE` request for table `name` of `family` (an `NFPROTO_*`).
pub fn request(family: u8, name: &str, sequence: u32) -> Vec<u8> {
    let attr_len = 4 + name.len() + 1;
    let len = 16 + 4 + attr_len.next_multiple_of(4);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&GETTABLE.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&sequence.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version NFNETLINK_V0, res_id 0.
    m.extend_from_slice(&[family, 0, 0, 0]);
    m.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    m.extend_from_slice(&TABLE_NAME.to_ne_bytes());
    m.extend_from_slice(name.as_bytes());
    m.push(0);
    m.resize(len, 0);
    m
}

/// The kernel's answer to [`request`]: whether table `name` of `family` exists, or the errno
/// that is neither "no such table" nor "no nf_tables".
pub fn answer(datagram: &[u8], family: u8, name: &str) -> Result<bool, String> {
    let kind = datagram.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
    match kind {
        Some(NLMSG_ERROR) => {
            let code = datagram
                .get(16..20)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or("truncated netlink error")?;
            match -code {
                ENOENT | EOPNOTSUPP | EPROTONOSUPPORT => Ok(false),
                0 => Err("acknowledged without an answer".to_string()),
                errno => Err(std::io::Error::from_raw_os_error(errno).to_string()),
            }
        }
        Some(NEWTABLE) => Ok(table_of(datagram).is_some_and(|(f, n)| f == family && n == name)),
        Some(other) => Err(format!("unexpected netlink message type {other:#x}")),
        None => Err("empty netlink answer".to_string()),
    }
}

/// Whether the calling thread's network namespace has table `name` of `family`.
pub fn exists(family: u8, name: &str) -> std::io::Result<bool> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(family, name, 1), 0)?;
    let (datagram, _) = socket.recv_from_full()?;
    answer(&datagram, family, name).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::nft_events::NFPROTO_INET;

    fn reply(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m
    }

    fn error(errno: i32) -> Vec<u8> {
        let mut body = (-errno).to_ne_bytes().to_vec();
        body.extend(request(NFPROTO_INET, "trellis", 1)[..16].iter());
        reply(NLMSG_ERROR, &body)
    }

    #[test]
    fn the_request_names_the_table_and_its_family() {
        let m = request(NFPROTO_INET, "trellis", 7);
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), GETTABLE);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        // The same decoder that reads notifications finds the name in the request.
        assert_eq!(table_of(&m), Some((NFPROTO_INET, "trellis".to_string())));
    }

    #[test]
    fn the_table_answer_means_yes_and_enoent_means_no() {
        let mut table = vec![NFPROTO_INET, 0, 0, 0];
        table.extend_from_slice(&12u16.to_ne_bytes());
        table.extend_from_slice(&TABLE_NAME.to_ne_bytes());
        table.extend_from_slice(b"trellis\0");
        assert_eq!(answer(&reply(NEWTABLE, &table), NFPROTO_INET, "trellis"), Ok(true));
        assert_eq!(answer(&reply(NEWTABLE, &table), NFPROTO_INET, "other"), Ok(false));
        assert_eq!(answer(&error(ENOENT), NFPROTO_INET, "trellis"), Ok(false));
        assert_eq!(answer(&error(EOPNOTSUPP), NFPROTO_INET, "trellis"), Ok(false), "no nf_tables, no table");
        assert!(answer(&error(1), NFPROTO_INET, "trellis").is_err(), "EPERM is an error");
        assert!(answer(&[], NFPROTO_INET, "trellis").is_err());
    }
}
