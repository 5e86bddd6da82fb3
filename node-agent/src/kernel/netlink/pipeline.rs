//! Many netlink requests in flight at once, for the per-peer changes a pass makes by the
//! thousand (neighbours, FDB entries, routes).
//!
//! One request per round trip — what rtnetlink's handle and `ip -batch` do — costs two system
//! calls and a scheduler wake-up per object. Here up to [`WINDOW`] requests, each with
//! `NLM_F_ACK` and its own sequence number, go to the kernel in one datagram; the kernel
//! executes them strictly in order and answers each with an ack or an errno, matched back by
//! sequence number. The window is bounded so that all answers fit in the socket's receive
//! buffer (an answer that does not fit would be dropped by the kernel). The requests are the
//! same messages with the same flags the one-at-a-time path sends, so the kernel does exactly
//! the same; [`encode`] and [`decode_acks`] are pure, [`execute`] is the socket loop.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};

/// Requests per datagram. An answer occupies up to a page of receive buffer (socket buffer
/// overhead), so a window's answers fit in [`RECEIVE_BUFFER`] with room to spare.
pub const WINDOW: usize = 128;
const RECEIVE_BUFFER: usize = 1 << 20;
const HEADER_LEN: usize = 16;

/// One request: the message and its `NLM_F_*` flags besides `NLM_F_REQUEST | NLM_F_ACK`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub message: RouteNetlinkMessage,
    pub flags: u16,
}

/// Appends `requests` to `out` as netlink messages numbered from `first_sequence` on.
pub fn encode(requests: &[Request], first_sequence: u32, out: &mut Vec<u8>) {
    for (i, request) in requests.iter().enumerate() {
        let mut message = NetlinkMessage::from(request.message.clone());
        message.header.flags = NLM_F_REQUEST | NLM_F_ACK | request.flags;
        message.header.sequence_number = first_sequence.wrapping_add(i as u32);
        message.finalize();
        let start = out.len();
        out.resize(start + message.buffer_len(), 0);
        message.serialize(&mut out[start..]);
    }
}

/// The answers in one datagram from the kernel: (sequence number, errno, 0 for success).
/// Anything that is not an answer (none is expected) is skipped.
pub fn decode_acks(mut datagram: &[u8]) -> Result<Vec<(u32, i32)>, String> {
    let mut acks = Vec::new();
    while datagram.len() >= HEADER_LEN {
        let length = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
        if length < HEADER_LEN || length > datagram.len() {
            return Err(format!("malformed netlink answer: length {length} in {} bytes", datagram.len()));
        }
        let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[..length])
            .map_err(|e| format!("undecodable netlink answer: {e}"))?;
        if let NetlinkPayload::Error(error) = &message.payload {
            acks.push((message.header.sequence_number, error.code.map_or(0, |c| -c.get())));
        }
        // Messages are aligned to 4 bytes.
        datagram = datagram.get(length.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(acks)
}

/// Sends `requests` in order in the calling thread's network namespace. Returns each request's
/// errno (0 = success) in request order; `None` for requests without an answer, then with the
/// socket error that ended the batch.
pub async fn execute(requests: &[Request]) -> (Vec<Option<i32>>, Option<io::Error>) {
    let mut answers = vec![None; requests.len()];
    let error = run(requests, &mut answers).await.err();
    (answers, error)
}

async fn run(requests: &[Request], answers: &mut [Option<i32>]) -> io::Result<()> {
    let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
    {
        let s = socket.socket_mut();
        s.bind_auto()?;
        s.connect(&SocketAddr::new(0, 0))?;
        // Refusals without the request echoed back: smaller answers.
        s.set_cap_ack(true)?;
        s.set_rx_buf_sz(RECEIVE_BUFFER)?;
    }
    let mut buffer = Vec::new();
    let mut sequence: u32 = 1;
    for (chunk, answers) in requests.chunks(WINDOW).zip(answers.chunks_mut(WINDOW)) {
        buffer.clear();
        encode(chunk, sequence, &mut buffer);
        let sent = socket.send(&buffer).await?;
        if sent != buffer.len() {
            return Err(io::Error::other(format!("netlink: sent {sent} of {} bytes", buffer.len())));
        }
        let mut missing = chunk.len();
        while missing > 0 {
            let (datagram, _) = socket.recv_from_full().await?;
            for (seq, errno) in decode_acks(&datagram).map_err(io::Error::other)? {
                let index = seq.wrapping_sub(sequence) as usize;
                if let Some(slot @ None) = answers.get_mut(index) {
                    *slot = Some(errno);
                    missing -= 1;
                }
            }
        }
        sequence = sequence.wrapping_add(chunk.len() as u32);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{ErrorMessage, NLM_F_CREATE, NLM_F_REPLACE, NetlinkHeader};
    use netlink_packet_route::route::RouteMessage;

    use super::*;

    fn answer(sequence: u32, errno: i32) -> Vec<u8> {
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-errno);
        let mut message =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::<RouteNetlinkMessage>::Error(error));
        message.header.sequence_number = sequence;
        message.finalize();
        let mut out = vec![0; message.buffer_len()];
        message.serialize(&mut out);
        out
    }

    #[test]
    fn requests_are_numbered_in_order_and_ask_for_an_ack() {
        let request = Request {
            message: RouteNetlinkMessage::NewRoute(RouteMessage::default()),
            flags: NLM_F_CREATE | NLM_F_REPLACE,
        };
        let mut out = Vec::new();
        encode(&[request.clone(), request], 7, &mut out);
        let first = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&out).unwrap();
        let len = first.header.length as usize;
        let second = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&out[len..]).unwrap();
        assert_eq!((first.header.sequence_number, second.header.sequence_number), (7, 8));
        assert_eq!(first.header.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE);
        assert_eq!(out.len(), 2 * len);
    }

    #[test]
    fn acks_and_refusals_are_matched_by_sequence_number() {
        let mut datagram = answer(3, 0);
        datagram.extend(answer(4, 17));
        datagram.extend(answer(5, 0));
        assert_eq!(decode_acks(&datagram).unwrap(), vec![(3, 0), (4, 17), (5, 0)]);
        assert!(decode_acks(&datagram[..datagram.len() - 4]).is_err(), "a truncated answer is an error");
    }
}
