//! A whole Trellis cluster on one machine, with nothing faked but the kubelet.
//!
//! [`Cluster::up`] brings up, in this order:
//! 1. a private API server ([`crate::kapi`]) and the CRDs;
//! 2. the lab network ([`crate::topology`]): node namespaces on two underlay subnets, the
//!    router between them, the "internet" namespace; each node reaches the API server on the
//!    host's loopback through a [`LoopbackForward`];
//! 3. a Node object per node ([`node`]), as its kubelet would register it;
//! 4. the operator, through an [`OperatorInstall`] (default: the workspace binary as a
//!    process, [`ProcessOperator`]);
//! 5. the Installation `default` from the spec;
//! 6. the kubelet stand-in ([`kubelet`]): it runs the DaemonSet the operator renders on every
//!    node through a [`PodRuntime`] (default: processes in the node namespace,
//!    [`ProcessRuntime`]), exactly as its pod template says, and reports the DaemonSet status.
//!
//! Then [`Cluster::wait_ready`] waits until the Installation is Ready and every node applied
//! every pool. Workload pods come from [`Cluster::add_pod`] (Pod object, real CNI plugins with
//! the conflist the node's agent wrote, pod status). Nodes join and leave with
//! [`Cluster::add_node`] / [`Cluster::remove_node`].
//!
//! Teardown (drop, also while a test panics; [`Cluster::down`] also checks for leaks):
//! pods (CNI DEL), the kubelet and its agents, the operator, the relays, every namespace, the
//! cluster's directory, the API server. A program that must clean up on Ctrl-C calls
//! [`teardown::teardown_all`] from its signal handler.

pub mod container;
pub mod helm_operator;
pub mod kubelet;
pub mod node;
pub mod operator_install;
pub mod pod;
pub mod podman_runtime;
pub mod process_runtime;
pub mod runtime;
pub mod teardown;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod as PodObject};
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use trellis_api::{IPAMBlock, IPPool, Installation, NodeNetwork};

pub use container::{ContainerSpec, Mount};
pub use kubelet::{Kubelet, KubeletConfig};
pub use node::{ClusterNode, SUBNET_LABEL};
pub use operator_install::{InstalledOperator, OperatorEnv, OperatorInstall, ProcessOperator};
pub use pod::PodRef;
pub use process_runtime::ProcessRuntime;
pub use runtime::{NodeHost, PodRuntime, RunningContainer};

use crate::apiserver::ApiServer;
use crate::error::{Error, Result};
use crate::forward::LoopbackForward;
use crate::kapi::PrivateApiServer;
use crate::probe;
pub use crate::probe::{scaled, time_scale};
use crate::topology::Topology;

/// The operator's namespace.
pub const NAMESPACE: &str = "trellis-system";
/// The agent DaemonSet's name.
pub const AGENT_DAEMONSET: &str = "trellis-agent";
/// The lab's pod CIDR.
pub const POD_CIDR: &str = "10.244.0.0/16";
/// Where the kubeconfig appears inside agent containers (`KUBECONFIG` points there).
pub const CONTAINER_KUBECONFIG: &str = "/var/run/trellis/kubeconfig";
/// Upper bound for the cluster to converge (times [`time_scale`]); every wait ends as soon as its
/// condition holds.
pub const WAIT: Duration = Duration::from_secs(60);

/// What to bring up.
pub struct ClusterSpec {
    /// A few letters naming the cluster in `ip netns list` (namespaces are `tr<tag>-...`).
    pub tag: String,
    /// (name, underlay subnet number).
    pub nodes: Vec<(String, u8)>,
    /// The Installation `default`'s spec.
    pub installation: Value,
    pub operator: Box<dyn OperatorInstall>,
    /// `None`: [`ProcessRuntime::workspace`].
    pub runtime: Option<Arc<dyn PodRuntime>>,
    /// The container runtime's CNI conf dir on every node (where pods' conflists are read).
    pub cni_conf_dir: String,
}

