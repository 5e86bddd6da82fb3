//! IPAM and IPPool status on the real API server, with the real `trellis-operator` binary:
//! blocks for Nodes as they appear (also 200 at once), release when Nodes go, overlapping and
//! exhausted pools, disabled pools, and READY n/m from what nodes report.
//!
//! The test bed has no kubelet and no agents: a test creates Node objects (as a cluster's
//! kubelets would register) and, where it needs them, writes NodeNetwork statuses the way an
//! agent reports what it applied. Every object a test creates carries the label
//! `trellis.dev/e2e=<unique>` and its pools select only nodes with that label, so tests do not
//! see each other's nodes; the tests of this binary run one at a time, each with its own
//! operator (own namespace and Lease), and clean up after themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use trellis_api::ipam_block::block_name;
use trellis_api::{IPAMBlock, IPPool, IPPoolSpec, NodeNetwork, NodeNetworkSpec};
use trellis_e2e::apiserver::{ApiServer, unique_name};
use trellis_e2e::operator::OperatorProcess;

/// Upper bound for the operator to react; every poll ends as soon as its condition holds.
const WAIT: Duration = Duration::from_secs(30);
/// "Within seconds": the bound for releases after a Node is deleted.
const RELEASE_WAIT: Duration = Duration::from_secs(15);
/// The label that scopes a test's objects.
const LABEL: &str = "trellis.dev/e2e";
const FIELD_MANAGER: &str = "trellis-e2e";

