//! One nftables rule of a policy chain: conditions that must all hold, then a verdict. Rendered
//! as nft syntax (`ip saddr @pods-… th dport 80 return`).

use std::fmt;

use ipnet::IpNet;

use super::inputs::Protocol;

/// An IP family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(net: &IpNet) -> Family {
        if net.addr().is_ipv4() { Family::V4 } else { Family::V6 }
    }
    pub fn of_addr(addr: &std::net::IpAddr) -> Family {
        if addr.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    /// nft's payload protocol (`ip` / `ip6`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    /// Suffix of set names (`-v4` / `-v6`).
    pub fn suffix(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }
}

/// Which end of the packet a condition looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    Source,
    Destination,
}

impl End {
    fn addr(self) -> &'static str {
        match self {
            End::Source => "saddr",
            End::Destination => "daddr",
        }
    }
    fn port(self) -> &'static str {
        match self {
            End::Source => "sport",
            End::Destination => "dport",
        }
    }
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last { write!(f, "{}", self.first) } else { write!(f, "{}-{}", self.first, self.last) }
    }
}

/// A condition on a packet.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cond {
    /// The address is (not) in a named set of addresses.
    InSet { end: End, family: Family, set: String, negated: bool },
    /// The address is (not) in one of these networks (one family).
    Nets { end: End, family: Family, nets: Vec<IpNet>, negated: bool },
    /// The transport protocol.
    Protocol(Protocol),
    /// Any transport protocol but this one.
    NotProtocol(Protocol),
    /// The port is (not) in one of these ranges.
    Ports { end: End, ranges: Vec<Ports>, negated: bool },
    /// (address, protocol, port) of one end is (not) in a named set (named ports).
    AddrProtoPort { end: End, family: Family, set: String, negated: bool },
}

impl Cond {
    /// The family the condition implies, if any.
    pub fn family(&self) -> Option<Family> {
        match self {
            Cond::InSet { family, .. } | Cond::Nets { family, .. } | Cond::AddrProtoPort { family, .. } => {
                Some(*family)
            }
            Cond::Protocol(Protocol::Icmp) => Some(Family::V4),
            Cond::Protocol(Protocol::IcmpV6) => Some(Family::V6),
            Cond::Protocol(_) | Cond::NotProtocol(_) | Cond::Ports { .. } => None,
        }
    }
}

fn not(negated: bool) -> &'static str {
    if negated { "!= " } else { "" }
}

fn braced<T: fmt::Display>(items: &[T]) -> String {
    if let [one] = items {
        one.to_string()
    } else {
        format!("{{ {} }}", items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
    }
}

impl fmt::Display for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cond::InSet { end, family, set, negated } => {
                write!(f, "{} {} {}@{set}", family.nft(), end.addr(), not(*negated))
            }
            Cond::Nets { end, family, nets, negated } => {
                write!(f, "{} {} {}{}", family.nft(), end.addr(), not(*negated), braced(nets))
            }
            Cond::Protocol(p) => write!(f, "meta l4proto {}", p.nft()),
            Cond::NotProtocol(p) => write!(f, "meta l4proto != {}", p.nft()),
            Cond::Ports { end, ranges, negated } => write!(f, "th {} {}{}", end.port(), not(*negated), braced(ranges)),
            Cond::AddrProtoPort { end, family, set, negated } => {
                write!(f, "{} {} . meta l4proto . th {} {}@{set}", family.nft(), end.addr(), end.port(), not(*negated))
            }
        }
    }
}

/// What a rule does when its conditions hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Allowed by this stage: back to the base chain (the next stage, or accept).
    Allow,
    Drop,
    /// Log and go on with the next rule.
    Log(String),
    /// Continue in another chain and return from there to the base chain.
    Goto(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Allow => f.write_str("return"),
            Verdict::Drop => f.write_str("drop"),
            Verdict::Log(prefix) => write!(f, "log prefix \"{}\"", prefix.replace(['"', '\\'], "")),
            Verdict::Goto(chain) => write!(f, "goto {chain}"),
        }
    }
}

/// A rule: all conditions, then the verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Line {
    pub conds: Vec<Cond>,
    pub verdict: Verdict,
}

impl Line {
    pub fn new(conds: Vec<Cond>, verdict: Verdict) -> Line {
        Line { conds, verdict }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.conds {
            write!(f, "{c} ")?;
        }
        write!(f, "{}", self.verdict)
    }
}

/// Alternatives (any of) of condition lists (all of), with the family each implies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alternatives(pub Vec<Vec<Cond>>);

impl Alternatives {
    /// Matches everything.
    pub fn any() -> Alternatives {
        Alternatives(vec![Vec::new()])
    }
    /// Matches nothing.
    pub fn none() -> Alternatives {
        Alternatives(Vec::new())
    }
    pub fn one(conds: Vec<Cond>) -> Alternatives {
        Alternatives(vec![conds])
    }

    /// Every pair of alternatives that can hold together (no family conflict), concatenated.
    pub fn and(&self, other: &Alternatives) -> Alternatives {
        let family = |conds: &[Cond]| {
            let mut fams = conds.iter().filter_map(Cond::family);
            let first = fams.next();
            if fams.any(|f| Some(f) != first) { Err(()) } else { Ok(first) }
        };
        let mut out = Vec::new();
        for a in &self.0 {
            for b in &other.0 {
                let mut both = a.clone();
                both.extend(b.iter().cloned());
                if family(&both).is_ok() {
                    out.push(both);
                }
            }
        }
        Alternatives(out)
    }

