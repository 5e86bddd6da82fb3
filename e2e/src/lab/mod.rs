//! `make lab`: a 3-node Trellis cluster on this machine, installed from the Helm chart, its
//! operator and agents running as podman containers of the project's images, and the classic
//! pod-network experiments replayed on it, one *chapter* each, printed as they run and summed
//! up in a table (experiment, expected, seen, ok).
//!
//! [`run`] builds the images, brings the cluster up ([`Cluster::up`] with the
//! [`PodmanRuntime`] and the [`HelmOperator`]), creates three pods (pod-a on node1, pod-b on
//! node2 in the same underlay subnet, pod-c on node3 behind the router) and runs [`chapters`]
//! in order. A chapter is a function `fn(&mut Lab) -> Result<()>`: it prints what it shows and
//! records every measurement in [`Lab::summary`] (`equal`/`check`/`failed`); an error ends only
//! that chapter (its row says so) and the next one runs. A chapter may change the pool (mode,
//! NAT) but leaves every node converged.
//!
//! Adding a chapter: a module here with `pub fn run(lab: &mut Lab) -> Result<()>`, and a
//! [`Chapter`] entry at its place in [`chapters`].
//!
//! Cleanup ([`cleanup`]): everything the lab creates lives below [`cleanup::WORK_DIR`] or
//! carries its names, so a signal handler, a panic (the cluster's destructors) and `lab down`
//! (`make lab-down`) can remove it all.

pub mod cleanup;
pub mod connectivity;
pub mod cross_subnet;
pub mod ipip_vm;
pub mod mtu;
pub mod nat;
pub mod nodes;
pub mod policy;
pub mod pools;
pub mod report;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::cluster::helm_operator::HelmOperator;
use crate::cluster::podman_runtime::{NETNS_LABEL, PodmanRuntime};
use crate::cluster::{Cluster, ClusterSpec, PodRef};
use crate::podman;
use report::Summary;

/// The pool the Installation creates.
pub const POOL: &str = "default-ipv4-ippool";

/// What `make lab` was asked for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Leave the cluster up (until Ctrl-C or `make lab-down`) and print how to explore it.
    pub keep: bool,
    /// Run the IPIP chapter in the kernel VM.
    pub vm: bool,
}

/// The running lab every chapter works on.
pub struct Lab {
    pub cluster: Cluster,
    /// pod-a (node1), pod-b (node2, same subnet as node1), pod-c (node3, the other subnet).
    pub pods: Vec<PodRef>,
    pub summary: Summary,
}

impl Lab {
    /// The pod named `name` (pod-a, pod-b, pod-c).
    pub fn pod(&self, name: &str) -> Result<PodRef> {
        self.pods.iter().find(|p| p.name == name).cloned().with_context(|| format!("no pod {name}"))
    }

    /// The network namespace of node `name`.
    pub fn netns(&self, node: &str) -> Result<String> {
        Ok(self.cluster.node(node)?.netns.clone())
    }
}

/// One experiment of the lab.
pub struct Chapter {
    pub title: &'static str,
    pub run: fn(&mut Lab) -> Result<()>,
}

/// The chapters in the order `make lab` prints them (the order of issue 8).
pub fn chapters(options: Options) -> Vec<Chapter> {
    let mut all = vec![
        Chapter { title: "each node: routes, links, neighbours, FDB (vxlanMode: Always)", run: nodes::run },
        Chapter { title: "connectivity matrix (ping)", run: connectivity::run },
        Chapter { title: "the encapsulation on the underlay (tcpdump on node1's eth0)", run: wire::run },
        Chapter { title: "kubectl get ippools", run: pools::run },
        Chapter {
            title: "kubectl patch ippool default-ipv4-ippool --type merge -p '{\"spec\":{\"vxlanMode\":\"CrossSubnet\"}}'",
            run: cross_subnet::run,
        },
        Chapter { title: "MTU per mode", run: mtu::run },
        Chapter { title: "NAT egress: what a server in the internet namespace sees", run: nat::run },
        Chapter { title: "network policy: default deny, then the whitelist (TCP 80 matrix)", run: policy::run },
    ];
    if options.vm {
        all.push(Chapter {
            title: "IPIP (ipipMode: Always) in the full-kernel VM: this host's kernel has no ipip",
            run: ipip_vm::run,
        });
    }
    all
}

/// Prints a chapter heading.
pub fn section(title: &str) {
    println!("\n=== {title} {}", "=".repeat(90usize.saturating_sub(title.len())));
}

