//! The kubelet and DaemonSet controller the API server test bed lacks, for one DaemonSet.
//!
//! A thread polls (every [`SYNC_PERIOD`]) the DaemonSet the operator rendered and the Node
//! objects, and for every Node this machine hosts (registered with [`Kubelet::host`]) runs the
//! pod template through a [`PodRuntime`], resolved for that node by
//! [`super::container::resolve`]. Like the real pair it
//! * starts a pod on every Node that appears (and matches the template's `nodeSelector`),
//!   stops it when the Node or the DaemonSet goes;
//! * restarts a pod whose process exited (after [`CRASH_BACKOFF`]);
//! * rolls a changed template one node at a time (RollingUpdate, maxUnavailable 1): the next
//!   node is replaced only when every pod passes its readiness probe;
//! * probes readiness with the template's `httpGet` inside the node's network namespace;
//! * writes the DaemonSet's status (observedGeneration, desired/current/updated/ready/
//!   available counts), so the operator's Installation goes Ready.
//!
//! While the API server is unreachable it changes nothing (the pods keep running), like a
//! kubelet. Liveness probes are not acted on. Dropping the kubelet stops every pod it started.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use super::container::{self, ContainerSpec, Mount, NodeFacts};
use super::runtime::{NodeHost, PodRuntime, RunningContainer};
use crate::error::{Error, Result};

/// How often the kubelet looks at the API server.
pub const SYNC_PERIOD: Duration = Duration::from_millis(250);
/// Wait before restarting a pod whose process exited.
pub const CRASH_BACKOFF: Duration = Duration::from_secs(1);
const STOP_GRACE: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What the kubelet runs and how.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// The kubelet's own credentials (it runs on the host).
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub daemon_set: String,
    /// Host paths every node shares (see [`NodeFacts::shared_paths`]).
    pub shared_paths: Vec<PathBuf>,
    /// Environment and mounts added to every container (the pods' API credentials).
    pub extra_env: Vec<(String, String)>,
    pub extra_mounts: Vec<Mount>,
}

/// One pod of the DaemonSet on one node.
struct DaemonPod {
    container: Box<dyn RunningContainer>,
    spec: ContainerSpec,
    template_hash: u64,
    ready: bool,
    started: Instant,
}

#[derive(Default)]
struct State {
    hosted: BTreeMap<String, NodeHost>,
    pods: BTreeMap<String, DaemonPod>,
    /// Nodes whose pod exited, and when.
    crashed: BTreeMap<String, Instant>,
    restarts: BTreeMap<String, u32>,
    /// The logs of pods that are gone (stopped, crashed, rolled), per node.
    past_logs: BTreeMap<String, Vec<String>>,
    /// What the kubelet did, for failure messages.
    events: Vec<String>,
    last_error: Option<String>,
    last_status: Option<serde_json::Value>,
}

impl State {
    fn event(&mut self, text: String) {
        tracing::info!(target: "trellis_e2e::kubelet", "{text}");
        self.events.push(format!("{:?} {text}", std::time::SystemTime::now()));
    }

    fn retire(&mut self, node: &str, mut pod: DaemonPod, why: &str) {
        let code = pod.container.stop(STOP_GRACE);
        self.event(format!("{node}: stopped {} ({why}), exit {code:?}", pod.container.describe()));
        self.past_logs.entry(node.to_string()).or_default().push(pod.container.logs());
    }
}

struct Shared {
    stop: AtomicBool,
    state: Mutex<State>,
    runtime: Arc<dyn PodRuntime>,
    config: KubeletConfig,
}

