//! Admission of the Trellis API on the real API server: what `kubectl apply` / `kubectl patch`
//! users get for good and bad IPPool, Installation and GlobalNetworkPolicy manifests.
//!
//! The rules live in the generated CRDs (OpenAPI schema + CEL `x-kubernetes-validations`,
//! crds/src); these tests apply crds/yaml/*.yaml to the test bed's API server and feed it a
//! table of manifests, each with the expected verdict and a piece of the message, through
//! kube-rs and through the real kubectl binary. Every object a test creates has a unique name
//! and is deleted by a guard, because all tests share one server and run in parallel.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use trellis_e2e::apiserver::{ApiServer, FieldValidation, unique_name};

/// What the server must answer.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Accept,
    /// Rejected, and the message contains this.
    Reject(&'static str),
}
use Expect::{Accept, Reject};

struct Case {
    name: &'static str,
    manifest: Value,
    expect: Expect,
}

async fn server() -> Result<ApiServer> {
    let api = ApiServer::from_env().await?;
    api.apply_crds().await.context("applying crds/yaml")?;
    Ok(api)
}

fn ippool(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "trellis.dev/v1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec})
}

fn installation(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "trellis.dev/v1", "kind": "Installation", "metadata": {"name": name}, "spec": spec})
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

fn installation_pool(pool: Value) -> Value {
    json!({"network": {"ipPools": [pool]}})
}