/// `text` indented by four spaces.
pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

/// The whole lab (see the module header); `Ok(true)` when every experiment is ok.
pub fn run(options: Options) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (network namespaces, podman)");
    }
    let t0 = Instant::now();
    let _work = cleanup::WorkDir::claim()?;
    cleanup::tear_down_on_signal()?;
    let mut summary = Summary::default();

    section("building the images (images/build, cached)");
    let runtime = PodmanRuntime::local_images()?;
    println!("  agent and operator images ready ({:.0?})", t0.elapsed());

    section("bringing up the cluster: API server, CRDs, nodes, helm install, agents");
    let spec = ClusterSpec::new("lab")
        .pool("VXLAN", true)
        .runtime(Arc::new(runtime.clone()))
        .operator(Box::new(HelmOperator::new(runtime)));
    let mut cluster = Cluster::up(spec)?;
    let _hold = cleanup::HoldOnInterrupt;
    cluster.wait_ready()?;
    println!("  converged after {:.0?}", t0.elapsed());
    containers(&cluster, &mut summary)?;
    let mut pods = Vec::new();
    for (node, name) in [("node1", "pod-a"), ("node2", "pod-b"), ("node3", "pod-c")] {
        let pod = cluster.add_pod(node, "default", name, &[])?;
        println!("  {name} on {node}: {}", pod.ip);
        pods.push(pod);
    }
    let mut lab = Lab { cluster, pods, summary };
    let _hold_lab = cleanup::HoldOnInterrupt;

    for chapter in chapters(options) {
        section(chapter.title);
        let outcome = (chapter.run)(&mut lab);
        cleanup::hold_if_interrupted();
        if let Err(e) = outcome {
            lab.summary.failed(chapter.title, "the chapter runs", format!("{e:#}"));
        }
    }

    section("summary");
    println!("{}", lab.summary);
    println!("the lab took {:.0?}", t0.elapsed());
    let ok = lab.summary.all_ok();
    if options.keep {
        explore(&lab);
        // The signal thread tears everything down and exits.
        loop {
            std::thread::park();
        }
    }
    lab.cluster.down().context("teardown")?;
    Ok(ok)
}

/// The lab's containers as podman lists them; the agents and the operator must be up.
fn containers(cluster: &Cluster, summary: &mut Summary) -> Result<()> {
    let ps = podman::podman(&[
        "ps",
        "--filter",
        &format!("label={}", podman::TESTBED_LABEL),
        "--format",
        "{{.Names}}\t{{.Image}}\t{{.Status}}",
    ])?;
    let prefix = &cluster.topology().prefix;
    let mine: Vec<&str> = ps.lines().filter(|l| l.contains(prefix.as_str())).collect();
    println!("  containers (e2e/testbed/podman ps):\n{}", indent(&mine.join("\n")));
    let up = |image: &str| mine.iter().filter(|l| l.contains(image) && l.contains("Up")).count();
    summary.equal("agent containers running (podman)", cluster.nodes().len(), up("trellis/agent"));
    summary.equal("operator container from the chart (helm)", 1, up("trellis/operator"));
    Ok(())
}

/// `KEEP=1`: how to look around while the cluster stays up.
fn explore(lab: &Lab) {
    let nodes: Vec<&str> = lab.cluster.nodes().iter().map(|n| n.netns.as_str()).collect();
    let (a, c) = (&lab.pods[0], &lab.pods[2]);
    println!(
        "\nThe cluster stays up until Ctrl-C here (or `make lab-down` in another shell). Explore it:\n\
         \x20 export KUBECONFIG={}\n\
         \x20 kubectl get installation,ippools,ipamblocks,nodenetworks,nodes\n\
         \x20 kubectl patch ippool {POOL} --type merge -p '{{\"spec\":{{\"vxlanMode\":\"Always\"}}}}'\n\
         \x20 ip netns exec {} ip route             # the nodes: {}\n\
         \x20 ip netns exec {} ping {}          # {} -> {}\n\
         \x20 e2e/testbed/podman ps                  # the agents and the operator\n\
         \x20 e2e/testbed/podman logs $(e2e/testbed/podman ps -q --filter label={NETNS_LABEL}={})",
        lab.cluster.kubeconfig().display(),
        nodes[0],
        nodes.join(" "),
        a.netns,
        c.ip,
        a.name,
        c.name,
        nodes[0],
    );
}
