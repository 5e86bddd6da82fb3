//! The lab network: nodes on two underlay subnets behind a router, plus an "internet".
//!
//! ```text
//!   internet ns  203.0.113.10/24 ──┐
//!                                  │ inet (203.0.113.1)
//!                     ┌──────── router ns ────────┐  ip_forward=1, no routes to pod CIDRs
//!     br1 10.0.1.1/24 │                           │ br2 10.0.2.1/24
//!       ┌─────────────┴───┐                   ┌───┴─────────┐
//!  node1 eth0 10.0.1.11  node2 eth0 10.0.1.12   node3 eth0 10.0.2.13 ...
//! ```
//! Node `i` (1-based) lives on subnet `10.0.S.0/24` with address `10.0.S.(10+i)`, default
//! route via the router, and gets block `i` of every pool (`10.244.i.0/26` for the default
//! pool `10.244.0.0/16`, blockSize 26). The router knows nothing about pods: pod traffic
//! between subnets must be encapsulated (or NATed) by the nodes, which is what makes
//! CrossSubnet real.
//!
//! Everything belongs to one [`Topology`]: namespaces are named `<prefix>-<role>` with a
//! prefix unique per test, and a per-test temp dir holds each node's CNI conf dir,
//! host-local data dir, snapshot and agent log (all "nodes" share one filesystem). Dropping
//! the topology stops agents, deletes pods (CNI DEL), then deletes every namespace and the
//! temp dir; [`Topology::finish`] does the same and then verifies nothing was left behind.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde_json::Value;
use trellis_agent::model::Capabilities;
use trellis_agent::reconcile::PassReport;
use trellis_agent::snapshot::{CniPlugin, CniSettings, LocalNode, Peer, Pool, Snapshot, VxlanSettings};
use trellis_api::EncapMode;

use crate::agent::{self, AgentProcess, AgentRun};
use crate::cni;
use crate::error::{Error, Result};
use crate::netns::{self, Netns};
use crate::pod::{Pod, PodInfo};
use crate::probe;

/// The "internet" host's address.
pub const INTERNET: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const INTERNET_GW: &str = "203.0.113.1/24";
/// The default pool of the lab.
pub const DEFAULT_POOL: &str = "10.244.0.0/16";
/// Block size of the lab's pools.
pub const BLOCK_SIZE: u8 = 26;
/// The uplink's name inside every node.
pub const UPLINK: &str = "eth0";

/// Describes the lab before it is built.
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    tag: String,
    nodes: Vec<(String, u8)>,
    pools: Vec<String>,
}

impl TopologyBuilder {
    /// Adds a node on underlay subnet `10.0.SUBNET.0/24`.
    pub fn node(mut self, name: &str, subnet: u8) -> Self {
        self.nodes.push((name.to_string(), subnet));
        self
    }

    /// Pools whose blocks the nodes get (default: [`DEFAULT_POOL`] only).
    pub fn pools(mut self, pools: &[&str]) -> Self {
        self.pools = pools.iter().map(|p| p.to_string()).collect();
        self
    }