/// IPPool manifests; `n` makes each name unique.
fn ippool_cases(n: &dyn Fn(&str) -> String) -> Vec<Case> {
    let c = |name: &'static str, spec: Value, expect| Case { name, manifest: ippool(&n(name), spec), expect };
    vec![
        c(
            "v4-full",
            json!({"cidr": "10.10.0.0/16", "blockSize": 26, "ipipMode": "CrossSubnet", "vxlanMode": "Never", "natOutgoing": true, "nodeSelector": "all()", "disabled": false}),
            Accept,
        ),
        c("v4-minimal", json!({"cidr": "10.11.0.0/16"}), Accept),
        c("v6-vxlan", json!({"cidr": "fd00:10:244::/56", "blockSize": 122, "vxlanMode": "Always"}), Accept),
        c(
            "v6-ipip-never",
            json!({"cidr": "fd00:10:245::/56", "ipipMode": "Never", "vxlanMode": "CrossSubnet"}),
            Accept,
        ),
        c("cidr-missing", json!({"blockSize": 26}), Reject("spec.cidr: Required value")),
        c("cidr-garbage", json!({"cidr": "not-a-cidr"}), Reject("spec.cidr must be a valid CIDR")),
        c("cidr-v4-prefix-33", json!({"cidr": "10.0.0.0/33"}), Reject("spec.cidr must be a valid CIDR")),
        c("cidr-v4-no-prefix", json!({"cidr": "10.0.0.0"}), Reject("spec.cidr must be a valid CIDR")),
        c("cidr-v6-bad-hex", json!({"cidr": "fd00::zz/64"}), Reject("spec.cidr must be a valid CIDR")),
        c("cidr-v4-host-bits", json!({"cidr": "10.0.0.1/16"}), Reject("spec.cidr must be in canonical form")),
        c("cidr-v6-host-bits", json!({"cidr": "fd00::1/64"}), Reject("spec.cidr must be in canonical form")),
        c("cidr-too-long", json!({"cidr": format!("10.0.0.0/{}", "1".repeat(70))}), Reject("spec.cidr: Too long")),
        c("block-v4-20", json!({"cidr": "10.12.0.0/16", "blockSize": 20}), Accept),
        c("block-v4-32", json!({"cidr": "10.13.0.0/16", "blockSize": 32}), Accept),
        c(
            "block-v4-19",
            json!({"cidr": "10.0.0.0/16", "blockSize": 19}),
            Reject("spec.blockSize must be between 20 and 32 for an IPv4 pool"),
        ),
        c(
            "block-v4-33",
            json!({"cidr": "10.0.0.0/16", "blockSize": 33}),
            Reject("spec.blockSize must be between 20 and 32 for an IPv4 pool"),
        ),
        c(
            "block-v4-ipv6-size",
            json!({"cidr": "10.0.0.0/16", "blockSize": 122}),
            Reject("spec.blockSize must be between 20 and 32 for an IPv4 pool"),
        ),
        c("block-v6-116", json!({"cidr": "fd00:10:246::/56", "blockSize": 116}), Accept),
        c("block-v6-128", json!({"cidr": "fd00:10:247::/56", "blockSize": 128}), Accept),
        c(
            "block-v6-115",
            json!({"cidr": "fd00::/56", "blockSize": 115}),
            Reject("between 116 and 128 for an IPv6 pool"),
        ),
        c(
            "block-v6-129",
            json!({"cidr": "fd00::/56", "blockSize": 129}),
            Reject("between 116 and 128 for an IPv6 pool"),
        ),
        c(
            "block-v6-ipv4-size",
            json!({"cidr": "fd00::/56", "blockSize": 26}),
            Reject("between 116 and 128 for an IPv6 pool"),
        ),
        c(
            "block-v4-larger-than-pool",
            json!({"cidr": "10.0.0.0/24", "blockSize": 22}),
            Reject("spec.blockSize must not be larger than the pool"),
        ),
        c("block-v4-equal-pool", json!({"cidr": "10.14.0.0/24", "blockSize": 24}), Accept),
        c(
            "block-v6-larger-than-pool",
            json!({"cidr": "fd00::/120", "blockSize": 118}),
            Reject("spec.blockSize must not be larger than the pool"),
        ),
        c(
            "block-not-integer",
            json!({"cidr": "10.0.0.0/16", "blockSize": "26"}),
            Reject("spec.blockSize in body must be of type integer"),
        ),
        c(
            "ipip-and-vxlan-always",
            json!({"cidr": "10.0.0.0/16", "ipipMode": "Always", "vxlanMode": "Always"}),
            Reject("spec.ipipMode and spec.vxlanMode cannot both be enabled"),
        ),
        c(
            "ipip-crosssubnet-vxlan-crosssubnet",
            json!({"cidr": "10.0.0.0/16", "ipipMode": "CrossSubnet", "vxlanMode": "CrossSubnet"}),
            Reject("cannot both be enabled"),
        ),
        c(
            "ipip-always-vxlan-never",
            json!({"cidr": "10.15.0.0/16", "ipipMode": "Always", "vxlanMode": "Never"}),
            Accept,
        ),
        c(
            "ipip-on-v6",
            json!({"cidr": "fd00::/56", "ipipMode": "Always"}),
            Reject("spec.ipipMode can only be enabled on an IPv4 pool"),
        ),
        c(
            "ipip-crosssubnet-on-v6",
            json!({"cidr": "fd00::/56", "ipipMode": "CrossSubnet"}),
            Reject("spec.ipipMode can only be enabled on an IPv4 pool"),
        ),
        c(
            "ipip-mode-lowercase",
            json!({"cidr": "10.0.0.0/16", "ipipMode": "always"}),
            Reject("spec.ipipMode: Unsupported value: \"always\""),
        ),
        c(
            "vxlan-mode-unknown",
            json!({"cidr": "10.0.0.0/16", "vxlanMode": "Sometimes"}),
            Reject("spec.vxlanMode: Unsupported value: \"Sometimes\""),
        ),
        c(
            "nat-not-bool",
            json!({"cidr": "10.0.0.0/16", "natOutgoing": "Enabled"}),
            Reject("spec.natOutgoing in body must be of type boolean"),
        ),
        c(
            "unknown-spec-field",
            json!({"cidr": "10.0.0.0/16", "ipipmode": "Always"}),
            Reject("unknown field \"spec.ipipmode\""),
        ),
        // Calico's later pool fields (issue 7: Calico manifests apply unchanged).
        c(
            "calico-all-fields",
            json!({"cidr": "10.16.0.0/16", "blockSize": 26, "ipipMode": "Always", "natOutgoing": true, "nodeSelector": "all()", "disabled": false, "allowedUses": ["Workload", "Tunnel"], "disableBGPExport": true, "assignmentMode": "Automatic"}),
            Accept,
        ),
        c("uses-workload", json!({"cidr": "10.17.0.0/16", "allowedUses": ["Workload"]}), Accept),
        c("uses-tunnel", json!({"cidr": "10.18.0.0/16", "allowedUses": ["Tunnel"]}), Accept),
        c("uses-empty", json!({"cidr": "10.19.0.0/16", "allowedUses": []}), Accept),
        c(
            "uses-loadbalancer",
            json!({"cidr": "10.20.0.0/24", "allowedUses": ["LoadBalancer"], "ipipMode": "Never", "vxlanMode": "Never"}),
            Accept,
        ),
        c(
            "uses-loadbalancer-and-workload",
            json!({"cidr": "10.0.0.0/24", "allowedUses": ["Workload", "LoadBalancer"]}),
            Reject("spec.allowedUses: LoadBalancer cannot be combined with Workload or Tunnel"),
        ),
        c(
            "uses-loadbalancer-vxlan",
            json!({"cidr": "10.0.0.0/24", "allowedUses": ["LoadBalancer"], "vxlanMode": "Always"}),
            Reject("spec.allowedUses: a LoadBalancer pool cannot use IP-in-IP or VXLAN"),
        ),
        c(
            "uses-unknown",
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["Workloads"]}),
            Reject("spec.allowedUses[0]: Unsupported value: \"Workloads\""),
        ),
        c(
            "uses-lowercase",
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["Workload", "tunnel"]}),
            Reject("spec.allowedUses[1]: Unsupported value: \"tunnel\""),
        ),
        c(
            "uses-duplicate",
            json!({"cidr": "10.0.0.0/16", "allowedUses": ["Tunnel", "Tunnel"]}),
            Reject("spec.allowedUses[1]: Duplicate value: \"Tunnel\""),
        ),
        c(
            "uses-not-a-list",
            json!({"cidr": "10.0.0.0/16", "allowedUses": "Workload"}),
            Reject("spec.allowedUses in body must be of type array"),
        ),
        c("bgp-export-false", json!({"cidr": "10.21.0.0/16", "disableBGPExport": false}), Accept),
        c(
            "bgp-export-not-bool",
            json!({"cidr": "10.0.0.0/16", "disableBGPExport": "maybe"}),
            Reject("spec.disableBGPExport in body must be of type boolean"),
        ),
        c(
            "bgp-export-calico-case",
            json!({"cidr": "10.0.0.0/16", "disableBgpExport": true}),
            Reject("unknown field \"spec.disableBgpExport\""),
        ),
        c("assignment-manual", json!({"cidr": "10.22.0.0/16", "assignmentMode": "Manual"}), Accept),
        c(
            "assignment-unknown",
            json!({"cidr": "10.0.0.0/16", "assignmentMode": "manual"}),
            Reject("spec.assignmentMode: Unsupported value: \"manual\""),
        ),
        // nodeSelector: Calico selector syntax, malformed ones refused at admission.
        c("selector-empty", json!({"cidr": "10.23.0.0/16", "nodeSelector": ""}), Accept),
        c("selector-not-all", json!({"cidr": "10.24.0.0/16", "nodeSelector": "!all()"}), Accept),
        c(
            "selector-os-and-worker",
            json!({"cidr": "10.25.0.0/16", "nodeSelector": "kubernetes.io/os == 'linux' && has(node-role.kubernetes.io/worker)"}),
            Accept,
        ),
        c(
            "selector-every-operator",
            json!({"cidr": "10.26.0.0/16", "nodeSelector": "(zone in {\"a\", 'b'} || zone not in {}) && !(rack != \")\") && host starts with 'n' && host ends with \"1\" && host contains '-'"}),
            Accept,
        ),
        c(
            "selector-unquoted-value",
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "kubernetes.io/os == linux"}),
            Reject("spec.nodeSelector must be a Calico selector"),
        ),
        c(
            "selector-single-equals",
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "location = \"rack1\""}),
            Reject("spec.nodeSelector must be a Calico selector"),
        ),
        c(
            "selector-unterminated-string",
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "location == \"rack1"}),
            Reject("spec.nodeSelector must be a Calico selector"),
        ),
        c(
            "selector-missing-operand",
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "has(a) &&"}),
            Reject("spec.nodeSelector must be a Calico selector"),
        ),
        c(
            "selector-empty-has",
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "has()"}),
            Reject("spec.nodeSelector must be a Calico selector"),
        ),
        c(
            "selector-unclosed-paren",
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "(has(a) || has(b)"}),
            Reject("spec.nodeSelector: parentheses must balance and nest at most 16 deep"),
        ),
        c(
            "selector-parens-out-of-order",
            json!({"cidr": "10.0.0.0/16", "nodeSelector": "has(a)) || (has(b)"}),
            Reject("spec.nodeSelector: parentheses must balance"),
        ),
    ]
}