    pub fn or(mut self, other: Alternatives) -> Alternatives {
        self.0.extend(other.0);
        self
    }

    /// One rule per alternative.
    pub fn lines(self, verdict: &Verdict) -> impl Iterator<Item = Line> + '_ {
        self.0.into_iter().map(|conds| Line::new(conds, verdict.clone()))
    }
}

/// Port ranges sorted, with overlapping and adjacent ones merged (anonymous interval sets
/// refuse overlapping elements).
pub fn merge_ports(mut ranges: Vec<Ports>) -> Vec<Ports> {
    ranges.sort();
    let mut out: Vec<Ports> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if u32::from(r.first) <= u32::from(last.last) + 1 => last.last = last.last.max(r.last),
            _ => out.push(r),
        }
    }
    out
}

/// Networks as conditions on one end: one alternative per family present (aggregated, so
/// anonymous interval sets never see overlapping elements).
pub fn nets(end: End, nets: &[IpNet], negated: bool) -> Alternatives {
    let mut out = Vec::new();
    for family in Family::BOTH {
        let of: Vec<IpNet> = nets.iter().filter(|n| Family::of(n) == family).map(IpNet::trunc).collect();
        if of.is_empty() {
            continue;
        }
        let mut merged = IpNet::aggregate(&of);
        merged.sort();
        out.push(vec![Cond::Nets { end, family, nets: merged, negated }]);
    }
    Alternatives(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn conditions_render_as_nft() {
        let line = Line::new(
            vec![
                Cond::InSet { end: End::Source, family: Family::V4, set: "pods-1-v4".into(), negated: false },
                Cond::Nets { end: End::Source, family: Family::V4, nets: vec![net("10.0.1.0/24")], negated: true },
                Cond::Protocol(Protocol::Tcp),
                Cond::Ports {
                    end: End::Destination,
                    ranges: vec![Ports { first: 80, last: 80 }, Ports { first: 90, last: 99 }],
                    negated: false,
                },
            ],
            Verdict::Allow,
        );
        assert_eq!(
            line.to_string(),
            "ip saddr @pods-1-v4 ip saddr != 10.0.1.0/24 meta l4proto tcp th dport { 80, 90-99 } return"
        );
        let named = Line::new(
            vec![Cond::AddrProtoPort {
                end: End::Destination,
                family: Family::V6,
                set: "np-2-v6".into(),
                negated: false,
            }],
            Verdict::Drop,
        );
        assert_eq!(named.to_string(), "ip6 daddr . meta l4proto . th dport @np-2-v6 drop");
        let negations = Line::new(
            vec![
                Cond::InSet { end: End::Destination, family: Family::V4, set: "pods-3-v4".into(), negated: true },
                Cond::NotProtocol(Protocol::Udp),
                Cond::Ports { end: End::Source, ranges: vec![Ports { first: 53, last: 53 }], negated: true },
                Cond::AddrProtoPort { end: End::Source, family: Family::V4, set: "ports-4-v4".into(), negated: true },
            ],
            Verdict::Allow,
        );
        assert_eq!(
            negations.to_string(),
            "ip daddr != @pods-3-v4 meta l4proto != udp th sport != 53 ip saddr . meta l4proto . th sport != @ports-4-v4 return"
        );
        assert_eq!(Line::new(vec![], Verdict::Log("a\"b".into())).to_string(), "log prefix \"ab\"");
    }

    #[test]
    fn port_ranges_merge_when_they_overlap_or_touch() {
        let p = |first, last| Ports { first, last };
        assert_eq!(
            merge_ports(vec![p(90, 99), p(80, 80), p(81, 85), p(95, 120), p(200, 200)]),
            [p(80, 85), p(90, 120), p(200, 200)]
        );
        assert_eq!(merge_ports(vec![p(65535, 65535), p(1, 65535)]), [p(1, 65535)]);
        assert!(merge_ports(vec![]).is_empty());
    }

    #[test]
    fn and_drops_combinations_of_different_families() {
        let addrs = nets(End::Source, &[net("10.0.0.0/8"), net("fd00::/8"), net("10.1.0.0/16")], false);
        assert_eq!(addrs.0.len(), 2, "one alternative per family, 10.1/16 merged into 10/8");
        let v4_set = Alternatives::one(vec![Cond::InSet {
            end: End::Destination,
            family: Family::V4,
            set: "s".into(),
            negated: false,
        }]);
        let both = addrs.and(&v4_set);
        assert_eq!(both.0.len(), 1);
        assert_eq!(
            both.0[0][0],
            Cond::Nets { end: End::Source, family: Family::V4, nets: vec![net("10.0.0.0/8")], negated: false }
        );
        assert!(Alternatives::none().and(&Alternatives::any()).0.is_empty());
        assert_eq!(Alternatives::any().and(&Alternatives::any()), Alternatives::any());
        let icmp6 = Alternatives::one(vec![Cond::Protocol(Protocol::IcmpV6)]);
        assert!(v4_set.and(&icmp6).0.is_empty());
    }
}