impl ClusterSpec {
    /// node1 and node2 on subnet 1, node3 on subnet 2; one pool [`POD_CIDR`] (blockSize 26,
    /// VXLANCrossSubnet, NAT outgoing).
    pub fn new(tag: &str) -> ClusterSpec {
        ClusterSpec {
            tag: tag.to_string(),
            nodes: vec![("node1".into(), 1), ("node2".into(), 1), ("node3".into(), 2)],
            installation: json!({ "network": { "ipPools": [{
                "cidr": POD_CIDR, "blockSize": 26, "encapsulation": "VXLANCrossSubnet", "natOutgoing": "Enabled",
            }]}}),
            operator: Box::new(ProcessOperator::default()),
            runtime: None,
            cni_conf_dir: "/etc/cni/net.d".into(),
        }
    }

    pub fn nodes(mut self, nodes: &[(&str, u8)]) -> Self {
        self.nodes = nodes.iter().map(|(n, s)| (n.to_string(), *s)).collect();
        self
    }

    /// The Installation's spec (Trellis' `network` or Tigera's `calicoNetwork` shape).
    pub fn installation(mut self, spec: Value) -> Self {
        self.installation = spec;
        self
    }

    /// One pool of [`POD_CIDR`] with this encapsulation and NAT setting.
    pub fn pool(self, encapsulation: &str, nat_outgoing: bool) -> Self {
        let nat = if nat_outgoing { "Enabled" } else { "Disabled" };
        self.installation(json!({ "network": { "ipPools": [{
            "cidr": POD_CIDR, "blockSize": 26, "encapsulation": encapsulation, "natOutgoing": nat,
        }]}}))
    }

    pub fn operator(mut self, operator: Box<dyn OperatorInstall>) -> Self {
        self.operator = operator;
        self
    }

    pub fn runtime(mut self, runtime: Arc<dyn PodRuntime>) -> Self {
        self.runtime = Some(runtime);
        self
    }
}

/// A running cluster. Field order is teardown order (see the module header).
pub struct Cluster {
    pods: Vec<(PodRef, crate::pod::Pod)>,
    kubelet: Kubelet,
    operator: Option<Box<dyn InstalledOperator>>,
    forwards: BTreeMap<String, LoopbackForward>,
    nodes: Vec<ClusterNode>,
    topo: Topology,
    api: ApiServer,
    kapi: PrivateApiServer,
    rt: tokio::runtime::Runtime,
    cni_conf_dir: String,
    registration: teardown::Registration,
}