    /// Creates every namespace and link.
    pub fn build(self) -> Result<Topology> {
        let pools = self
            .pools
            .iter()
            .map(|p| p.parse::<Ipv4Net>().map_err(|e| Error::Setup(format!("pool {p}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let prefix = netns::unique_prefix(&self.tag);
        let dir = tempfile::Builder::new()
            .prefix(&format!("trellis-{prefix}-"))
            .tempdir()
            .map_err(|e| Error::io("create topology temp dir", e))?;
        let router = Netns::create(&format!("{prefix}-router"))?;
        let internet = Netns::create(&format!("{prefix}-inet"))?;
        let mut topo = Topology {
            agents: Vec::new(),
            pods: Vec::new(),
            nodes: Vec::new(),
            router,
            internet,
            prefix: prefix.clone(),
            dir,
            pools: pools.clone(),
        };
        topo.wire_router()?;
        let mut subnets: Vec<u8> = self.nodes.iter().map(|(_, s)| *s).collect();
        subnets.sort();
        subnets.dedup();
        for s in &subnets {
            topo.add_subnet(*s)?;
        }
        for (i, (name, subnet)) in self.nodes.iter().enumerate() {
            let index = i as u8 + 1;
            let node = topo.add_node(name, index, *subnet, &pools)?;
            topo.nodes.push(node);
        }
        Ok(topo)
    }
}

/// One node: a namespace with an uplink on the underlay.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub ns: Netns,
    /// 1-based position; also the block index in every pool.
    pub index: u8,
    /// Node address with the subnet prefix, e.g. `10.0.1.11/24`.
    pub address: Ipv4Net,
    /// One block per pool.
    pub blocks: Vec<Ipv4Net>,
    /// Per-node directory (CNI conf, IPAM data, snapshot, logs).
    pub dir: PathBuf,
}

impl Node {
    pub fn ip(&self) -> Ipv4Addr {
        self.address.addr()
    }
    pub fn netns(&self) -> &str {
        self.ns.name()
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }
    pub fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.yaml")
    }
    /// The CNI settings the lab gives the agent for this node.
    pub fn cni_settings(&self) -> CniSettings {
        CniSettings {
            conf_dir: self.cni_conf_dir(),
            conf_name: "10-trellis.conflist".to_string(),
            ipam_data_dir: self.ipam_dir(),
            plugin: CniPlugin::Ptp,
        }
    }
    pub fn conflist_path(&self) -> PathBuf {
        let s = self.cni_settings();
        s.conf_dir.join(s.conf_name)
    }
}

/// The built lab. Field order is teardown order.
pub struct Topology {
    agents: Vec<AgentProcess>,
    pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub router: Netns,
    pub internet: Netns,
    pub prefix: String,
    dir: tempfile::TempDir,
    pools: Vec<Ipv4Net>,
}

impl Topology {
    /// Starts describing a lab; `tag` (a few letters) names the test in `ip netns list`.
    pub fn builder(tag: &str) -> TopologyBuilder {
        TopologyBuilder { tag: tag.to_string(), nodes: Vec::new(), pools: vec![DEFAULT_POOL.to_string()] }
    }

    /// The usual lab: node1 and node2 on subnet 1, node3 on subnet 2.
    pub fn standard(tag: &str) -> Result<Topology> {
        Self::builder(tag).node("node1", 1).node("node2", 1).node("node3", 2).build()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    fn wire_router(&mut self) -> Result<()> {
        let r = &self.router;
        // Before any link exists, so every interface inherits them. rp_filter off: with NAT
        // disabled, pod-sourced packets cross the router, which has no route back to pods.
        r.sysctl("net.ipv4.ip_forward", "1")?;
        r.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
        r.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        netns::veth(r, "inet", &self.internet, UPLINK)?;
        r.ip(&["addr", "add", INTERNET_GW, "dev", "inet"])?;
        r.ip(&["link", "set", "inet", "up"])?;
        let inet = &self.internet;
        inet.ip(&["addr", "add", &format!("{INTERNET}/24"), "dev", UPLINK])?;
        inet.ip(&["link", "set", UPLINK, "up"])?;
        inet.ip(&["route", "add", "default", "via", "203.0.113.1"])?;
        Ok(())
    }

    /// The router's bridge `br<subnet>` with address `10.0.<subnet>.1/24`.
    fn add_subnet(&self, subnet: u8) -> Result<()> {
        let br = format!("br{subnet}");
        self.router.ip(&["link", "add", &br, "type", "bridge"])?;
        self.router.ip(&["addr", "add", &format!("10.0.{subnet}.1/24"), "dev", &br])?;
        self.router.ip(&["link", "set", &br, "up"])?;
        Ok(())
    }

    /// Adds a node to the built lab (a new subnet gets its bridge on the router); the node's
    /// index is one more than the highest so far.
    pub fn join_node(&mut self, name: &str, subnet: u8) -> Result<&Node> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(Error::Setup(format!("node {name} exists already")));
        }
        if self.router.ip(&["link", "show", &format!("br{subnet}")]).is_err() {
            self.add_subnet(subnet)?;
        }
        let index = self.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        let node = self.add_node(name, index, subnet, &self.pools)?;
        self.nodes.push(node);
        Ok(&self.nodes[self.nodes.len() - 1])
    }

    /// Removes a node: its namespace (and with it its uplink and everything inside) and its
    /// directory. Pods and agents of that node must be gone first.
    pub fn remove_node(&mut self, name: &str) -> Result<()> {
        let pos =
            self.nodes.iter().position(|n| n.name == name).ok_or_else(|| Error::Setup(format!("no node {name}")))?;
        let node = self.nodes.remove(pos);
        let dir = node.dir.clone();
        drop(node);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("remove {}", dir.display()), e))
    }

    fn add_node(&self, name: &str, index: u8, subnet: u8, pools: &[Ipv4Net]) -> Result<Node> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let port = format!("n{index}");
        netns::veth(&ns, UPLINK, &self.router, &port)?;
        self.router.ip(&["link", "set", &port, "master", &format!("br{subnet}")])?;
        self.router.ip(&["link", "set", &port, "up"])?;
        let address: Ipv4Net = format!("10.0.{subnet}.{}/24", 10 + u32::from(index))
            .parse()
            .map_err(|e| Error::Setup(format!("node address: {e}")))?;
        ns.ip(&["addr", "add", &address.to_string(), "dev", UPLINK])?;
        ns.ip(&["link", "set", UPLINK, "up"])?;
        ns.ip(&["route", "add", "default", "via", &format!("10.0.{subnet}.1")])?;
        let blocks = pools.iter().map(|p| block_of(*p, index)).collect::<Result<Vec<_>>>()?;
        let dir = self.dir.path().join(name);
        for d in [dir.clone(), dir.join("net.d"), dir.join("ipam")] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        Ok(Node { name: name.to_string(), ns, index, address, blocks, dir })
    }

    /// The snapshot the cluster would hand node `i`: itself, every other node as a peer,
    /// `pools`, and per-node CNI paths.
    pub fn snapshot(&self, i: usize, pools: &[Pool]) -> Snapshot {
        let me = &self.nodes[i];
        let blocks = |n: &Node| n.blocks.iter().map(|b| IpNet::V4(*b)).collect::<Vec<_>>();
        Snapshot {
            node: LocalNode {
                name: me.name.clone(),
                address: IpNet::V4(me.address),
                uplink: UPLINK.to_string(),
                uplink_mtu: None,
                blocks: blocks(me),
                vtep_mac: None,
                tunnel_address: None,
            },
            peers: self
                .nodes
                .iter()
                .filter(|n| n.index != me.index)
                .map(|n| Peer {
                    name: n.name.clone(),
                    address: IpNet::V4(n.address),
                    vtep_mac: None,
                    tunnel_address: None,
                    blocks: blocks(n),
                })
                .collect(),
            pools: pools.to_vec(),
            mtu: None,
            vxlan: VxlanSettings::default(),
            cni: me.cni_settings(),
        }
    }

    /// Writes node `i`'s snapshot file (YAML) and returns its path.
    pub fn write_snapshot(&self, i: usize, snapshot: &Snapshot) -> Result<PathBuf> {
        let path = self.nodes[i].snapshot_path();
        let text = serde_yaml::to_string(snapshot)
            .map_err(|e| Error::Parse { what: "snapshot".into(), detail: e.to_string() })?;
        // Write-then-rename: a running agent re-reads the file and must never see half of it.
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("rename to {}", path.display()), e))?;
        Ok(path)
    }

    /// Writes every node's snapshot for `pools` and runs `apply --once` on each.
    /// Fails (with the agent's output) unless every run exits 0.
    pub fn apply_once_all(&self, pools: &[Pool]) -> Result<Vec<AgentRun>> {
        let mut runs = Vec::new();
        for i in 0..self.nodes.len() {
            let run = self.apply_once(i, pools)?;
            if !run.status.success() {
                return Err(Error::Setup(format!("agent failed on {}:\n{run}", self.nodes[i].name)));
            }
            runs.push(run);
        }
        Ok(runs)
    }

    /// Writes node `i`'s snapshot and runs `trellis-agent apply --snapshot FILE --once` there.
    pub fn apply_once(&self, i: usize, pools: &[Pool]) -> Result<AgentRun> {
        let path = self.write_snapshot(i, &self.snapshot(i, pools))?;
        agent::run(self.nodes[i].netns(), &["apply", "--snapshot", &path.to_string_lossy(), "--once"])
    }

    /// Writes node `i`'s snapshot and runs one pass of the agent's reconcile code in-process
    /// in the node's namespace, planned for `caps` (see [`agent::pass_with_capabilities`]).
    pub fn apply_once_with_capabilities(&self, i: usize, pools: &[Pool], caps: Capabilities) -> Result<PassReport> {
        let path = self.write_snapshot(i, &self.snapshot(i, pools))?;
        agent::pass_with_capabilities(self.nodes[i].netns(), &path, caps)
    }

    /// Runs `trellis-agent plan --snapshot FILE` for node `i`'s current snapshot file.
    pub fn plan(&self, i: usize) -> Result<AgentRun> {
        let path = self.nodes[i].snapshot_path();
        agent::run(self.nodes[i].netns(), &["plan", "--snapshot", &path.to_string_lossy()])
    }

    /// Writes node `i`'s snapshot and starts a long-running agent there; returns its index
    /// for [`Topology::agent`].
    pub fn start_agent(&mut self, i: usize, pools: &[Pool], resync_secs: u64) -> Result<usize> {
        let path = self.write_snapshot(i, &self.snapshot(i, pools))?;
        let node = &self.nodes[i];
        let log = node.dir.join("agent.log");
        let process = AgentProcess::start(node.netns(), &node.name, &path, resync_secs, &log)?;
        self.agents.push(process);
        Ok(self.agents.len() - 1)
    }

    pub fn agent(&mut self, a: usize) -> &mut AgentProcess {
        &mut self.agents[a]
    }

    /// Creates a pod on node `i` with the conflist the agent wrote there.
    pub fn add_pod(&mut self, i: usize, name: &str) -> Result<PodInfo> {
        let conflist = cni::read_conflist(&self.nodes[i].conflist_path())?;
        self.add_pod_with(i, name, conflist)
    }

    /// Creates a pod on node `i` with an explicit conflist.
    pub fn add_pod_with(&mut self, i: usize, name: &str, conflist: Value) -> Result<PodInfo> {
        let node = &self.nodes[i];
        let netns_name = format!("{}-{}-{name}", self.prefix, node.name);
        let pod = Pod::create(node.netns(), i, name, &netns_name, conflist)?;
        let info = pod.info.clone();
        self.pods.push(pod);
        Ok(info)
    }

    /// Network state of every namespace plus agent logs, for failure messages.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&probe::dump(n.netns()));
        }
        out.push_str(&probe::dump(self.router.name()));
        for a in &self.agents {
            out.push_str(&format!("===== agent log {} =====\n{}\n", a.node, a.log_text()));
        }
        out
    }

    /// Tears everything down and verifies that no namespace, process or file of this lab
    /// is left behind.
    pub fn finish(self) -> Result<()> {
        let prefix = format!("{}-", self.prefix);
        let dir = self.dir.path().to_path_buf();
        drop(self);
        let mut leaks = netns::list_with_prefix(&prefix);
        leaks.extend(processes_mentioning(&[&prefix, &dir.to_string_lossy()]));
        if dir.exists() {
            leaks.push(format!("directory {}", dir.display()));
        }
        if leaks.is_empty() { Ok(()) } else { Err(Error::Leak(leaks.join(", "))) }
    }
}

