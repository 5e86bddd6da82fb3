//! NAT-outgoing against the real nftables of a throw-away network namespace.
//!
//! Each test makes its own namespace ([`trellis_testkit::Netns`]: removed on drop, also when the
//! test fails) and runs `nat::sync` on a thread that has `setns()`-ed into it: the `nft`
//! processes it starts inherit that thread's namespace, so the host's ruleset is never touched. Assertions read the
//! namespace back with the `nft` CLI, independently of the code under test.

use ipnet::IpNet;
use serde_json::Value;
use trellis_agent::model::NatPlan;
use trellis_agent::nat::{self, TABLE};
use trellis_testkit::Netns;

/// A fresh namespace for one test (deleted on drop, also when the test fails).
fn namespace(tag: &str) -> Netns {
    Netns::unique(&format!("nat-{tag}")).unwrap()
}

/// What these tests do in a namespace: sync the table, and read nftables back with `nft`.
trait Nft {
    fn sync(&self, plan: &NatPlan) -> bool;
    fn nft(&self, args: &[&str]) -> String;
    fn tables(&self) -> Vec<(String, String)>;
    fn has_trellis(&self) -> bool;
    fn trellis(&self) -> Vec<Value>;
}

impl Nft for Netns {
    /// `nat::sync` on a thread inside the namespace (the `nft` it runs inherits it).
    fn sync(&self, plan: &NatPlan) -> bool {
        self.run(|| nat::sync(plan).unwrap())
    }

    /// `nft ARGS` inside the namespace; must succeed.
    fn nft(&self, args: &[&str]) -> String {
        self.exec("nft", args).unwrap()
    }

    fn tables(&self) -> Vec<(String, String)> {
        let v: Value = serde_json::from_str(&self.nft(&["-j", "list", "tables"])).unwrap();
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.get("table"))
            .map(|t| (t["family"].as_str().unwrap().to_string(), t["name"].as_str().unwrap().to_string()))
            .collect()
    }

    fn has_trellis(&self) -> bool {
        self.tables().contains(&("inet".to_string(), TABLE.to_string()))
    }

    /// The trellis table as nft lists it (JSON objects without the metainfo).
    fn trellis(&self) -> Vec<Value> {
        let v: Value = serde_json::from_str(&self.nft(&["-j", "list", "table", "inet", TABLE])).unwrap();
        v["nftables"].as_array().unwrap().iter().filter(|o| o.get("metainfo").is_none()).cloned().collect()
    }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn plan() -> NatPlan {
    NatPlan {
        nat_sources: nets(&["10.244.0.0/16", "fd00:244::/48"]),
        all_pools: nets(&["10.244.0.0/16", "10.250.0.0/16", "fd00:244::/48"]),
    }
}