impl Cluster {
    /// Brings the cluster up (see the module header); returns before the agents are ready:
    /// call [`Cluster::wait_ready`].
    pub fn up(spec: ClusterSpec) -> Result<Cluster> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        let runtime = match spec.runtime {
            Some(r) => r,
            None => Arc::new(ProcessRuntime::workspace()?),
        };
        let kapi = PrivateApiServer::start()?;
        let api = rt.block_on(ApiServer::from_kubeconfig(kapi.kubeconfig())).map_err(api_error)?;
        rt.block_on(api.apply_crds()).map_err(api_error)?;
        let mut builder = Topology::builder(&spec.tag);
        for (name, subnet) in &spec.nodes {
            builder = builder.node(name, *subnet);
        }
        let topo = builder.build()?;
        let registration = teardown::Registration::new(teardown::Leftovers {
            netns_prefix: topo.prefix.clone(),
            dir: topo.dir().to_path_buf(),
            apiserver_state: Some(kapi.state_dir().to_path_buf()),
            pids: Vec::new(),
        });
        let kubelet = Kubelet::start(
            KubeletConfig {
                kubeconfig: kapi.kubeconfig().to_path_buf(),
                namespace: NAMESPACE.into(),
                daemon_set: AGENT_DAEMONSET.into(),
                // The kernel's modules, and the sysctl tree, whose net.* entries follow the
                // opener's network namespace (each node's agent sees its own).
                shared_paths: vec![PathBuf::from("/lib/modules"), PathBuf::from("/proc/sys/net")],
                extra_env: vec![
                    ("KUBECONFIG".into(), CONTAINER_KUBECONFIG.into()),
                    (
                        "RUST_LOG".into(),
                        std::env::var("TRELLIS_AGENT_LOG").unwrap_or_else(|_| "info,trellis_agent=debug".into()),
                    ),
                ],
                extra_mounts: vec![Mount {
                    host_path: kapi.kubeconfig().to_path_buf(),
                    container_path: CONTAINER_KUBECONFIG.into(),
                    read_only: true,
                }],
            },
            runtime,
        )?;
        let mut cluster = Cluster {
            pods: Vec::new(),
            kubelet,
            operator: None,
            forwards: BTreeMap::new(),
            nodes: Vec::new(),
            topo,
            api,
            kapi,
            rt,
            cni_conf_dir: spec.cni_conf_dir,
            registration,
        };
        let names: Vec<String> = cluster.topo.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            cluster.register_node(&name)?;
        }
        let env = OperatorEnv {
            kubeconfig: cluster.kapi.kubeconfig().to_path_buf(),
            namespace: NAMESPACE.into(),
            dir: cluster.topo.dir().join("operator"),
        };
        std::fs::create_dir_all(&env.dir).map_err(|e| Error::io("create the operator dir", e))?;
        let operator = spec.operator.install(&env)?;
        let pids = operator.pids();
        cluster.registration.update(|l| l.pids.extend(pids));
        cluster.operator = Some(operator);
        cluster.apply_installation(&spec.installation)?;
        Ok(cluster)
    }

    /// Turns topology node `name` into a cluster node: directories, relay, kubelet, Node object.
    fn register_node(&mut self, name: &str) -> Result<()> {
        let t = self
            .topo
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Error::Setup(format!("no topology node {name}")))?;
        let subnet = t.address.addr().octets()[2];
        let node = ClusterNode {
            name: name.to_string(),
            subnet,
            address: t.address,
            netns: t.netns().to_string(),
            root: t.dir.join("root"),
            log_dir: t.dir.join("logs"),
        };
        for d in [&node.root, &node.log_dir] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let port = self.kapi.port()?;
        self.forwards.insert(name.to_string(), LoopbackForward::start(&node.netns, port)?);
        self.kubelet.host(node.host());
        self.rt
            .block_on(node.register(self.api.client()))
            .map_err(|e| kube_error(&format!("register Node {name}"), e))?;
        self.nodes.push(node);
        Ok(())
    }

    /// `kubectl apply` of the Installation `default` with `spec`.
    pub fn apply_installation(&self, spec: &Value) -> Result<()> {
        let manifest = json!({"apiVersion": "trellis.dev/v1", "kind": "Installation",
                              "metadata": {"name": "default"}, "spec": spec});
        let yaml = serde_yaml::to_string(&manifest)
            .map_err(|e| Error::Parse { what: "Installation".into(), detail: e.to_string() })?;
        self.kubectl_stdin(&["apply", "-f", "-"], &yaml).map(|_| ())
    }

    pub fn kubeconfig(&self) -> &Path {
        self.kapi.kubeconfig()
    }

    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    pub fn client(&self) -> kube::Client {
        self.api.client()
    }

    /// Runs a future on the cluster's runtime (for kube-rs calls from synchronous tests).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The lab network (router and internet namespaces, the directory).
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn kubelet(&self) -> &Kubelet {
        &self.kubelet
    }

    pub fn nodes(&self) -> &[ClusterNode] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Result<&ClusterNode> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| Error::Setup(format!("no node {name}")))
    }

    /// `kubectl ARGS...` against the cluster; stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.api.kubectl(args).map_err(api_error)?;
        crate::cmd::check(format!("kubectl {}", args.join(" ")), out)
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let out = self.api.kubectl_stdin(args, input).map_err(api_error)?;
        crate::cmd::check(format!("kubectl {}", args.join(" ")), out)
    }

    /// `kubectl patch ippool NAME --type merge -p PATCH`.
    pub fn patch_pool(&self, name: &str, patch: &str) -> Result<String> {
        self.kubectl(&["patch", "ippool", name, "--type", "merge", "-p", patch])
    }

    /// Adds a node on underlay subnet `subnet` while the cluster runs: namespace, Node object;
    /// the kubelet then starts its agent and the operator gives it blocks.
    pub fn add_node(&mut self, name: &str, subnet: u8) -> Result<()> {
        self.topo.join_node(name, subnet)?;
        self.register_node(name)
    }

    /// Removes a node as draining and deleting it would: its pods go (CNI DEL, objects
    /// deleted), the Node object is deleted, the kubelet stops its agent once it sees that,
    /// then the namespace and the node's files go.
    pub fn remove_node(&mut self, name: &str) -> Result<()> {
        let on_node: Vec<PodRef> = self.pods.iter().filter(|(p, _)| p.node == name).map(|(p, _)| p.clone()).collect();
        for p in on_node {
            self.delete_pod(&p)?;
        }
        let nodes: Api<Node> = Api::all(self.client());
        self.rt
            .block_on(nodes.delete(name, &DeleteParams::default()))
            .map_err(|e| kube_error(&format!("delete Node {name}"), e))?;
        probe::wait_until(&format!("the kubelet to stop {name}'s agent"), scaled(WAIT), || {
            if self.kubelet.pods().contains_key(name) { Err(self.kubelet.report()) } else { Ok(()) }
        })?;
        self.kubelet.unhost(name);
        self.forwards.remove(name);
        self.nodes.retain(|n| n.name != name);
        self.topo.remove_node(name)
    }

    /// Where node `name`'s agent writes its conflist (the runtime's CNI conf dir there).
    pub fn cni_conf_dir(&self, node: &str) -> Result<PathBuf> {
        let n = self.node(node)?;
        Ok(n.root.join(self.cni_conf_dir.trim_start_matches('/')))
    }

    /// Creates a pod on `node` as kubelet + container runtime would: the Pod object (bound to
    /// the node), the network namespace, CNI ADD with the node's conflist (waiting for the
    /// agent to write it, as a runtime reports NetworkNotReady until then), the pod status.
    pub fn add_pod(&mut self, node: &str, namespace: &str, name: &str, labels: &[(&str, &str)]) -> Result<PodRef> {
        self.add_pod_with_ports(node, namespace, name, labels, &[])
    }

    /// [`Cluster::add_pod`] with named container ports in the Pod (what named ports in network
    /// policies resolve to).
    pub fn add_pod_with_ports(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        ports: &[pod::ContainerPort<'_>],
    ) -> Result<PodRef> {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let n = self.node(node)?.clone();
        let dir = self.cni_conf_dir(node)?;
        let conflist = probe::wait_until(&format!("a CNI conflist in {}", dir.display()), scaled(WAIT), || {
            pod::read_conflist(&dir).map_err(|e| e.to_string())
        })?;
        let conflist = pod::node_view(conflist, &n.root);
        self.rt
            .block_on(pod::create_object(self.client(), namespace, name, node, &labels, ports))
            .map_err(|e| kube_error(&format!("create Pod {namespace}/{name}"), e))?;
        let netns = format!("{}-{node}-{name}", self.topo.prefix);
        let running = crate::pod::Pod::create(&n.netns, 0, name, &netns, conflist)?;
        let pod = PodRef {
            name: name.to_string(),
            namespace: namespace.to_string(),
            node: node.to_string(),
            netns,
            ip: running.info.ip,
            ips: running.info.ips.clone(),
        };
        self.pods.push((pod.clone(), running));
        self.rt
            .block_on(pod::report_running(self.client(), &pod, n.ip()))
            .map_err(|e| kube_error(&format!("write Pod {namespace}/{name} status"), e))?;
        Ok(pod)
    }

    /// Deletes a pod: CNI DEL, its namespace, the Pod object.
    pub fn delete_pod(&mut self, pod: &PodRef) -> Result<()> {
        if let Some(pos) = self.pods.iter().position(|(p, _)| p == pod) {
            drop(self.pods.remove(pos));
        }
        let api: Api<PodObject> = Api::namespaced(self.client(), &pod.namespace);
        match self.rt.block_on(api.delete(&pod.name, &DeleteParams::default())) {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(kube_error(&format!("delete Pod {}/{}", pod.namespace, pod.name), e)),
        }
    }

    /// Stops the API server process (an outage); etcd and the data stay.
    pub fn pause_api_server(&self) -> Result<()> {
        self.kapi.pause()
    }

    pub fn resume_api_server(&self) -> Result<()> {
        self.kapi.resume()
    }

    /// Every IPPool.
    pub fn pools(&self) -> Result<Vec<IPPool>> {
        let list = self
            .rt
            .block_on(Api::<IPPool>::all(self.client()).list(&ListParams::default()))
            .map_err(|e| kube_error("list IPPools", e))?;
        Ok(list.items)
    }

    /// The blocks the operator gave `node`.
    pub fn blocks(&self, node: &str) -> Result<Vec<Ipv4Net>> {
        let list = self
            .rt
            .block_on(Api::<IPAMBlock>::all(self.client()).list(&ListParams::default()))
            .map_err(|e| kube_error("list IPAMBlocks", e))?;
        let mut blocks: Vec<Ipv4Net> =
            list.items.iter().filter(|b| b.spec.node == node).filter_map(|b| b.spec.cidr.parse().ok()).collect();
        blocks.sort();
        Ok(blocks)
    }

    /// NodeNetworks by name.
    pub fn node_networks(&self) -> Result<BTreeMap<String, NodeNetwork>> {
        let list = self
            .rt
            .block_on(Api::<NodeNetwork>::all(self.client()).list(&ListParams::default()))
            .map_err(|e| kube_error("list NodeNetworks", e))?;
        Ok(list.items.into_iter().filter_map(|nn| Some((nn.metadata.name.clone()?, nn))).collect())
    }

    /// Waits until the Installation is Ready for its generation and [`Cluster::wait_converged`].
    pub fn wait_ready(&self) -> Result<()> {
        probe::wait_until("the Installation default Ready at its generation", scaled(WAIT), || {
            let inst = self
                .rt
                .block_on(Api::<Installation>::all(self.client()).get_opt("default"))
                .map_err(|e| e.to_string())?
                .ok_or("no Installation")?;
            let status = inst.status.as_ref().ok_or("no status")?;
            let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && status.observed_generation == inst.metadata.generation {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        })
        .map_err(|e| self.with_dump(e))?;
        self.wait_converged()
    }

    /// Waits until every node runs the agent of the current DaemonSet template and is ready,
    /// every node's NodeNetwork reports every enabled pool at the pool's current generation
    /// without error and Ready, and every pool's status says READY n/n for all n nodes.
    pub fn wait_converged(&self) -> Result<()> {
        probe::wait_until("every node to apply every pool", scaled(WAIT), || self.converged())
            .map_err(|e| self.with_dump(e))
    }

    /// [`Cluster::wait_converged`], and every node reports `encapsulation` for pool `pool`.
    pub fn wait_pool_mode(&self, pool: &str, encapsulation: &str) -> Result<()> {
        self.wait_pool_mode_within(pool, encapsulation, scaled(WAIT))
    }

    /// [`Cluster::wait_pool_mode`] with another bound (e.g. agents reconnecting after an outage).
    pub fn wait_pool_mode_within(&self, pool: &str, encapsulation: &str, timeout: Duration) -> Result<()> {
        probe::wait_until(&format!("every node to apply pool {pool} as {encapsulation}"), timeout, || {
            self.converged()?;
            let nns = self.node_networks().map_err(|e| e.to_string())?;
            for n in &self.nodes {
                let applied = nns
                    .get(&n.name)
                    .and_then(|nn| nn.status.as_ref())
                    .and_then(|s| s.pools.iter().find(|p| p.name == pool))
                    .map(|p| p.encapsulation.clone());
                if applied.as_deref() != Some(encapsulation) {
                    return Err(format!("{}: {pool} applied as {applied:?}", n.name));
                }
            }
            Ok(())
        })
        .map_err(|e| self.with_dump(e))
    }

    /// `Ok` when converged (see [`Cluster::wait_converged`]), else what is missing.
    pub fn converged(&self) -> Result<(), String> {
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let ds = self
            .rt
            .block_on(Api::<DaemonSet>::namespaced(self.client(), NAMESPACE).get_opt(AGENT_DAEMONSET))
            .map_err(|e| e.to_string())?
            .ok_or("no agent DaemonSet yet")?;
        let s = ds.status.clone().unwrap_or_default();
        let n = names.len() as i32;
        if s.observed_generation != ds.metadata.generation
            || s.desired_number_scheduled != n
            || s.updated_number_scheduled != Some(n)
            || s.number_ready != n
        {
            return Err(format!("DaemonSet status {s:?} (generation {:?}, {n} nodes)", ds.metadata.generation));
        }
        let pools = self.pools().map_err(|e| e.to_string())?;
        let nns = self.node_networks().map_err(|e| e.to_string())?;
        for name in &names {
            let status =
                nns.get(*name).and_then(|nn| nn.status.as_ref()).ok_or(format!("{name}: no NodeNetwork status"))?;
            if !status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
                return Err(format!("{name}: not Ready: {status:?}"));
            }
            for pool in pools.iter().filter(|p| p.spec.disabled != Some(true)) {
                let pname = pool.metadata.name.clone().unwrap_or_default();
                let applied = status.pools.iter().find(|p| p.name == pname);
                match applied {
                    Some(a) if Some(a.generation) == pool.metadata.generation && a.error.is_none() => {}
                    other => {
                        return Err(format!(
                            "{name}: pool {pname} generation {:?}: {other:?}",
                            pool.metadata.generation
                        ));
                    }
                }
            }
        }
        for pool in &pools {
            let s = pool.status.clone().unwrap_or_default();
            let want = format!("{n}/{n}");
            if s.observed_generation != pool.metadata.generation || s.ready.as_deref() != Some(want.as_str()) {
                return Err(format!("pool {:?}: status {s:?}, want READY {want}", pool.metadata.name));
            }
        }
        Ok(())
    }

    /// The routes Trellis installed on `node` (`ip route show proto 84`).
    pub fn routes(&self, node: &str) -> Result<Vec<String>> {
        probe::routes_with_proto(&self.node(node)?.netns, 84)
    }

    /// Trellis' route on `node` towards `peer`'s first block (empty if none).
    pub fn route_to(&self, node: &str, peer: &str) -> Result<String> {
        let block =
            self.blocks(peer)?.into_iter().next().ok_or_else(|| Error::Setup(format!("{peer} has no block")))?;
        let out = crate::cmd::ip(&self.node(node)?.netns, &["route", "show", &block.to_string(), "proto", "84"])?;
        Ok(out.trim().to_string())
    }

    /// The "internet" host's address.
    pub fn internet_ip(&self) -> Ipv4Addr {
        crate::topology::INTERNET
    }

    /// Everything useful when a test fails: each node's network state and agent log, the
    /// kubelet's actions, the operator's log, the cluster's objects.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&probe::dump(&n.netns));
            out.push_str(&format!("===== agent log {} =====\n{}\n", n.name, tail(&self.kubelet.logs(&n.name), 60)));
        }
        out.push_str(&format!("===== kubelet =====\n{}\n", self.kubelet.report()));
        if let Some(op) = &self.operator {
            out.push_str(&format!("===== operator log =====\n{}\n", tail(&op.logs(), 80)));
        }
        let objects = self.kubectl(&["get", "installation,ippools,ipamblocks,nodenetworks,nodes", "-o", "wide"]);
        out.push_str(&format!("===== objects =====\n{}\n", objects.unwrap_or_else(|e| e.to_string())));
        out
    }

    /// `e` with [`Cluster::dump`] appended.
    pub fn with_dump(&self, e: Error) -> Error {
        Error::Setup(format!("{e}\n{}", self.dump()))
    }

    fn teardown(&mut self) {
        self.pods.clear();
        self.kubelet.shutdown();
        if let Some(mut op) = self.operator.take()
            && let Err(e) = op.uninstall()
        {
            eprintln!("cluster teardown: operator: {e}");
        }
        self.forwards.clear();
    }

    /// Tears everything down and verifies that no namespace, process or file of the cluster
    /// is left behind.
    pub fn down(mut self) -> Result<()> {
        self.teardown();
        let prefix = format!("{}-", self.topo.prefix);
        let dir = self.topo.dir().to_path_buf();
        let state = self.kapi.state_dir().to_path_buf();
        drop(self);
        let mut leaks = crate::netns::list_with_prefix(&prefix);
        leaks.extend(crate::topology::processes_mentioning(&[
            &prefix,
            &dir.to_string_lossy(),
            &state.to_string_lossy(),
        ]));
        for d in [&dir, &state] {
            if d.exists() {
                leaks.push(format!("directory {}", d.display()));
            }
        }
        if leaks.is_empty() { Ok(()) } else { Err(Error::Leak(leaks.join(", "))) }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== cluster {} (test failed) =====\n{}", self.topo.prefix, self.kubelet.report());
            for n in &self.nodes {
                eprintln!("===== agent log {} =====\n{}", n.name, tail(&self.kubelet.logs(&n.name), 40));
            }
            if let Some(op) = &self.operator {
                eprintln!("===== operator log =====\n{}", tail(&op.logs(), 40));
            }
        }
        self.teardown();
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn api_error(e: crate::apiserver::ApiError) -> Error {
    Error::Setup(e.to_string())
}

fn kube_error(what: &str, e: kube::Error) -> Error {
    Error::Setup(format!("{what}: {e}"))
}
