//! The per-peer entries on the VXLAN device: neighbour (tunnel IP -> VTEP MAC) and FDB
//! (VTEP MAC -> node IP). Learning is off, so these are the only way packets find a peer.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::MacAddr;

/// A permanent neighbour entry: `ip neigh replace <ip> lladdr <mac> dev <dev> nud permanent`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Neighbour {
    pub dev: String,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A permanent FDB entry: `bridge fdb replace <mac> dev <dev> dst <dst> self permanent`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FdbEntry {
    pub dev: String,
    pub mac: MacAddr,
    pub dst: IpAddr,
}