/// One test at a time: each runs its own operator, and two leaders would both hand out blocks.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world: the API server, an operator, the label of everything the test creates.
struct Bed {
    api: ApiServer,
    label: String,
    operator: OperatorProcess,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Bed {
    async fn new(prefix: &str) -> Result<Self> {
        let serial = SERIAL.lock().await;
        let api = ApiServer::from_env().await?;
        api.apply_crds().await.context("applying crds/yaml")?;
        let label = unique_name(prefix);
        let namespace = unique_name("trellis-e2e-ipam");
        let lease = unique_name("ipam-e2e");
        let operator = OperatorProcess::start(
            api.kubeconfig(),
            &label,
            &["--namespace", &namespace, "--lease-name", &lease, "--lease-duration", "5"],
        )?;
        Ok(Bed { api, label, operator, _serial: serial })
    }

    fn pools(&self) -> Api<IPPool> {
        Api::all(self.api.client())
    }
    fn nodes(&self) -> Api<Node> {
        Api::all(self.api.client())
    }
    fn blocks(&self) -> Api<IPAMBlock> {
        Api::all(self.api.client())
    }
    fn networks(&self) -> Api<NodeNetwork> {
        Api::all(self.api.client())
    }

    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.label)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        [(LABEL.to_string(), self.label.clone())].into()
    }

    /// The selector of this test's nodes, plus `extra` (Calico syntax) if given.
    fn selector(&self, extra: Option<&str>) -> String {
        let mine = format!("{LABEL} == \"{}\"", self.label);
        match extra {
            Some(extra) => format!("{mine} && {extra}"),
            None => mine,
        }
    }

    /// Creates an IPPool with this test's label; `spec.nodeSelector` defaults to this test's nodes.
    async fn pool(&self, what: &str, spec: IPPoolSpec) -> Result<IPPool> {
        let spec = IPPoolSpec { node_selector: spec.node_selector.or_else(|| Some(self.selector(None))), ..spec };
        let pool = IPPool {
            metadata: ObjectMeta { name: Some(self.name(what)), labels: Some(self.labels()), ..Default::default() },
            spec,
            status: None,
        };
        self.pools().create(&post(), &pool).await.with_context(|| format!("creating IPPool {}", self.name(what)))
    }

    async fn node(&self, name: &str, extra: &[(&str, &str)]) -> Result<Node> {
        let mut labels = self.labels();
        labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let node = Node {
            metadata: ObjectMeta { name: Some(name.to_string()), labels: Some(labels), ..Default::default() },
            ..Default::default()
        };
        self.nodes().create(&post(), &node).await.with_context(|| format!("creating Node {name}"))
    }

    /// A NodeNetwork as the node's agent would publish it.
    async fn network(&self, node: &str, address: &str) -> Result<NodeNetwork> {
        let mut nn = NodeNetwork::new(node, NodeNetworkSpec { address: address.into(), ..Default::default() });
        nn.metadata.labels = Some(self.labels());
        self.networks().create(&post(), &nn).await.with_context(|| format!("creating NodeNetwork {node}"))
    }

    /// Writes what a node's agent reports it applied: (pool, generation, error) per pool.
    async fn report(&self, node: &str, applied: &[(&str, i64, Option<&str>)]) -> Result<()> {
        let pools: Vec<_> = applied
            .iter()
            .map(|(pool, generation, error)| {
                json!({"name": pool, "generation": generation, "encapsulation": "VXLAN/Always", "error": error})
            })
            .collect();
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        self.networks()
            .patch_status(node, &pp, &Patch::Merge(json!({"status": {"pools": pools}})))
            .await
            .with_context(|| format!("writing the status of NodeNetwork {node}"))?;
        Ok(())
    }

    /// The blocks of `pool`, by node.
    async fn blocks_of(&self, pool: &str) -> Result<BTreeMap<String, Vec<IPAMBlock>>> {
        let mut out: BTreeMap<String, Vec<IPAMBlock>> = BTreeMap::new();
        for b in self.blocks().list(&ListParams::default()).await?.items {
            if b.spec.pool == pool {
                out.entry(b.spec.node.clone()).or_default().push(b);
            }
        }
        Ok(out)
    }

    async fn condition(&self, pool: &str, type_: &str) -> Result<Option<(String, String, String)>> {
        let p = self.pools().get(pool).await?;
        Ok(p.status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason, c.message)))
    }

    /// Polls `check` until it returns `Ok(v)`; `Err(observation)` means "not yet". Gives up after
    /// `limit` with the last observation and the operator's log.
    async fn until<T, F, Fut>(&self, what: &str, limit: Duration, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<std::result::Result<T, String>>>,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let last = match check().await? {
                Ok(v) => return Ok(v),
                Err(observed) => observed,
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "gave up after {limit:?} waiting for {what}; last observation: {last}\n--- operator log ---\n{}",
                    tail(&self.operator.log())
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until `pool` has exactly the nodes `want` with one block each, and returns them.
    async fn one_block_each(&self, pool: &str, want: &[&str], limit: Duration) -> Result<BTreeMap<String, IPAMBlock>> {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        self.until(&format!("one block of {pool} for each of {want:?}"), limit, || async {
            let blocks = self.blocks_of(pool).await?;
            let have: BTreeSet<String> = blocks.keys().cloned().collect();
            if have == want && blocks.values().all(|b| b.len() == 1) {
                Ok(Ok(blocks.into_iter().map(|(n, mut b)| (n, b.remove(0))).collect()))
            } else {
                Ok(Err(format!("{:?}", blocks.iter().map(|(n, b)| (n, b.len())).collect::<Vec<_>>())))
            }
        })
        .await
    }

    async fn events_for(&self, pool: &str, reason: &str) -> Result<Vec<Event>> {
        let events: Api<Event> = Api::all(self.api.client());
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(pool)
                    && e.reason.as_deref() == Some(reason)
            })
            .collect())
    }

    /// `kubectl get ippool NAME`: the READY column (empty before the operator wrote a status).
    fn ready_column(&self, pool: &str) -> Result<String> {
        let out = self.api.kubectl(&["get", "ippool", pool])?;
        ensure!(out.status.success(), "kubectl get ippool {pool}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let row = lines.next().unwrap_or_default();
        // Columns are aligned to the header; an empty cell is blanks, so cut by position.
        let start = header.find("READY").with_context(|| format!("no READY column in {text}"))?;
        let end = header.find("AGE").filter(|e| *e > start).unwrap_or(row.len());
        Ok(row.get(start..end.min(row.len())).unwrap_or_default().trim().to_string())
    }

    /// Deletes this test's pools and nodes and waits until the operator released their blocks
    /// and NodeNetworks, so nothing is left for the next test.
    async fn teardown(&self, pools: &[&str]) -> Result<()> {
        let lp = ListParams::default().labels(&format!("{LABEL}={}", self.label));
        self.pools().delete_collection(&DeleteParams::default(), &lp).await?;
        self.nodes().delete_collection(&DeleteParams::default(), &lp).await?;
        self.until("the test's blocks and NodeNetworks to be released", WAIT, || async {
            let mut left = Vec::new();
            for pool in pools {
                left.extend(self.blocks_of(pool).await?.into_values().flatten().map(|b| b.spec.cidr));
            }
            left.extend(
                self.networks()
                    .list(&lp)
                    .await?
                    .items
                    .into_iter()
                    .map(|n| format!("nodenetwork {:?}", n.metadata.name)),
            );
            Ok(if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) })
        })
        .await
    }
}