/// The running kubelet stand-in; stops its pods on drop.
pub struct Kubelet {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    pub fn start(config: KubeletConfig, runtime: Arc<dyn PodRuntime>) -> Result<Kubelet> {
        let shared = Arc::new(Shared { stop: AtomicBool::new(false), state: Mutex::default(), runtime, config });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kubelet".into())
            .spawn(move || run(worker))
            .map_err(|e| Error::io("spawn the kubelet thread", e))?;
        Ok(Kubelet { shared, thread: Some(thread) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This machine runs pods for `node` from now on.
    pub fn host(&self, node: NodeHost) {
        self.state().hosted.insert(node.name.clone(), node);
    }

    /// Stops `node`'s pod (if any) and forgets the node.
    pub fn unhost(&self, node: &str) {
        let mut state = self.state();
        state.hosted.remove(node);
        if let Some(pod) = state.pods.remove(node) {
            state.retire(node, pod, "node no longer hosted");
        }
    }

    /// Nodes that run a pod, with whether it is ready and the hash of its template.
    pub fn pods(&self) -> BTreeMap<String, (bool, u64)> {
        self.state().pods.iter().map(|(n, p)| (n.clone(), (p.ready, p.template_hash))).collect()
    }

    /// The resolved spec of `node`'s running pod.
    pub fn spec(&self, node: &str) -> Option<ContainerSpec> {
        self.state().pods.get(node).map(|p| p.spec.clone())
    }

    /// `node`'s running container (runtime identity, e.g. with its pid), if any.
    pub fn container(&self, node: &str) -> Option<String> {
        self.state().pods.get(node).map(|p| p.container.describe())
    }

    /// Kills `node`'s container at once, like a crash; the kubelet restarts it after
    /// [`CRASH_BACKOFF`].
    pub fn kill(&self, node: &str) -> Result<()> {
        let mut state = self.state();
        let pod = state.pods.get_mut(node).ok_or_else(|| Error::Setup(format!("no pod on {node}")))?;
        pod.container.kill();
        Ok(())
    }

    /// How often `node`'s pod was restarted after exiting.
    pub fn restarts(&self, node: &str) -> u32 {
        self.state().restarts.get(node).copied().unwrap_or(0)
    }

    /// Logs of `node`'s earlier pods, then of the running one.
    pub fn logs(&self, node: &str) -> String {
        let state = self.state();
        let mut out = state.past_logs.get(node).map(|l| l.join("\n--- next pod ---\n")).unwrap_or_default();
        if let Some(p) = state.pods.get(node) {
            out.push_str(&format!("--- {} ---\n{}", p.container.describe(), p.container.logs()));
        }
        out
    }

    /// Freezes `node`'s pod (a hung agent) until [`Kubelet::resume`].
    pub fn pause(&self, node: &str) -> Result<()> {
        let mut state = self.state();
        let pod = state.pods.get_mut(node).ok_or_else(|| Error::Setup(format!("no pod on {node}")))?;
        pod.container.pause()
    }

    pub fn resume(&self, node: &str) -> Result<()> {
        let mut state = self.state();
        let pod = state.pods.get_mut(node).ok_or_else(|| Error::Setup(format!("no pod on {node}")))?;
        pod.container.resume()
    }

    /// What the kubelet did and the last API error, for failure messages.
    pub fn report(&self) -> String {
        let state = self.state();
        let mut out = state.events.join("\n");
        if let Some(e) = &state.last_error {
            out.push_str(&format!("\nlast error: {e}"));
        }
        out
    }

    /// Stops the loop and every pod.
    pub fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut state = self.state();
        let pods = std::mem::take(&mut state.pods);
        for (node, pod) in pods {
            state.retire(&node, pod, "kubelet shutting down");
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(shared: Arc<Shared>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            shared.state.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(format!("tokio: {e}"));
            return;
        }
    };
    let client = match rt.block_on(client(&shared.config)) {
        Ok(c) => c,
        Err(e) => {
            shared.state.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(e);
            return;
        }
    };
    while !shared.stop.load(Ordering::Relaxed) {
        if let Err(e) = rt.block_on(sync(&shared, &client)) {
            shared.state.lock().unwrap_or_else(|p| p.into_inner()).last_error = Some(e);
        }
        std::thread::sleep(SYNC_PERIOD);
    }
}

async fn client(config: &KubeletConfig) -> std::result::Result<kube::Client, String> {
    let file = Kubeconfig::read_from(&config.kubeconfig).map_err(|e| format!("kubeconfig: {e}"))?;
    let c = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig: {e}"))?;
    kube::Client::try_from(c).map_err(|e| format!("client: {e}"))
}

fn template_hash(ds: &DaemonSet) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&ds.spec.as_ref().map(|s| &s.template)).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn selected(ds: &DaemonSet, node: &Node) -> bool {
    let selector = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).and_then(|s| s.node_selector.as_ref());
    let labels = node.metadata.labels.clone().unwrap_or_default();
    selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// GET the probe inside the node's namespace; true on a 2xx/3xx answer.
fn probe_ok(netns: &str, probe: &container::HttpProbe) -> bool {
    let host = if probe.host.is_empty() { "127.0.0.1" } else { probe.host.as_str() };
    let Ok(ip) = host.parse::<std::net::IpAddr>() else { return false };
    let addr = SocketAddr::new(ip, probe.port);
    let stream = crate::netns::enter(netns, move || TcpStream::connect_timeout(&addr, PROBE_TIMEOUT));
    let Ok(Ok(mut s)) = stream else { return false };
    let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
    let _ = s.set_write_timeout(Some(PROBE_TIMEOUT));
    if write!(s, "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n", probe.path).is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let Ok(n) = s.read(&mut head) else { return false };
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).is_some_and(|c| (200..400).contains(&c))
}

async fn sync(shared: &Shared, client: &kube::Client) -> std::result::Result<(), String> {
    let cfg = &shared.config;
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &cfg.namespace);
    let ds = ds_api.get_opt(&cfg.daemon_set).await.map_err(|e| format!("get DaemonSet: {e}"))?;
    let nodes =
        Api::<Node>::all(client.clone()).list(&ListParams::default()).await.map_err(|e| format!("list Nodes: {e}"))?;
    let status = {
        let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        reconcile(shared, &mut state, ds.as_ref(), &nodes.items)
    };
    let Some((ds, status)) = ds.zip(status) else { return Ok(()) };
    let unchanged = shared.state.lock().map(|s| s.last_status.as_ref() == Some(&status)).unwrap_or(false);
    // Rewrite also when the stored status differs (e.g. the DaemonSet was re-created).
    let stored = serde_json::to_value(ds.status.as_ref()).unwrap_or_default();
    let stored_matches = status.as_object().is_some_and(|o| o.iter().all(|(k, v)| stored.get(k) == Some(v)));
    if unchanged && stored_matches {
        return Ok(());
    }
    ds_api
        .patch_status(&cfg.daemon_set, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(|e| format!("write DaemonSet status: {e}"))?;
    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    state.last_status = Some(status);
    state.last_error = None;
    Ok(())
}

/// One pass over the pods; returns the DaemonSet status to write.
fn reconcile(shared: &Shared, state: &mut State, ds: Option<&DaemonSet>, nodes: &[Node]) -> Option<serde_json::Value> {
    let hash = ds.map(template_hash);
    let wanted: BTreeSet<String> = match ds {
        None => BTreeSet::new(),
        Some(ds) => nodes
            .iter()
            .filter(|n| selected(ds, n))
            .filter_map(|n| n.metadata.name.clone())
            .filter(|n| state.hosted.contains_key(n))
            .collect(),
    };
    // Pods that should not run.
    let unwanted: Vec<String> = state.pods.keys().filter(|n| !wanted.contains(*n)).cloned().collect();
    for node in unwanted {
        if let Some(pod) = state.pods.remove(&node) {
            state.retire(&node, pod, "its Node or the DaemonSet is gone");
        }
    }
    // Exited pods: restarted after the backoff.
    let exited: Vec<(String, i32)> =
        state.pods.iter_mut().filter_map(|(n, p)| p.container.exited().map(|c| (n.clone(), c))).collect();
    for (node, code) in exited {
        if let Some(pod) = state.pods.remove(&node) {
            state.retire(&node, pod, &format!("exited with {code}"));
            state.crashed.insert(node.clone(), Instant::now());
            *state.restarts.entry(node).or_default() += 1;
        }
    }
    // Readiness.
    let checks: Vec<(String, String, Option<container::HttpProbe>)> = state
        .pods
        .iter()
        .map(|(n, p)| {
            (n.clone(), state.hosted.get(n).map(|h| h.netns.clone()).unwrap_or_default(), p.spec.readiness.clone())
        })
        .collect();
    for (node, netns, probe) in checks {
        let ready = probe.as_ref().is_none_or(|p| probe_ok(&netns, p));
        if let Some(pod) = state.pods.get_mut(&node)
            && pod.ready != ready
        {
            pod.ready = ready;
            let describe = pod.container.describe();
            let after = pod.started.elapsed();
            state.event(format!("{node}: {describe} ready={ready} ({after:.1?} after start)"));
        }
    }
    let (ds, hash) = (ds?, hash?);
    let template = &ds.spec.as_ref()?.template;
    // Missing pods: new nodes, crashed pods after their backoff.
    for node in &wanted {
        let backoff = state.crashed.get(node).is_some_and(|t| t.elapsed() < CRASH_BACKOFF);
        if !state.pods.contains_key(node) && !backoff {
            start_pod(shared, state, node, template, hash);
        }
    }
    // Rolling update, one node at a time, only while every pod is ready.
    let all_ready = wanted.iter().all(|n| state.pods.get(n).is_some_and(|p| p.ready));
    if all_ready && let Some(node) = wanted.iter().find(|n| state.pods.get(*n).is_some_and(|p| p.template_hash != hash))
    {
        let node = node.clone();
        if let Some(pod) = state.pods.remove(&node) {
            state.retire(&node, pod, "template changed (rolling update)");
        }
        start_pod(shared, state, &node, template, hash);
    }
    let current = wanted.iter().filter(|n| state.pods.contains_key(*n)).count();
    let updated = wanted.iter().filter(|n| state.pods.get(*n).is_some_and(|p| p.template_hash == hash)).count();
    let ready = wanted.iter().filter(|n| state.pods.get(*n).is_some_and(|p| p.ready)).count();
    let desired = wanted.len();
    Some(json!({
        "observedGeneration": ds.metadata.generation.unwrap_or(0),
        "desiredNumberScheduled": desired,
        "currentNumberScheduled": current,
        "updatedNumberScheduled": updated,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": desired - ready,
        "numberMisscheduled": 0,
    }))
}

fn start_pod(
    shared: &Shared,
    state: &mut State,
    node: &str,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    hash: u64,
) {
    let Some(host) = state.hosted.get(node).cloned() else { return };
    let cfg = &shared.config;
    let facts = NodeFacts {
        node: node.to_string(),
        node_ip: host.ip,
        pod: format!("{}-{node}", cfg.daemon_set),
        namespace: cfg.namespace.clone(),
        root: host.root.clone(),
        shared_paths: cfg.shared_paths.clone(),
        extra_env: cfg.extra_env.clone(),
        extra_mounts: cfg.extra_mounts.clone(),
    };
    let specs = match container::resolve(template, &facts) {
        Ok(s) => s,
        Err(e) => {
            state.event(format!("{node}: cannot run the template: {e}"));
            state.crashed.insert(node.to_string(), Instant::now());
            return;
        }
    };
    for dir in container::directories_to_create(template, &facts) {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            state.event(format!("{node}: hostPath {}: {e}", dir.display()));
        }
    }
    // The agent DaemonSet has one container; more would need a pod abstraction.
    let Some(spec) = specs.into_iter().next() else { return };
    match shared.runtime.start(&host, &spec) {
        Ok(container) => {
            state.event(format!("{node}: started {} ({})", container.describe(), shared.runtime.name()));
            state.crashed.remove(node);
            state.pods.insert(
                node.to_string(),
                DaemonPod { container, spec, template_hash: hash, ready: false, started: Instant::now() },
            );
        }
        Err(e) => {
            state.event(format!("{node}: runtime {} failed to start the pod: {e}", shared.runtime.name()));
            state.crashed.insert(node.to_string(), Instant::now());
        }
    }
}
