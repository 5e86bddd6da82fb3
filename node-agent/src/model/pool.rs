//! What a pool does on this node: its effective encapsulation, the phase of a live change, or why
//! it cannot be programmed.

use serde::{Deserialize, Serialize};
use trellis_api::EncapMode;

/// The outcome for one pool on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolPlan {
    pub name: String,
    /// The encapsulation senders use now (during a live change: the old one until Switch).
    pub encapsulation: Encapsulation,
    /// The phase of a live change this plan carries out, if one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Calico semantics: a disabled pool gets no new allocations (its blocks leave the CNI
    /// IPAM ranges) but existing blocks stay routed so running pods keep working.
    pub disabled: bool,
    /// Why this pool is not (fully) programmed, in words a human understands.
    pub error: Option<String>,
}

/// The phase of a live change on this node (see docs/live-changes.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Receive both the old and the new encapsulation; send with the old one.
    Receive,
    /// Receive both; send with the new one.
    Switch,
    /// Only the new one: the old receive side is removed.
    Cleanup,
}

impl Phase {
    /// The name used in the IPPool and NodeNetwork statuses.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Receive => "Receive",
            Phase::Switch => "Switch",
            Phase::Cleanup => "Cleanup",
        }
    }

    /// Parses a status' phase name.
    pub fn parse(s: &str) -> Option<Phase> {
        [Phase::Receive, Phase::Switch, Phase::Cleanup].into_iter().find(|p| p.as_str() == s)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The effective encapsulation of a pool (ipipMode and vxlanMode folded into one value).
/// Written as `None`, `IPIP/Always`, `VXLAN/CrossSubnet` … (also in NodeNetwork status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encapsulation {
    None,
    Ipip(EncapMode),
    Vxlan(EncapMode),
}

impl std::fmt::Display for Encapsulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encapsulation::None => f.write_str("None"),
            Encapsulation::Ipip(mode) => write!(f, "IPIP/{mode}"),
            Encapsulation::Vxlan(mode) => write!(f, "VXLAN/{mode}"),
        }
    }
}

impl Serialize for Encapsulation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Encapsulation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An encapsulation string that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("invalid encapsulation {0:?} (want None, IPIP/<mode> or VXLAN/<mode>, mode Always or CrossSubnet)")]
pub struct EncapsulationParseError(String);

impl std::str::FromStr for Encapsulation {
    type Err = EncapsulationParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || EncapsulationParseError(s.to_string());
        if s == "None" {
            return Ok(Encapsulation::None);
        }
        let (kind, mode) = s.split_once('/').ok_or_else(err)?;
        let mode = match mode {
            "Always" => EncapMode::Always,
            "CrossSubnet" => EncapMode::CrossSubnet,
            _ => return Err(err()),
        };
        match kind {
            "IPIP" => Ok(Encapsulation::Ipip(mode)),
            "VXLAN" => Ok(Encapsulation::Vxlan(mode)),
            _ => Err(err()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encapsulation_reads_and_writes_as_words() {
        for (e, text) in [
            (Encapsulation::None, "None"),
            (Encapsulation::Ipip(EncapMode::Always), "IPIP/Always"),
            (Encapsulation::Vxlan(EncapMode::CrossSubnet), "VXLAN/CrossSubnet"),
        ] {
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{text}\""));
            assert_eq!(text.parse::<Encapsulation>().unwrap(), e);
        }
        for bad in ["", "IPIP", "IPIP/Never", "GRE/Always", "VXLAN/always"] {
            assert!(bad.parse::<Encapsulation>().is_err(), "{bad}");
        }
    }
}