impl Drop for Bed {
    /// Deletes whatever the test left (all of it when it failed half-way); the operator releases
    /// the blocks if it gets to them, any later operator run otherwise.
    fn drop(&mut self) {
        let selector = format!("{LABEL}={}", self.label);
        if let Err(e) = self.api.kubectl(&["delete", "ippools,nodes,nodenetworks", "-l", &selector, "--wait=false"]) {
            eprintln!("cleanup of {selector}: {e}");
        }
    }
}

fn post() -> PostParams {
    PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn pool_spec(cidr: &str, block_size: i32) -> IPPoolSpec {
    IPPoolSpec { cidr: cidr.into(), block_size: Some(block_size), ..Default::default() }
}

fn net(block: &IPAMBlock) -> IpNet {
    block.spec.cidr.parse().expect("the API server admits only CIDRs")
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn nodes_get_a_block_per_selected_pool_as_soon_as_they_appear() -> Result<()> {
    let bed = Bed::new("ipam-appear").await?;
    let all = bed.pool("all", pool_spec("10.231.0.0/24", 26)).await?;
    let gpu = bed
        .pool(
            "gpu",
            IPPoolSpec {
                node_selector: Some(bed.selector(Some("has(example.com/gpu)"))),
                ..pool_spec("10.231.1.0/24", 27)
            },
        )
        .await?;
    let (all, gpu) = (all.metadata.name.unwrap(), gpu.metadata.name.unwrap());
    let (a, b) = (bed.name("a"), bed.name("b"));
    let node_a = bed.node(&a, &[("example.com/gpu", "true")]).await?;
    bed.node(&b, &[]).await?;

    let blocks = bed.one_block_each(&all, &[&a, &b], WAIT).await?;
    let gpu_blocks = bed.one_block_each(&gpu, &[&a], WAIT).await?;
    // The lowest free blocks, in node-name order, each named after its CIDR.
    assert_eq!(blocks[&a].spec.cidr, "10.231.0.0/26");
    assert_eq!(blocks[&b].spec.cidr, "10.231.0.64/26");
    assert_eq!(gpu_blocks[&a].spec.cidr, "10.231.1.0/27");
    for block in blocks.values().chain(gpu_blocks.values()) {
        assert_eq!(block.metadata.name.as_deref(), Some(block_name(&net(block)).as_str()));
    }
    // Owned by the Node, for a real cluster's garbage collector.
    let owner = &blocks[&a].metadata.owner_references.as_ref().expect("owner reference")[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("Node", a.as_str()));
    assert_eq!(Some(&owner.uid), node_a.metadata.uid.as_ref());

    // A node labelled later joins the gpu pool; one appearing later gets the next free block.
    let c = bed.name("c");
    bed.node(&c, &[("example.com/gpu", "yes")]).await?;
    let blocks = bed.one_block_each(&all, &[&a, &b, &c], WAIT).await?;
    assert_eq!(blocks[&c].spec.cidr, "10.231.0.128/26");
    bed.one_block_each(&gpu, &[&a, &c], WAIT).await?;
    bed.teardown(&[&all, &gpu]).await
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn two_hundred_nodes_created_at_once_get_unique_blocks_inside_the_pool() -> Result<()> {
    let bed = Bed::new("ipam-200").await?;
    let pool = bed.pool("p", pool_spec("10.232.0.0/16", 26)).await?.metadata.name.unwrap();
    let names: Vec<String> = (0..200).map(|i| bed.name(&format!("n{i:03}"))).collect();
    futures::stream::iter(names.iter().map(|n| bed.node(n, &[]))).buffer_unordered(50).try_collect::<Vec<_>>().await?;

    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let blocks = bed.one_block_each(&pool, &refs, Duration::from_secs(120)).await?;
    let pool_net: IpNet = "10.232.0.0/16".parse()?;
    let cidrs: Vec<IpNet> = blocks.values().map(net).collect();
    let unique: BTreeSet<IpNet> = cidrs.iter().copied().collect();
    assert_eq!(unique.len(), 200, "no block twice");
    for cidr in &cidrs {
        assert!(pool_net.contains(cidr) && cidr.prefix_len() == 26, "{cidr} is a /26 of the pool");
        for other in &cidrs {
            assert!(cidr == other || !(cidr.contains(&other.network()) || other.contains(&cidr.network())));
        }
    }
    // Lowest first: 200 nodes fill exactly the first 200 blocks.
    let first: BTreeSet<IpNet> = pool_net.subnets(26)?.take(200).collect();
    assert_eq!(unique, first);
    bed.until("READY 0/200 (no agent reports yet)", WAIT, || async {
        let ready = bed.ready_column(&pool)?;
        Ok(if ready == "0/200" { Ok(()) } else { Err(ready) })
    })
    .await?;
    bed.teardown(&[&pool]).await
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn deleted_nodes_release_blocks_and_nodenetworks_within_seconds() -> Result<()> {
    let bed = Bed::new("ipam-release").await?;
    let pool = bed.pool("p", pool_spec("10.233.0.0/24", 26)).await?.metadata.name.unwrap();
    let (a, b, c) = (bed.name("a"), bed.name("b"), bed.name("c"));
    for (i, n) in [&a, &b, &c].into_iter().enumerate() {
        bed.node(n, &[]).await?;
        bed.network(n, &format!("10.0.0.{}/24", i + 1)).await?;
    }
    let before = bed.one_block_each(&pool, &[&a, &b, &c], WAIT).await?;

    // There is no garbage collector in the test bed: only the operator can release these.
    bed.nodes().delete(&a, &DeleteParams::default()).await?;
    bed.nodes().delete(&c, &DeleteParams::default()).await?;
    let after = bed.one_block_each(&pool, &[&b], RELEASE_WAIT).await?;
    assert_eq!(after[&b].metadata.uid, before[&b].metadata.uid, "the remaining node keeps its block");
    bed.until("the NodeNetworks of the deleted nodes to be gone", RELEASE_WAIT, || async {
        let left: Vec<String> = bed
            .networks()
            .list(&ListParams::default().labels(&format!("{LABEL}={}", bed.label)))
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect();
        Ok(if left == vec![b.clone()] { Ok(()) } else { Err(format!("{left:?}")) })
    })
    .await?;

    // A node of the same name that comes back gets a block again (the lowest free one).
    bed.node(&a, &[]).await?;
    let again = bed.one_block_each(&pool, &[&a, &b], WAIT).await?;
    assert_eq!(again[&a].spec.cidr, "10.233.0.0/26");
    bed.teardown(&[&pool]).await
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn overlapping_pool_gets_cidr_overlap_condition_and_event() -> Result<()> {
    let bed = Bed::new("ipam-overlap").await?;
    let older = bed.pool("z-older", pool_spec("10.234.0.0/16", 26)).await?.metadata.name.unwrap();
    // Creation timestamps have one-second resolution; the newer pool's name sorts first, so
    // only the timestamp can make it the newer one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = bed.pool("a-newer", pool_spec("10.234.128.0/24", 26)).await?.metadata.name.unwrap();

    let (_, reason, message) = bed
        .until("CIDROverlap=True on the newer pool", WAIT, || async {
            Ok(match bed.condition(&newer, "CIDROverlap").await? {
                Some(c) if c.0 == "True" => Ok(c),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
    assert_eq!(reason, "OverlapsOlderPool");
    assert!(message.contains(&older), "the message names the older pool: {message}");
    let ready = bed.condition(&newer, "Ready").await?.context("Ready condition")?;
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "CIDROverlap"));
    let older_overlap = bed
        .until("the older pool's status", WAIT, || async {
            Ok(bed.condition(&older, "CIDROverlap").await?.ok_or_else(|| "no status yet".to_string()))
        })
        .await?;
    assert_eq!(older_overlap.0, "False", "the older pool stays in use");
    let events = bed
        .until("a Warning Event CIDROverlap on the newer pool", WAIT, || async {
            let events = bed.events_for(&newer, "CIDROverlap").await?;
            Ok(if events.is_empty() { Err("no Event yet".to_string()) } else { Ok(events) })
        })
        .await?;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert!(events[0].note.as_deref().unwrap_or_default().contains(&older));

    // The newer pool is not used: a node gets a block of the older pool only.
    let a = bed.name("a");
    bed.node(&a, &[]).await?;
    bed.one_block_each(&older, &[&a], WAIT).await?;
    assert!(bed.blocks_of(&newer).await?.is_empty(), "no block from the pool that overlaps an older one");

    // Once the older pool is gone, the newer one is used.
    bed.pools().delete(&older, &DeleteParams::default()).await?;
    bed.one_block_each(&newer, &[&a], WAIT).await?;
    bed.until("CIDROverlap=False on the remaining pool", WAIT, || async {
        Ok(match bed.condition(&newer, "CIDROverlap").await? {
            Some(c) if c.0 == "False" => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;
    bed.teardown(&[&older, &newer]).await
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn exhausted_pool_reports_condition_not_crash() -> Result<()> {
    let bed = Bed::new("ipam-exhaust").await?;
    // Four /30 blocks for six nodes.
    let small = bed.pool("small", pool_spec("10.235.0.0/28", 30)).await?.metadata.name.unwrap();
    let nodes: Vec<String> = (0..6).map(|i| bed.name(&format!("n{i}"))).collect();
    for n in &nodes {
        bed.node(n, &[]).await?;
    }
    let served: Vec<&str> = nodes[..4].iter().map(String::as_str).collect();
    bed.one_block_each(&small, &served, WAIT).await?;
    let (_, reason, message) = bed
        .until("BlocksExhausted=True", WAIT, || async {
            Ok(match bed.condition(&small, "BlocksExhausted").await? {
                Some(c) if c.0 == "True" => Ok(c),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
    assert_eq!(reason, "NoFreeBlock");
    assert!(message.contains("2 nodes") && message.contains(&nodes[4]) && message.contains(&nodes[5]), "{message}");
    let degraded = bed.condition(&small, "Degraded").await?.context("Degraded")?;
    assert_eq!((degraded.0.as_str(), degraded.1.as_str()), ("True", "BlocksExhausted"));
    bed.until("a Warning Event BlocksExhausted", WAIT, || async {
        let events = bed.events_for(&small, "BlocksExhausted").await?;
        Ok(if events.iter().any(|e| e.type_.as_deref() == Some("Warning")) {
            Ok(())
        } else {
            Err(format!("{events:?}"))
        })
    })
    .await?;

    // The operator keeps working: another pool serves all six nodes.
    let big = bed.pool("big", pool_spec("10.235.1.0/24", 28)).await?.metadata.name.unwrap();
    let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
    bed.one_block_each(&big, &all, WAIT).await?;
    let (code, _) = bed.operator.http_get("/healthz")?;
    ensure!(code == 200, "the operator is still up and healthy (GET /healthz: {code})");

    // Two nodes go: the four left all have a block, so the pool is no longer exhausted.
    bed.nodes().delete(&nodes[0], &DeleteParams::default()).await?;
    bed.nodes().delete(&nodes[1], &DeleteParams::default()).await?;
    let left: Vec<&str> = nodes[2..].iter().map(String::as_str).collect();
    bed.one_block_each(&small, &left, WAIT).await?;
    bed.until("BlocksExhausted=False", WAIT, || async {
        Ok(match bed.condition(&small, "BlocksExhausted").await? {
            Some(c) if c.0 == "False" => Ok(()),
            other => Err(format!("{other:?}")),
        })
    })
    .await?;
    bed.teardown(&[&small, &big]).await
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn ready_column_counts_nodes_that_applied_the_generation() -> Result<()> {
    let bed = Bed::new("ipam-ready").await?;
    let pool = bed.pool("p", pool_spec("10.236.0.0/24", 26)).await?.metadata.name.unwrap();
    let (a, b, c) = (bed.name("a"), bed.name("b"), bed.name("c"));
    for (i, n) in [&a, &b, &c].into_iter().enumerate() {
        bed.node(n, &[]).await?;
        bed.network(n, &format!("10.0.0.{}/24", i + 1)).await?;
    }
    let ready_is = |want: &'static str| {
        let bed = &bed;
        let pool = pool.clone();
        async move {
            bed.until(&format!("kubectl get ippools READY {want}"), WAIT, || async {
                let ready = bed.ready_column(&pool)?;
                Ok(if ready == want { Ok(()) } else { Err(ready) })
            })
            .await
        }
    };
    ready_is("0/3").await?;

    // A user patches the pool: generation 2. Nodes report what they applied. (Not an
    // encapsulation or natOutgoing change: those run as a live change, whose READY counts
    // the nodes in its phase — see live_change.rs.)
    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    let patched = bed.pools().patch(&pool, &pp, &Patch::Merge(json!({"spec": {"nodeSelector": "all()"}}))).await?;
    let generation = patched.metadata.generation.context("generation")?;
    ensure!(generation == 2, "a spec change bumps the generation (got {generation})");
    bed.report(&a, &[(&pool, 2, None)]).await?;
    bed.report(&b, &[(&pool, 1, None)]).await?;
    bed.report(&c, &[("some-other-pool", 2, None), (&pool, 2, Some("kernel lacks the ipip module"))]).await?;
    ready_is("1/3").await?;
    let status = bed.pools().get(&pool).await?.status.context("status")?;
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!((status.nodes_selected, status.nodes_converged), (Some(3), Some(1)));
    let degraded = bed.condition(&pool, "Degraded").await?.context("Degraded")?;
    assert_eq!(degraded.1, "NodeErrors");
    assert!(degraded.2.contains(&c) && degraded.2.contains("ipip"), "{}", degraded.2);
    let progressing = bed.condition(&pool, "Progressing").await?.context("Progressing")?;
    assert!(progressing.0 == "True" && progressing.2.contains(&b), "{progressing:?}");

    bed.report(&b, &[(&pool, 2, None)]).await?;
    ready_is("2/3").await?;
    bed.report(&c, &[(&pool, 2, None)]).await?;
    ready_is("3/3").await?;
    let ready = bed.condition(&pool, "Ready").await?.context("Ready")?;
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("True", "AllNodesApplied"));

    // A node that is deleted no longer counts.
    bed.nodes().delete(&c, &DeleteParams::default()).await?;
    ready_is("2/2").await?;
    bed.teardown(&[&pool]).await
}

#[tokio::test]
#[ignore = "root: needs the test bed's API server (make test-root)"]
async fn disabled_pool_gets_no_new_blocks() -> Result<()> {
    let bed = Bed::new("ipam-disabled").await?;
    let pool = bed.pool("p", pool_spec("10.237.0.0/24", 26)).await?.metadata.name.unwrap();
    let (a, b) = (bed.name("a"), bed.name("b"));
    bed.node(&a, &[]).await?;
    let kept = bed.one_block_each(&pool, &[&a], WAIT).await?;

    let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    bed.pools().patch(&pool, &pp, &Patch::Merge(json!({"spec": {"disabled": true}}))).await?;
    bed.until("the operator to see generation 2", WAIT, || async {
        let observed = bed.pools().get(&pool).await?.status.and_then(|s| s.observed_generation);
        Ok(if observed == Some(2) { Ok(()) } else { Err(format!("{observed:?}")) })
    })
    .await?;
    // A second, enabled pool shows when the operator has handled the new node.
    let control = bed.pool("control", pool_spec("10.237.1.0/24", 26)).await?.metadata.name.unwrap();
    bed.node(&b, &[]).await?;
    bed.one_block_each(&control, &[&a, &b], WAIT).await?;
    let blocks = bed.blocks_of(&pool).await?;
    assert_eq!(blocks.keys().collect::<Vec<_>>(), vec![&a], "the disabled pool gave the new node no block");
    assert_eq!(blocks[&a][0].metadata.uid, kept[&a].metadata.uid, "existing blocks stay");

    // Enabled again, it serves the new node.
    bed.pools().patch(&pool, &pp, &Patch::Merge(json!({"spec": {"disabled": false}}))).await?;
    bed.one_block_each(&pool, &[&a, &b], WAIT).await?;
    bed.teardown(&[&pool, &control]).await
}