/// Elements of a listed set, as CIDR strings.
fn elements(table: &[Value], set: &str) -> Vec<String> {
    let s =
        table.iter().filter_map(|o| o.get("set")).find(|s| s["name"] == set).unwrap_or_else(|| panic!("no set {set}"));
    s["elem"]
        .as_array()
        .map(|elems| {
            elems
                .iter()
                .map(|e| match e.get("prefix") {
                    Some(p) => format!("{}/{}", p["addr"].as_str().unwrap(), p["len"]),
                    None => e.as_str().unwrap().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "root: nftables in a netns"]
fn sync_installs_replaces_and_removes_only_its_table() {
    let ns = namespace("life");
    // A foreign table that must survive everything.
    ns.nft(&["add", "table", "ip", "foreign"]);
    ns.nft(&["add", "chain", "ip", "foreign", "c", "{ type filter hook output priority 0; }"]);

    assert!(ns.sync(&plan()), "first sync creates the table");
    let t = ns.trellis();
    assert_eq!(elements(&t, "nat-sources-v4"), ["10.244.0.0/16"]);
    assert_eq!(elements(&t, "all-pools-v4"), ["10.244.0.0/16", "10.250.0.0/16"]);
    assert_eq!(elements(&t, "nat-sources-v6"), ["fd00:244::/48"]);
    assert_eq!(elements(&t, "all-pools-v6"), ["fd00:244::/48"]);
    let chain = t.iter().filter_map(|o| o.get("chain")).find(|c| c["name"] == "postrouting").unwrap();
    assert_eq!(
        (&chain["type"], &chain["hook"], &chain["prio"], &chain["policy"]),
        (&Value::from("nat"), &Value::from("postrouting"), &Value::from(100), &Value::from("accept"))
    );
    // The rules, in nft's own words.
    let text = ns.nft(&["list", "chain", "inet", TABLE, "postrouting"]);
    assert!(text.contains("ip saddr @nat-sources-v4 ip daddr != @all-pools-v4 masquerade"), "{text}");
    assert!(text.contains("ip6 saddr @nat-sources-v6 ip6 daddr != @all-pools-v6 masquerade"), "{text}");
    assert_eq!(t.iter().filter(|o| o.get("rule").is_some()).count(), 2);

    assert!(!ns.sync(&plan()), "second sync changes nothing");

    // A changed plan replaces the content.
    let mut changed = plan();
    changed.nat_sources = nets(&["10.244.0.0/16"]);
    changed.all_pools.push("10.251.0.0/16".parse().unwrap());
    assert!(ns.sync(&changed));
    let t = ns.trellis();
    assert_eq!(elements(&t, "all-pools-v4"), ["10.244.0.0/16", "10.250.0.0/15"]);
    assert!(t.iter().filter_map(|o| o.get("set")).all(|s| s["name"] != "nat-sources-v6"), "IPv6 NAT gone");
    assert!(!ns.sync(&changed));

    // Drift: someone deletes our table; the next sync restores it.
    ns.nft(&["delete", "table", "inet", TABLE]);
    assert!(ns.sync(&changed));
    assert!(ns.has_trellis());
    assert!(!ns.sync(&changed));

    // Drift: someone edits a set or adds a rule.
    ns.nft(&["add", "element", "inet", TABLE, "all-pools-v4", "{ 192.168.0.0/16 }"]);
    assert!(ns.sync(&changed));
    assert_eq!(elements(&ns.trellis(), "all-pools-v4"), ["10.244.0.0/16", "10.250.0.0/15"]);
    ns.nft(&["add", "rule", "inet", TABLE, "postrouting", "counter"]);
    assert!(ns.sync(&changed));
    assert_eq!(ns.trellis().iter().filter(|o| o.get("rule").is_some()).count(), 1);

    // An empty plan removes the table, once.
    assert!(ns.sync(&NatPlan::default()));
    assert!(!ns.has_trellis());
    assert!(!ns.sync(&NatPlan::default()));
    assert!(ns.tables().contains(&("ip".to_string(), "foreign".to_string())), "foreign table survives");
    assert!(ns.nft(&["list", "table", "ip", "foreign"]).contains("hook output"));
}

#[test]
#[ignore = "root: nftables in a netns"]
fn plan_without_nat_never_creates_the_table() {
    let ns = namespace("none");
    let no_nat = NatPlan { nat_sources: vec![], all_pools: nets(&["10.244.0.0/16"]) };
    assert!(!ns.sync(&no_nat));
    assert!(!ns.has_trellis());
}

#[test]
#[ignore = "root: nftables in a netns"]
fn overlapping_pools_load_into_interval_sets() {
    let ns = namespace("overlap");
    let p = NatPlan {
        nat_sources: nets(&["10.244.0.0/16", "10.244.3.0/24", "10.0.0.1/32"]),
        all_pools: nets(&["10.244.0.0/16", "10.244.3.0/24", "10.0.0.1/32", "10.246.0.0/24", "10.246.1.0/25"]),
    };
    assert!(ns.sync(&p));
    let t = ns.trellis();
    assert_eq!(elements(&t, "nat-sources-v4"), ["10.0.0.1", "10.244.0.0/16"]);
    assert_eq!(elements(&t, "all-pools-v4"), ["10.0.0.1", "10.244.0.0/16", "10.246.0.0/24", "10.246.1.0/25"]);
    assert!(!ns.sync(&p), "listing normalizes back to the rendered content");
}