/// Serializes the tests that use the name `default`: a server-side dry-run create fails with
/// AlreadyExists while the real one exists.
static INSTALLATION_DEFAULT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Installation manifests. The name must be `default` (a singleton), so they run as
/// server-side dry runs: full admission, nothing stored.
fn installation_cases() -> Vec<Case> {
    let c = |name: &'static str, spec: Value, expect| Case { name, manifest: installation("default", spec), expect };
    let mut cases = vec![
        c(
            "full",
            json!({"network": {"ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "VXLANCrossSubnet", "natOutgoing": "Enabled", "blockSize": 26, "nodeSelector": "all()"}], "mtu": 1450, "nodeAddressAutodetection": {"firstFound": true}}, "cni": {"binDir": "/opt/cni/bin", "confDir": "/etc/cni/net.d"}}),
            Accept,
        ),
        c("empty-spec", json!({}), Accept),
        c(
            "dual-stack",
            json!({"network": {"ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "IPIP"}, {"cidr": "fd00:10:244::/56", "encapsulation": "VXLAN", "blockSize": 122}]}}),
            Accept,
        ),
        c(
            "encap-ipipcrosssubnet",
            installation_pool(json!({"cidr": "10.244.0.0/16", "encapsulation": "IPIPCrossSubnet"})),
            Accept,
        ),
        c(
            "encap-none",
            installation_pool(json!({"cidr": "10.244.0.0/16", "encapsulation": "None", "natOutgoing": "Disabled"})),
            Accept,
        ),
        c(
            "encap-unknown",
            installation_pool(json!({"cidr": "10.244.0.0/16", "encapsulation": "GRE"})),
            Reject("Unsupported value: \"GRE\""),
        ),
        c(
            "encap-calico-case",
            installation_pool(json!({"cidr": "10.244.0.0/16", "encapsulation": "Vxlan"})),
            Reject("Unsupported value: \"Vxlan\""),
        ),
        c(
            "nat-bool",
            installation_pool(json!({"cidr": "10.244.0.0/16", "natOutgoing": "true"})),
            Reject("Unsupported value: \"true\""),
        ),
        c(
            "pool-cidr-garbage",
            installation_pool(json!({"cidr": "10.244.0/16"})),
            Reject("ipPools[].cidr must be a valid CIDR"),
        ),
        c(
            "pool-cidr-host-bits",
            installation_pool(json!({"cidr": "10.244.1.0/16"})),
            Reject("ipPools[].cidr must be in canonical form"),
        ),
        c(
            "pool-cidr-missing",
            installation_pool(json!({"encapsulation": "VXLAN"})),
            Reject("spec.network.ipPools[0].cidr: Required value"),
        ),
        c(
            "pool-block-v4-33",
            installation_pool(json!({"cidr": "10.244.0.0/16", "blockSize": 33})),
            Reject("ipPools[].blockSize must be between 20 and 32 for an IPv4 pool"),
        ),
        c(
            "pool-block-v6-64",
            installation_pool(json!({"cidr": "fd00::/48", "blockSize": 64})),
            Reject("between 116 and 128 for an IPv6 pool"),
        ),
        c(
            "pool-block-larger-than-pool",
            installation_pool(json!({"cidr": "10.244.0.0/24", "blockSize": 20})),
            Reject("ipPools[].blockSize must not be larger than the pool"),
        ),
        c(
            "pool-ipip-on-v6",
            installation_pool(json!({"cidr": "fd00::/48", "encapsulation": "IPIP"})),
            Reject("IPIP and IPIPCrossSubnet are only valid for IPv4 pools"),
        ),
        c("mtu-576", json!({"network": {"mtu": 576}}), Accept),
        c("mtu-9216", json!({"network": {"mtu": 9216}}), Accept),
        c("mtu-575", json!({"network": {"mtu": 575}}), Reject("mtu must be between 576 and 9216")),
        c("mtu-9217", json!({"network": {"mtu": 9217}}), Reject("mtu must be between 576 and 9216")),
        c("autodetect-interface", json!({"network": {"nodeAddressAutodetection": {"interface": "eth.*"}}}), Accept),
        c(
            "autodetect-kubernetes",
            json!({"network": {"nodeAddressAutodetection": {"kubernetes": "NodeInternalIP"}}}),
            Accept,
        ),
        c(
            "autodetect-cidrs",
            json!({"network": {"nodeAddressAutodetection": {"cidrs": ["192.168.1.0/24", "fd00::/64"]}}}),
            Accept,
        ),
        c(
            "autodetect-firstfound-false-and-canreach",
            json!({"network": {"nodeAddressAutodetection": {"firstFound": false, "canReach": "8.8.8.8"}}}),
            Accept,
        ),
        c(
            "autodetect-two-methods",
            json!({"network": {"nodeAddressAutodetection": {"interface": "eth0", "canReach": "8.8.8.8"}}}),
            Reject("set at most one of firstFound, interface, skipInterface, canReach, cidrs, kubernetes"),
        ),
        c(
            "autodetect-firstfound-and-cidrs",
            json!({"network": {"nodeAddressAutodetection": {"firstFound": true, "cidrs": ["10.0.0.0/8"]}}}),
            Reject("set at most one of"),
        ),
        c(
            "autodetect-kubernetes-external",
            json!({"network": {"nodeAddressAutodetection": {"kubernetes": "ExternalIP"}}}),
            Reject("Unsupported value: \"ExternalIP\""),
        ),
        c(
            "autodetect-cidrs-garbage",
            json!({"network": {"nodeAddressAutodetection": {"cidrs": ["eth0"]}}}),
            Reject("cidrs must all be valid CIDRs"),
        ),
        c(
            "too-many-pools",
            json!({"network": {"ipPools": (0..17).map(|i| json!({"cidr": format!("10.{i}.0.0/16")})).collect::<Vec<_>>()}}),
            Reject("must have at most 16 items"),
        ),
        c(
            "unknown-network-field",
            json!({"network": {"ipPools": [], "ipipMode": "Always"}}),
            Reject("unknown field \"spec.network.ipipMode\""),
        ),
        // The Tigera operator's spelling (issue 7: Calico manifests apply unchanged).
        c(
            "tigera-calico-network",
            json!({"calicoNetwork": {"ipPools": [{"blockSize": 24, "cidr": "10.244.0.0/16", "encapsulation": "IPIPCrossSubnet", "natOutgoing": "Enabled", "nodeSelector": "all()"}], "mtu": 1440, "nodeAddressAutodetectionV4": {"firstFound": true}}}),
            Accept,
        ),
        c(
            "tigera-v4-and-v6-autodetection",
            json!({"calicoNetwork": {"nodeAddressAutodetectionV4": {"canReach": "8.8.8.8"}, "nodeAddressAutodetectionV6": {"cidrs": ["fd00::/64"]}}}),
            Accept,
        ),
        c(
            "v4-alias-under-network",
            json!({"network": {"nodeAddressAutodetectionV4": {"kubernetes": "NodeInternalIP"}}}),
            Accept,
        ),
        c(
            "network-and-calico-network",
            json!({"network": {"mtu": 1400}, "calicoNetwork": {"mtu": 1400}}),
            Reject("spec.network and spec.calicoNetwork are the same setting"),
        ),
        c(
            "autodetection-and-v4",
            json!({"calicoNetwork": {"nodeAddressAutodetection": {"firstFound": true}, "nodeAddressAutodetectionV4": {"firstFound": true}}}),
            Reject("nodeAddressAutodetection and nodeAddressAutodetectionV4 are the same setting"),
        ),
        c(
            "tigera-mtu-too-small",
            json!({"calicoNetwork": {"mtu": 100}}),
            Reject("spec.calicoNetwork.mtu: Invalid value: 100: mtu must be between 576 and 9216"),
        ),
        c(
            "tigera-v4-two-methods",
            json!({"calicoNetwork": {"nodeAddressAutodetectionV4": {"interface": "eth0", "canReach": "8.8.8.8"}}}),
            Reject("set at most one of firstFound, interface, skipInterface, canReach, cidrs, kubernetes"),
        ),
        c(
            "tigera-v6-bad-cidr",
            json!({"calicoNetwork": {"nodeAddressAutodetectionV6": {"cidrs": ["eth0"]}}}),
            Reject("cidrs must all be valid CIDRs"),
        ),
        c(
            "tigera-pool-encap-typo",
            json!({"calicoNetwork": {"ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "IPIPCrossSubnets"}]}}),
            Reject("Unsupported value: \"IPIPCrossSubnets\""),
        ),
        c(
            "tigera-pool-bad-selector",
            json!({"calicoNetwork": {"ipPools": [{"cidr": "10.244.0.0/16", "nodeSelector": "all"}]}}),
            Reject("ipPools[].nodeSelector must be a Calico selector"),
        ),
        c(
            "pool-unbalanced-selector",
            installation_pool(json!({"cidr": "10.244.0.0/16", "nodeSelector": "!(has(a)"})),
            Reject("ipPools[].nodeSelector: parentheses must balance"),
        ),
        // Only the Tigera fields the issue lists: others stay unknown fields.
        c(
            "tigera-unlisted-field",
            json!({"calicoNetwork": {"bgp": "Enabled"}}),
            Reject("unknown field \"spec.calicoNetwork.bgp\""),
        ),
    ];
    cases.push(Case {
        name: "name-not-default",
        manifest: installation("trellis", json!({})),
        expect: Reject("metadata.name must be 'default'"),
    });
    cases
}

/// Checks one server answer against a case; returns a line for the failure report, if any.
fn judge(case: &Case, verdict: std::result::Result<(), String>) -> Option<String> {
    match (case.expect, verdict) {
        (Accept, Ok(())) => None,
        (Accept, Err(msg)) => Some(format!("{}: expected accept, got: {msg}", case.name)),
        (Reject(_), Ok(())) => Some(format!("{}: expected rejection, was accepted", case.name)),
        (Reject(want), Err(msg)) if msg.contains(want) => None,
        (Reject(want), Err(msg)) => Some(format!("{}: rejection message lacks {want:?}: {msg}", case.name)),
    }
}

fn report(what: &str, cases: &[Case], failures: Vec<String>) -> Result<()> {
    let mut text = String::new();
    for f in &failures {
        let _ = writeln!(text, "  {f}");
    }
    ensure!(failures.is_empty(), "{what}: {} of {} cases wrong:\n{text}", failures.len(), cases.len());
    eprintln!("{what}: {} cases as expected", cases.len());
    Ok(())
}

/// Runs cases through kube-rs (strict field validation, as kubectl sends).
async fn run_kube(api: &ApiServer, cases: &[Case], dry_run: bool) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for case in cases {
        let manifest = yaml(&case.manifest);
        let _guard = if dry_run { None } else { Some(api.cleanup(&manifest)?) };
        let verdict = match api.create_yaml(&manifest, FieldValidation::Strict, dry_run).await {
            Ok(obj) => {
                // What admission let through is the manifest, field for field (nothing pruned).
                if dry_run && obj.data["spec"] != case.manifest["spec"] {
                    failures.push(format!("{}: admitted spec differs: {}", case.name, obj.data["spec"]));
                }
                Ok(())
            }
            Err(e) => match e.status() {
                // A refusal must be the client's fault (400 bad request, 422 invalid).
                Some(s) if s.code == 400 || s.code == 422 => Err(s.message.clone()),
                _ => return Err(e).with_context(|| format!("case {}", case.name)),
            },
        };
        if !dry_run {
            // Accepted objects are stored as sent; rejected ones are not stored at all.
            let stored = api.get_like(&manifest).await;
            match (&verdict, stored) {
                (Ok(()), Ok(obj)) if obj.data["spec"] == case.manifest["spec"] => {}
                (Ok(()), Ok(obj)) => failures.push(format!("{}: stored spec differs: {}", case.name, obj.data["spec"])),
                (Ok(()), Err(e)) => failures.push(format!("{}: accepted but not readable: {e}", case.name)),
                (Err(_), Ok(_)) => failures.push(format!("{}: rejected but stored", case.name)),
                (Err(_), Err(e)) if e.status().is_some_and(|s| s.is_not_found()) => {}
                (Err(_), Err(e)) => failures.push(format!("{}: reading back: {e}", case.name)),
            }
        }
        failures.extend(judge(case, verdict));
    }
    Ok(failures)
}

/// Runs cases through `kubectl create --dry-run=server -f -`: exit status and stderr.
fn run_kubectl(api: &ApiServer, cases: &[Case]) -> Result<Vec<String>> {
    let mut failures = Vec::new();
    for case in cases {
        let out = api.kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &yaml(&case.manifest))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let verdict = if out.status.success() { Ok(()) } else { Err(format!("exit {}: {stderr}", out.status)) };
        if let (Accept, Ok(())) = (case.expect, &verdict) {
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !stdout.contains("created (server dry run)") {
                failures.push(format!("{}: unexpected kubectl output: {stdout}", case.name));
            }
        }
        failures.extend(judge(case, verdict));
    }
    Ok(failures)
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn ippool_admission_table() -> Result<()> {
    let api = server().await?;
    let cases = ippool_cases(&|case| unique_name(&format!("adm-{case}")));
    ensure!(cases.len() >= 30, "the table must cover every rule");
    let failures = run_kube(&api, &cases, false).await?;
    report("IPPool via kube-rs", &cases, failures)
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn ippool_admission_table_kubectl() -> Result<()> {
    let api = server().await?;
    let cases = ippool_cases(&|case| unique_name(&format!("adk-{case}")));
    let failures = run_kubectl(&api, &cases)?;
    report("IPPool via kubectl", &cases, failures)
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn installation_admission_table() -> Result<()> {
    let api = server().await?;
    let _singleton = INSTALLATION_DEFAULT.lock().await;
    let cases = installation_cases();
    let failures = run_kube(&api, &cases, true).await?;
    report("Installation via kube-rs (dry run)", &cases, failures)
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn installation_admission_table_kubectl() -> Result<()> {
    let api = server().await?;
    let _singleton = INSTALLATION_DEFAULT.lock().await;
    let cases = installation_cases();
    let failures = run_kubectl(&api, &cases)?;
    report("Installation via kubectl (dry run)", &cases, failures)
}

fn global_policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "trellis.dev/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": spec})
}

/// GlobalNetworkPolicy manifests (Calico's shape); `n` makes each name unique.
fn global_policy_cases(n: &dyn Fn(&str) -> String) -> Vec<Case> {
    let c = |name: &'static str, spec: Value, expect| Case { name, manifest: global_policy(&n(name), spec), expect };
    let allow_dns = json!({"action": "Allow", "protocol": "UDP", "destination": {"selector": "k8s-app == 'kube-dns'", "ports": [53]}});
    vec![
        c("default-deny", json!({"selector": "all()", "types": ["Ingress", "Egress"]}), Accept),
        c(
            "calico-lab-allow-dns",
            json!({"order": 100, "selector": "projectcalico.org/namespace != 'kube-system'", "types": ["Egress"], "egress": [allow_dns]}),
            Accept,
        ),
        c(
            "every-field",
            json!({"order": 10.5, "selector": "has(app) && tier in {'web', 'api'}", "namespaceSelector": "team == 'a'",
                   "ingress": [{"action": "Log"}, {"action": "Pass"},
                               {"action": "Deny", "protocol": "TCP", "source": {"nets": ["10.0.0.0/8", "192.168.1.1"], "notNets": ["10.1.0.0/16"], "namespaceSelector": "all()", "ports": [80, "8000:8080"]}, "destination": {"ports": [443]}}],
                   "egress": [{"action": "Allow", "protocol": "ICMP"}]}),
            Accept,
        ),
        c("bad-selector", json!({"selector": "app = 'web'"}), Reject("spec.selector must be a Calico selector")),
        c(
            "unbalanced-selector",
            json!({"selector": "(app == 'web'"}),
            Reject("spec.selector: parentheses must balance"),
        ),
        c(
            "bad-namespace-selector",
            json!({"namespaceSelector": "team == web"}),
            Reject("spec.namespaceSelector must be a Calico selector"),
        ),
        c(
            "bad-rule-selector",
            json!({"ingress": [{"action": "Allow", "source": {"selector": "has(app"}}]}),
            Reject("selector must be a Calico selector"),
        ),
        c("bad-action", json!({"ingress": [{"action": "Accept"}]}), Reject("Unsupported value: \"Accept\"")),
        c("bad-type", json!({"types": ["Forward"]}), Reject("Unsupported value: \"Forward\"")),
        c(
            "bad-protocol",
            json!({"egress": [{"action": "Allow", "protocol": "GRE"}]}),
            Reject("Unsupported value: \"GRE\""),
        ),
        c(
            "ports-without-protocol",
            json!({"egress": [{"action": "Allow", "destination": {"ports": [53]}}]}),
            Reject("ports need a protocol with ports"),
        ),
        c(
            "ports-with-icmp",
            json!({"egress": [{"action": "Allow", "protocol": "ICMP", "destination": {"ports": [53]}}]}),
            Reject("ports need a protocol with ports"),
        ),
        c(
            "port-out-of-range",
            json!({"egress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [70000]}}]}),
            Reject("ports must be numbers 1-65535"),
        ),
        c(
            "bad-net",
            json!({"egress": [{"action": "Allow", "destination": {"nets": ["10.0.0.0/33"]}}]}),
            Reject("nets must be CIDRs"),
        ),
        c(
            "bad-not-net",
            json!({"ingress": [{"action": "Allow", "source": {"notNets": ["example.com"]}}]}),
            Reject("notNets must be CIDRs"),
        ),
        c(
            "named-ports-and-negations",
            json!({"selector": "all()",
                   "ingress": [{"action": "Allow", "protocol": "TCP", "notProtocol": "UDP",
                                "source": {"notSelector": "role == 'bad'", "notPorts": ["ephemeral", 7, "100:200"]},
                                "destination": {"ports": ["http", 8080, "9000:9100"], "notPorts": ["metrics"]}}]}),
            Accept,
        ),
        c(
            "not-ports-without-protocol",
            json!({"ingress": [{"action": "Allow", "destination": {"notPorts": [80]}}]}),
            Reject("notPorts need a protocol with ports"),
        ),
        c(
            "port-name-too-long",
            json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["a-very-long-port-name"]}}]}),
            Reject("ports must be numbers 1-65535, ranges such as 8000:8080 or port names"),
        ),
        c(
            "bad-not-selector",
            json!({"ingress": [{"action": "Allow", "source": {"notSelector": "app = 'web'"}}]}),
            Reject("notSelector must be a Calico selector"),
        ),
        c("unsupported-calico-field", json!({"doNotTrack": true}), Reject("unknown field \"spec.doNotTrack\"")),
    ]
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn global_network_policy_admission_table() -> Result<()> {
    let api = server().await?;
    let cases = global_policy_cases(&|case| unique_name(&format!("gnp-{case}")));
    let failures = run_kube(&api, &cases, false).await?;
    report("GlobalNetworkPolicy via kube-rs", &cases, failures)
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn global_network_policy_admission_table_kubectl() -> Result<()> {
    let api = server().await?;
    let cases = global_policy_cases(&|case| unique_name(&format!("gnk-{case}")));
    let failures = run_kubectl(&api, &cases)?;
    report("GlobalNetworkPolicy via kubectl", &cases, failures)
}

/// The merge patches users run on a live pool, in order, with the spec expected afterwards.
/// Rejected patches must leave the spec as it was.
fn patch_steps() -> Vec<(&'static str, Value, Expect)> {
    vec![
        ("ipip-always", json!({"spec": {"ipipMode": "Always"}}), Accept),
        ("ipip-back-to-crosssubnet", json!({"spec": {"ipipMode": "CrossSubnet"}}), Accept),
        (
            "vxlan-while-ipip-crosssubnet",
            json!({"spec": {"vxlanMode": "Always"}}),
            Reject("spec.ipipMode and spec.vxlanMode cannot both be enabled"),
        ),
        ("ipip-never", json!({"spec": {"ipipMode": "Never"}}), Accept),
        ("vxlan-always-after-ipip-never", json!({"spec": {"vxlanMode": "Always"}}), Accept),
        (
            "ipip-always-while-vxlan-always",
            json!({"spec": {"ipipMode": "Always"}}),
            Reject("spec.ipipMode and spec.vxlanMode cannot both be enabled"),
        ),
        ("switch-back-in-one-patch", json!({"spec": {"ipipMode": "CrossSubnet", "vxlanMode": "Never"}}), Accept),
        ("ipip-mode-typo", json!({"spec": {"ipipMode": "always"}}), Reject("Unsupported value: \"always\"")),
        ("nat-off", json!({"spec": {"natOutgoing": false}}), Accept),
        ("cidr-change", json!({"spec": {"cidr": "10.99.0.0/16"}}), Reject("spec.cidr is immutable")),
        ("cidr-host-bits", json!({"spec": {"cidr": "10.98.0.1/16"}}), Reject("spec.cidr is immutable")),
        ("blocksize-change", json!({"spec": {"blockSize": 27}}), Reject("spec.blockSize is immutable")),
        ("blocksize-removed", json!({"spec": {"blockSize": null}}), Reject("spec.blockSize is immutable")),
        ("disable", json!({"spec": {"disabled": true}}), Accept),
    ]
}

fn patched_pool(name: &str, octet: u8) -> Value {
    ippool(
        name,
        json!({"cidr": format!("10.{octet}.0.0/16"), "blockSize": 26, "ipipMode": "CrossSubnet", "natOutgoing": true}),
    )
}

/// Applies a JSON merge patch to a JSON value (RFC 7396), to know the spec a patch should give.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn ippool_merge_patches_kube_rs() -> Result<()> {
    let api = server().await?;
    let pool = patched_pool(&unique_name("patch-kube"), 60);
    let manifest = yaml(&pool);
    let _guard = api.cleanup(&manifest)?;
    let created = api.create_yaml(&manifest, FieldValidation::Strict, false).await?;
    let mut spec = pool["spec"].clone();
    let mut generation = created.metadata.generation.context("no generation")?;
    let mut failures = Vec::new();
    let steps = patch_steps();
    for (step, patch, expect) in &steps {
        let verdict = match api.merge_patch(&manifest, patch).await {
            Ok(_) => Ok(()),
            Err(e) => match e.status() {
                Some(s) if s.code == 422 => Err(s.message.clone()),
                _ => return Err(e).with_context(|| format!("step {step}")),
            },
        };
        if verdict.is_ok() {
            merge(&mut spec, &patch["spec"]);
            generation += 1;
        }
        let case = Case { name: step, manifest: Value::Null, expect: *expect };
        failures.extend(judge(&case, verdict));
        let now = api.get_like(&manifest).await?;
        if now.data["spec"] != spec {
            failures.push(format!("{step}: spec is {} expected {spec}", now.data["spec"]));
        }
        if now.metadata.generation != Some(generation) {
            failures.push(format!("{step}: generation {:?} expected {generation}", now.metadata.generation));
        }
    }
    ensure!(failures.is_empty(), "merge patches via kube-rs:\n  {}", failures.join("\n  "));
    Ok(())
}

#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn ippool_merge_patches_kubectl() -> Result<()> {
    let api = server().await?;
    let name = unique_name("patch-kubectl");
    let pool = patched_pool(&name, 61);
    let manifest = yaml(&pool);
    let _guard = api.cleanup(&manifest)?;
    let out = api.kubectl_stdin(&["apply", "-f", "-"], &manifest)?;
    ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    let mut spec = pool["spec"].clone();
    let mut failures = Vec::new();
    for (step, patch, expect) in patch_steps() {
        let p = patch.to_string();
        let out = api.kubectl(&["patch", "ippool", &name, "--type", "merge", "-p", &p])?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let verdict = if out.status.success() {
            ensure!(stdout.contains(&format!("ippool.trellis.dev/{name} patched")), "{step}: kubectl said {stdout}");
            merge(&mut spec, &patch["spec"]);
            Ok(())
        } else {
            ensure!(out.status.code() == Some(1), "{step}: kubectl exit {} {stderr}", out.status);
            // kubectl prints the server's message after naming the object.
            ensure!(stderr.contains(&format!("The IPPool \"{name}\" is invalid")), "{step}: kubectl said {stderr}");
            Err(stderr)
        };
        failures.extend(judge(&Case { name: step, manifest: Value::Null, expect }, verdict));
        let out = api.kubectl(&["get", "ippool", &name, "-o", "json"])?;
        ensure!(out.status.success(), "kubectl get: {}", String::from_utf8_lossy(&out.stderr));
        let now: Value = serde_json::from_slice(&out.stdout)?;
        if now["spec"] != spec {
            failures.push(format!("{step}: spec is {} expected {spec}", now["spec"]));
        }
    }
    ensure!(failures.is_empty(), "merge patches via kubectl:\n  {}", failures.join("\n  "));
    Ok(())
}

/// Unknown fields: kubectl create/apply validate strictly and refuse them; a client that does
/// not ask for strict validation (kube-rs' default, and `kubectl patch`) gets a warning and the
/// field is pruned, never stored.
#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn ippool_unknown_fields() -> Result<()> {
    let api = server().await?;
    let name = unique_name("unknown");
    let pool = ippool(&name, json!({"cidr": "10.62.0.0/16", "ipipMode": "Always", "vxlanmode": "Always"}));
    let manifest = yaml(&pool);
    let _guard = api.cleanup(&manifest)?;

    let out = api.kubectl_stdin(&["apply", "-f", "-"], &manifest)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "kubectl apply accepted an unknown field");
    ensure!(stderr.contains("strict decoding error: unknown field \"spec.vxlanmode\""), "kubectl apply said: {stderr}");

    let created = api.create_yaml(&manifest, FieldValidation::Warn, false).await?;
    ensure!(created.data["spec"].get("vxlanmode").is_none(), "unknown field stored: {}", created.data["spec"]);
    ensure!(created.data["spec"]["ipipMode"] == "Always", "known fields lost: {}", created.data["spec"]);

    let out = api.kubectl(&["patch", "ippool", &name, "--type", "merge", "-p", r#"{"spec":{"natOutgoingg":true}}"#])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "kubectl patch: {stderr}");
    ensure!(stderr.contains("unknown field \"spec.natOutgoingg\""), "kubectl patch gave no warning: {stderr}");
    let now = api.get_like(&manifest).await?;
    ensure!(now.data["spec"].get("natOutgoingg").is_none(), "unknown field stored: {}", now.data["spec"]);
    Ok(())
}

/// `status` is a subresource: the operator's status writes do not touch spec or generation,
/// and users' spec patches cannot write status.
#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn ippool_status_subresource() -> Result<()> {
    let api = server().await?;
    let name = unique_name("status");
    let pool = ippool(&name, json!({"cidr": "10.63.0.0/16", "blockSize": 26, "vxlanMode": "Always"}));
    let manifest = yaml(&pool);
    let _guard = api.cleanup(&manifest)?;
    let created = api.create_yaml(&manifest, FieldValidation::Strict, false).await?;
    ensure!(created.data.get("status").is_none_or(Value::is_null), "status set on create: {}", created.data);
    let generation = created.metadata.generation;

    let status = json!({"status": {"observedGeneration": 1, "nodesSelected": 3, "nodesConverged": 2, "ready": "2/3"}});
    let after = api.merge_patch_status(&manifest, &status).await?;
    ensure!(after.data["status"]["ready"] == "2/3", "status not written: {}", after.data);
    ensure!(after.data["spec"] == pool["spec"], "status write changed spec: {}", after.data["spec"]);
    ensure!(after.metadata.generation == generation, "status write bumped generation");

    // A spec patch that also carries status: status is ignored on the main resource.
    let after = api.merge_patch(&manifest, &json!({"spec": {"natOutgoing": true}, "status": {"ready": "9/9"}})).await?;
    ensure!(after.data["status"]["ready"] == "2/3", "main resource wrote status: {}", after.data["status"]);
    ensure!(after.data["spec"]["natOutgoing"] == true, "spec patch lost");
    ensure!(after.metadata.generation == generation.map(|g| g + 1), "spec change did not bump generation");

    // What an operator or a user does by hand: kubectl on the status subresource.
    let out = api.kubectl(&[
        "patch",
        "ippool",
        &name,
        "--subresource=status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"ready":"3/3"}}"#,
    ])?;
    ensure!(out.status.success(), "kubectl patch --subresource=status: {}", String::from_utf8_lossy(&out.stderr));
    let now = api.get_like(&manifest).await?;
    ensure!(now.data["status"]["ready"] == "3/3", "kubectl status patch not stored: {}", now.data["status"]);
    ensure!(now.metadata.generation == after.metadata.generation, "status patch bumped generation");
    Ok(())
}

/// `kubectl get ippools` shows Calico's columns, filled from spec and status.
#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn ippool_printer_columns() -> Result<()> {
    let api = server().await?;
    let name = unique_name("columns");
    let pool = ippool(
        &name,
        json!({"cidr": "10.64.0.0/16", "blockSize": 28, "ipipMode": "CrossSubnet", "vxlanMode": "Never", "natOutgoing": true}),
    );
    let manifest = yaml(&pool);
    let _guard = api.cleanup(&manifest)?;
    api.create_yaml(&manifest, FieldValidation::Strict, false).await?;
    let transition = json!({"from": "IPIP/CrossSubnet", "to": "VXLAN/Always", "phase": "Switch"});
    api.merge_patch_status(&manifest, &json!({"status": {"ready": "1/2", "transition": transition}})).await?;

    let out = api.kubectl(&["get", "ippools", &name])?;
    ensure!(out.status.success(), "kubectl get: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("no header")?.split_whitespace().collect();
    ensure!(header == ["NAME", "CIDR", "IPIP", "VXLAN", "NAT", "BLOCK", "PHASE", "READY", "AGE"], "header: {header:?}");
    let row: Vec<&str> = lines.next().context("no row")?.split_whitespace().collect();
    ensure!(row.len() == 9, "row: {row:?}");
    ensure!(
        row[..8] == [name.as_str(), "10.64.0.0/16", "CrossSubnet", "Never", "true", "28", "Switch", "1/2"],
        "row: {row:?}"
    );

    // The short name and category work too (`kubectl get ipp`, `kubectl get trellis`).
    for what in ["ipp", "trellis"] {
        let out = api.kubectl(&["get", what, "-o", "name"])?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains(&format!("ippool.trellis.dev/{name}")) {
            bail!("kubectl get {what}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

#[test]
fn merge_patch_semantics() {
    let mut v = json!({"a": 1, "b": {"c": 2}});
    merge(&mut v, &json!({"a": null, "b": {"d": 3}}));
    assert_eq!(v, json!({"b": {"c": 2, "d": 3}}));
}

#[test]
fn judge_flags_wrong_verdicts() {
    let case = |expect| Case { name: "x", manifest: Value::Null, expect };
    assert!(judge(&case(Accept), Ok(())).is_none());
    assert!(judge(&case(Accept), Err("no".into())).is_some());
    assert!(judge(&case(Reject("bad cidr")), Ok(())).is_some());
    assert!(judge(&case(Reject("bad cidr")), Err("x: bad cidr".into())).is_none());
    assert!(judge(&case(Reject("bad cidr")), Err("other".into())).is_some());
}

/// The singleton for real: created, patched by users with kubectl (bad MTU, second
/// autodetection method, encapsulation typo are refused and change nothing), deleted.
/// The only test in this binary that stores an Installation, since there can be only one.
#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn installation_default_patches_kubectl() -> Result<()> {
    let api = server().await?;
    let _singleton = INSTALLATION_DEFAULT.lock().await;
    let inst = installation(
        "default",
        json!({"network": {"ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "IPIP"}], "nodeAddressAutodetection": {"firstFound": true}}}),
    );
    let manifest = yaml(&inst);
    let _guard = api.cleanup(&manifest)?;
    let out = api.kubectl_stdin(&["create", "-f", "-"], &manifest)?;
    ensure!(out.status.success(), "kubectl create installation default: {}", String::from_utf8_lossy(&out.stderr));
    let steps: Vec<(&str, Value, Expect)> = vec![
        ("mtu-1400", json!({"spec": {"network": {"mtu": 1400}}}), Accept),
        ("mtu-100", json!({"spec": {"network": {"mtu": 100}}}), Reject("mtu must be between 576 and 9216")),
        (
            "second-method",
            json!({"spec": {"network": {"nodeAddressAutodetection": {"interface": "eth0"}}}}),
            Reject("set at most one of"),
        ),
        (
            "switch-method",
            json!({"spec": {"network": {"nodeAddressAutodetection": {"firstFound": null, "interface": "eth0"}}}}),
            Accept,
        ),
        (
            "encap-typo",
            json!({"spec": {"network": {"ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "VXLan"}]}}}),
            Reject("Unsupported value: \"VXLan\""),
        ),
        (
            "encap-vxlan",
            json!({"spec": {"network": {"ipPools": [{"cidr": "10.244.0.0/16", "encapsulation": "VXLAN"}]}}}),
            Accept,
        ),
    ];
    let mut spec = inst["spec"].clone();
    let mut failures = Vec::new();
    for (step, patch, expect) in steps {
        let out = api.kubectl(&["patch", "installation", "default", "--type", "merge", "-p", &patch.to_string()])?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let verdict = if out.status.success() {
            merge(&mut spec, &patch["spec"]);
            Ok(())
        } else {
            Err(stderr)
        };
        failures.extend(judge(&Case { name: step, manifest: Value::Null, expect }, verdict));
        let now = api.get_like(&manifest).await?;
        if now.data["spec"] != spec {
            failures.push(format!("{step}: spec is {} expected {spec}", now.data["spec"]));
        }
    }
    ensure!(failures.is_empty(), "Installation patches via kubectl:\n  {}", failures.join("\n  "));
    Ok(())
}

/// The manifests Calico users already have (docs/manifests/, only the apiVersion changed) go in
/// with `kubectl apply` as they are written: comments, Tigera's `calicoNetwork` and
/// `nodeAddressAutodetectionV4`, Calico's `allowedUses`, `disableBGPExport`, `assignmentMode`,
/// and admission keeps every field.
#[tokio::test]
#[ignore = "root: needs the real API server (make test-root)"]
async fn calico_users_manifests_apply_unchanged() -> Result<()> {
    let api = server().await?;
    let _singleton = INSTALLATION_DEFAULT.lock().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/manifests");
    let mut seen = Vec::new();
    for file in ["installation-tigera.yaml", "ippool-calico.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).with_context(|| format!("reading {file}"))?;
        let sent: Value = serde_yaml::from_str(&text)?;
        ensure!(sent["apiVersion"] == "trellis.dev/v1", "{file}: {}", sent["apiVersion"]);

        let out = api.kubectl_stdin(&["apply", "--dry-run=server", "-o", "json", "-f", "-"], &text)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "kubectl apply {file}: {stderr}");
        let admitted: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("{file}: kubectl output"))?;
        ensure!(
            admitted["spec"] == sent["spec"],
            "{file}: admitted spec {} differs from {}",
            admitted["spec"],
            sent["spec"]
        );
        ensure!(!stderr.contains("unknown field"), "{file}: kubectl warned: {stderr}");

        // The same through kube-rs, strict as kubectl.
        let obj = api.create_yaml(&text, FieldValidation::Strict, true).await?;
        ensure!(obj.data["spec"] == sent["spec"], "{file}: kube-rs dry run gave {}", obj.data["spec"]);
        seen.push(file);
    }
    eprintln!("applied unchanged: {seen:?}");
    Ok(())
}
