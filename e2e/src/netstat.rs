//! A network namespace's protocol counters (`/proc/net/netstat` and `/proc/net/snmp`, what
//! `nstat` shows), read from a thread inside the namespace, so a test can say what kind of
//! TCP retransmissions a pod's connections made (timeouts, tail loss probes, reordering,
//! "fragmentation needed") between two snapshots.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::netns;

/// Counters by `Group:Name`, e.g. `TcpExt:TCPLossProbes`, `IcmpMsg:InType3`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<String, u64>);

impl Counters {
    /// The counters of the namespace `/run/netns/NAME` now.
    pub fn read(ns: &str) -> Result<Counters> {
        // /proc/thread-self: /proc/self/net would show the namespace of the main thread.
        let texts = netns::enter(ns, || {
            ["netstat", "snmp"].map(|f| std::fs::read_to_string(format!("/proc/thread-self/net/{f}")))
        })?;
        let mut out = Counters::default();
        for text in texts {
            let text = text.map_err(|e| Error::io(format!("[{ns}] read /proc/net counters"), e))?;
            out.0.extend(parse(&text).0);
        }
        Ok(out)
    }

    /// `name`'s increase from `before` to `self` (0 when absent).
    pub fn since(&self, before: &Counters, name: &str) -> u64 {
        let get = |c: &Counters| c.0.get(name).copied().unwrap_or(0);
        get(self).saturating_sub(get(before))
    }
}

/// Parses the `Group: Name Name…` / `Group: value value…` line pairs of /proc/net/{netstat,snmp}.
/// Negative values (a few gauges in `Tcp:`) and unparsable ones are skipped.
pub fn parse(text: &str) -> Counters {
    let mut out = Counters::default();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((group, names)), Some((vgroup, values))) = (names.split_once(':'), values.split_once(':')) else {
            continue;
        };
        if group != vgroup {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse::<u64>() {
                out.0.insert(format!("{group}:{name}"), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_lines_pair_names_with_values_per_group() {
        let text = "TcpExt: SyncookiesSent TCPLossProbes\nTcpExt: 0 7\nIcmpMsg: InType3 OutType0\nIcmpMsg: 2 5\nTcp: RtoAlgorithm MaxConn\nTcp: 1 -1\n";
        let c = parse(text);
        assert_eq!(c.0.get("TcpExt:TCPLossProbes"), Some(&7));
        assert_eq!(c.0.get("IcmpMsg:InType3"), Some(&2));
        assert_eq!(c.0.get("Tcp:MaxConn"), None, "negative gauge skipped");
        let later = parse("TcpExt: TCPLossProbes\nTcpExt: 10\n");
        assert_eq!(later.since(&c, "TcpExt:TCPLossProbes"), 3);
        assert_eq!(later.since(&c, "TcpExt:Missing"), 0);
    }
}