/// Processes whose command line mentions any of `needles` (e.g. an agent given a snapshot
/// path in the lab's temp dir, or `ip netns exec <lab namespace>`).
pub fn processes_mentioning(needles: &[&str]) -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter(|e| e.file_name().to_string_lossy() != me)
        .filter_map(|e| {
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            needles
                .iter()
                .any(|n| line.contains(n))
                .then(|| format!("process {} ({})", e.file_name().to_string_lossy(), line.trim()))
        })
        .collect()
}

/// Block `index` of `pool` for [`BLOCK_SIZE`]: the `index`-th /26 counted in /24 steps, so
/// node N's block reads `10.244.N.0/26`.
pub fn block_of(pool: Ipv4Net, index: u8) -> Result<Ipv4Net> {
    let base = u32::from(pool.network()) + (u32::from(index) << 8);
    let block = Ipv4Net::new(Ipv4Addr::from(base), BLOCK_SIZE).map_err(|e| Error::Setup(e.to_string()))?;
    if pool.contains(&block) { Ok(block) } else { Err(Error::Setup(format!("block {block} is outside pool {pool}"))) }
}

/// A pool for the lab's snapshots.
pub fn pool(name: &str, cidr: &str, ipip: EncapMode, vxlan: EncapMode, nat_outgoing: bool) -> Result<Pool> {
    Ok(Pool {
        name: name.to_string(),
        cidr: cidr.parse().map_err(|e| Error::Setup(format!("pool {name} cidr {cidr}: {e}")))?,
        ipip_mode: ipip,
        vxlan_mode: vxlan,
        nat_outgoing,
        disabled: false,
        block_size: Some(BLOCK_SIZE),
        allowed_uses: None,
        transition: None,
    })
}

/// An address as `IpAddr`, for the probes.
pub fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}
