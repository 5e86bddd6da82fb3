//! The compiler's inputs from the Kubernetes objects (pure): pods (their labels, addresses
//! from `status.podIPs` and named container ports), namespaces, NetworkPolicies and
//! GlobalNetworkPolicies, plus this node's pods with the host-side interface the host route
//! to their address uses.
//!
//! Left out: host-network pods (policy neither selects nor protects them, as in Kubernetes),
//! finished pods (Succeeded/Failed: their addresses may already belong to a new pod) and pods
//! without an address yet. A local pod whose host route is not there yet is enforced from
//! the pass after it appears (route changes wake the enforcer; the resync catches the rest).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use trellis_api::GlobalNetworkPolicy;

use super::inputs::{LocalPod, NamedPort, Pod, PolicyInputs, Protocol};

/// The pod's addresses (`status.podIPs`, else `status.podIP`).
fn addresses(pod: &KubePod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else { return Vec::new() };
    let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips.sort();
    ips.dedup();
    ips
}

fn named_ports(pod: &KubePod) -> Vec<NamedPort> {
    let spec = pod.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
    let mut out: Vec<NamedPort> = containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = Protocol::from_kubernetes(p.protocol.as_deref().unwrap_or("TCP"))?;
            let port = u16::try_from(p.container_port).ok()?;
            Some(NamedPort { name, protocol, port })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether policy concerns the pod at all.
fn on_pod_network(pod: &KubePod) -> bool {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
    let finished =
        pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
    !host_network && !finished
}

/// Builds the inputs for node `node_name`; `host_routes` maps host-route destinations to
/// interfaces (see [`crate::kernel::netlink::host`]).
pub fn inputs_from_cluster<'a>(
    node_name: &str,
    pods: impl IntoIterator<Item = &'a KubePod>,
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    network_policies: impl IntoIterator<Item = &'a NetworkPolicy>,
    global_policies: impl IntoIterator<Item = &'a GlobalNetworkPolicy>,
    host_routes: &BTreeMap<IpAddr, String>,
) -> PolicyInputs {
    let mut inputs = PolicyInputs {
        network_policies: network_policies.into_iter().cloned().collect(),
        global_policies: global_policies.into_iter().cloned().collect(),
        ..Default::default()
    };
    for ns in namespaces {
        if let Some(name) = &ns.metadata.name {
            inputs.namespaces.insert(name.clone(), ns.metadata.labels.clone().unwrap_or_default());
        }
    }
    for pod in pods {
        let (Some(namespace), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else { continue };
        let ips = addresses(pod);
        if !on_pod_network(pod) || ips.is_empty() {
            continue;
        }
        let local = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node_name);
        if local && let Some(interface) = ips.iter().find_map(|ip| host_routes.get(ip)) {
            inputs.local.push(LocalPod {
                namespace: namespace.clone(),
                name: name.clone(),
                interface: interface.clone(),
            });
        }
        inputs.pods.push(Pod {
            namespace: namespace.clone(),
            name: name.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            ports: named_ports(pod),
        });
    }
    inputs.local.sort();
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> KubePod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn pods_addresses_ports_and_local_interfaces() {
        let pods = [
            pod(r#"
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  nodeName: node1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}, {containerPort: 9}]}]
status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}, {ip: "fd00::2"}]}
"#),
            pod(
                "metadata: {name: b, namespace: x}\nspec: {nodeName: node2, containers: []}\nstatus: {podIP: 10.244.2.2}",
            ),
            pod(
                "metadata: {name: host, namespace: x}\nspec: {nodeName: node1, hostNetwork: true, containers: []}\nstatus: {podIP: 10.0.1.11}",
            ),
            pod(
                "metadata: {name: done, namespace: x}\nspec: {nodeName: node1, containers: []}\nstatus: {podIP: 10.244.1.9, phase: Succeeded}",
            ),
            pod("metadata: {name: new, namespace: x}\nspec: {nodeName: node1, containers: []}"),
        ];
        let namespaces: Vec<Namespace> = vec![serde_yaml::from_str("metadata: {name: x, labels: {team: t}}").unwrap()];
        let routes = BTreeMap::from([("fd00::2".parse().unwrap(), "veth1".to_string())]);
        let inputs = inputs_from_cluster("node1", &pods, &namespaces, [], [], &routes);
        let names: Vec<&str> = inputs.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "host-network, finished and address-less pods are left out");
        assert_eq!(inputs.pods[0].ips.len(), 2);
        assert_eq!(
            inputs.pods[0].ports,
            [
                NamedPort { name: "dns".into(), protocol: Protocol::Udp, port: 53 },
                NamedPort { name: "http".into(), protocol: Protocol::Tcp, port: 8080 },
            ]
        );
        assert_eq!(inputs.local, [LocalPod { namespace: "x".into(), name: "a".into(), interface: "veth1".into() }]);
        assert_eq!(inputs.namespaces["x"]["team"], "t");
    }
}
