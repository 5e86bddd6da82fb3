//! Routes: the ones Trellis installs, and the ones stamped as ours in shapes it never installs.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Routing protocol number stamped on every route Trellis installs (`ip route ... proto 0x54`,
/// shown by iproute2 as `proto 84`). Anything carrying it that is not desired is swept;
/// nothing without it is ever touched.
pub const ROUTE_PROTOCOL: u8 = 0x54;

/// One route Trellis owns (table main, default metric, no TOS or source).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub dst: IpNet,
    pub kind: RouteKind,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum RouteKind {
    /// `<dst> via <gateway> dev <dev> [onlink]`.
    Unicast { gateway: IpAddr, dev: String, onlink: bool },
    /// `blackhole <dst>`: the node's own blocks, so traffic to unallocated pod IPs dies here
    /// instead of bouncing back to the default route.
    Blackhole,
}

/// A route carrying our protocol that the planner never produces, with what identifies it for
/// deletion (`ip route del <type> <dst> [from <src>] table <table> proto 84 tos <tos> metric <metric>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StrayRoute {
    pub dst: IpNet,
    /// Source prefix (IPv6 `from`), if any.
    pub src: Option<IpNet>,
    pub table: u32,
    /// Route type as the kernel numbers it (`RTN_UNICAST` = 1, `RTN_UNREACHABLE` = 7, ...).
    pub route_type: u8,
    pub tos: u8,
    /// `RTA_PRIORITY`, when the kernel reports one.
    pub metric: Option<u32>,
}

impl StrayRoute {
    /// The iproute2 word for the route type.
    pub fn type_name(&self) -> String {
        match self.route_type {
            1 => "unicast".into(),
            2 => "local".into(),
            3 => "broadcast".into(),
            4 => "anycast".into(),
            5 => "multicast".into(),
            6 => "blackhole".into(),
            7 => "unreachable".into(),
            8 => "prohibit".into(),
            9 => "throw".into(),
            10 => "nat".into(),
            other => format!("type-{other}"),
        }
    }
}
