"""The Helm chart charts/trellis, checked offline with real Helm v4 (libhelm through
helm-python-sdk): strict lint, the objects rendered from default and custom values, and the
schema's refusals. `make test-helm` runs this file."""

from __future__ import annotations

import json

import helm_python as helm
import pytest
import yaml

from chart import CHART, NAMESPACE, crate_version, notes, permissions, render

# The operator's API calls (operator/src: controllers, lib.rs ensure_namespace, lease.rs), plus
# the agent's rules it must hold to apply and bind the agent's ClusterRole.
EXPECTED_CLUSTER_RULES = [
    {"apiGroups": ["trellis.dev"], "resources": ["installations"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["trellis.dev"], "resources": ["installations/status"], "verbs": ["patch"]},
    {"apiGroups": ["trellis.dev"], "resources": ["ippools"], "verbs": ["get", "list", "watch", "create", "patch"]},
    {"apiGroups": ["trellis.dev"], "resources": ["ippools/status"], "verbs": ["patch"]},
    {"apiGroups": ["trellis.dev"], "resources": ["ipamblocks"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {
        "apiGroups": ["trellis.dev"],
        "resources": ["nodenetworks"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": ["trellis.dev"], "resources": ["nodenetworks/status"], "verbs": ["create", "update", "patch"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["trellis.dev"], "resources": ["globalnetworkpolicies"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [NAMESPACE], "verbs": ["patch"]},
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles", "clusterrolebindings"],
        "verbs": ["create"],
    },
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["clusterroles", "clusterrolebindings"],
        "resourceNames": ["trellis-agent"],
        "verbs": ["patch"],
    },
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
        "verbs": ["list", "watch", "create"],
    },
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
        "resourceNames": ["trellis-agent-own-nodenetwork"],
        "verbs": ["patch"],
    },
]

EXPECTED_ROLE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["trellis-operator"],
        "verbs": ["get", "patch"],
    },
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "resourceNames": ["trellis-agent"], "verbs": ["patch"]},
    {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["get", "list", "watch", "create"]},
    {"apiGroups": ["apps"], "resources": ["daemonsets"], "resourceNames": ["trellis-agent"], "verbs": ["patch"]},
]

# The agent's ClusterRole as operator/src/render/agent.rs renders it (cluster_role_rules). The
# release test compares it with what the running operator really applies.
AGENT_RULES = [
    {
        "apiGroups": ["trellis.dev"],
        "resources": ["ippools", "ipamblocks", "nodenetworks", "installations", "globalnetworkpolicies"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["nodes", "pods", "namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["trellis.dev"],
        "resources": ["nodenetworks", "nodenetworks/status"],
        "verbs": ["create", "update", "patch"],
    },
    {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
]


def container(objects: dict) -> dict:
    return objects[("Deployment", "trellis-operator")]["spec"]["template"]["spec"]["containers"][0]


def test_strict_lint_passes_without_warnings():
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems


def test_lint_reports_a_broken_chart(tmp_path):
    # The lint check itself can fail: a copy of the chart with a template error does.
    import shutil

    broken = tmp_path / "trellis"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("kind: ConfigMap\nmetadata: {{ .Values.nope.deeper }}\n")
    report = helm.lint(broken, strict=True, namespace=NAMESPACE)
    assert report["errors"] or any(m["severity"] >= 3 for m in report["messages"]), report


def test_app_version_is_the_crate_version():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == crate_version()


def test_chart_carries_the_five_crds():
    with helm.Chart.load(CHART) as chart:
        crds = [yaml.safe_load(c["data"]) for c in chart.crds]
    names = sorted(c["metadata"]["name"] for c in crds)
    assert names == [
        "globalnetworkpolicies.trellis.dev",
        "installations.trellis.dev",
        "ipamblocks.trellis.dev",
        "ippools.trellis.dev",
        "nodenetworks.trellis.dev",
    ]


def test_default_values_render_the_operator_its_rbac_and_the_default_installation():
    objects = render()
    assert sorted(objects) == [
        ("ClusterRole", "trellis-operator"),
        ("ClusterRoleBinding", "trellis-operator"),
        ("Deployment", "trellis-operator"),
        ("Installation", "default"),
        ("Role", "trellis-operator"),
        ("RoleBinding", "trellis-operator"),
        ("ServiceAccount", "trellis-operator"),
    ]
    for (kind, name), obj in objects.items():
        if kind in ("Deployment", "ServiceAccount", "Role", "RoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, (kind, name)
        else:
            assert "namespace" not in obj["metadata"], (kind, name)
    assert objects[("Installation", "default")]["spec"] == {
        "network": {
            "ipPools": [
                {
                    "cidr": "192.168.0.0/16",
                    "blockSize": 26,
                    "encapsulation": "IPIP",
                    "natOutgoing": "Enabled",
                    "nodeSelector": "all()",
                }
            ]
        }
    }


def test_rbac_is_exactly_the_operators_calls_without_wildcards():
    objects = render()
    cluster_rules = objects[("ClusterRole", "trellis-operator")]["rules"]
    role_rules = objects[("Role", "trellis-operator")]["rules"]
    assert cluster_rules == EXPECTED_CLUSTER_RULES
    assert role_rules == EXPECTED_ROLE_RULES
    for group, resource, verb, name in permissions(cluster_rules) | permissions(role_rules):
        assert "*" not in (group, resource, verb, name), (group, resource, verb, name)
    binding = objects[("ClusterRoleBinding", "trellis-operator")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "trellis-operator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "trellis-operator", "namespace": NAMESPACE}]
    rb = objects[("RoleBinding", "trellis-operator")]
    assert rb["roleRef"]["kind"] == "Role" and rb["subjects"] == binding["subjects"]


def test_operator_holds_every_permission_it_grants_the_agent():
    from chart import uncovered

    cluster_rules = render()[("ClusterRole", "trellis-operator")]["rules"]
    assert uncovered(AGENT_RULES, cluster_rules) == set()
    # The check can fail: without the agent-only rules the operator could not grant them.
    trimmed = [r for r in cluster_rules if r["resources"] != ["nodenetworks/status"]]
    assert ("trellis.dev", "nodenetworks/status", "update", None) in uncovered(AGENT_RULES, trimmed)


def test_operator_deployment_is_locked_down_with_probes_and_leader_election():
    objects = render()
    deployment = objects[("Deployment", "trellis-operator")]
    pod = deployment["spec"]["template"]["spec"]
    c = container(objects)
    assert deployment["spec"]["replicas"] == 1
    assert pod["serviceAccountName"] == "trellis-operator"
    assert pod["hostNetwork"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["image"] == f"trellis/operator:{crate_version()}"
    assert c["args"] == [
        f"--namespace={NAMESPACE}",
        f"--agent-image=trellis/agent:{crate_version()}",
        "--leader-election=true",
        "--lease-name=trellis-operator",
        "--lease-duration=15",
        "--health-addr=0.0.0.0:9098",
    ]
    assert c["ports"] == [{"name": "health", "containerPort": 9098, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    assert c["resources"]["requests"] == {"cpu": "50m", "memory": "64Mi"}


def test_custom_values_change_the_objects():
    values = {
        "replicas": 2,
        "image": {"repository": "registry.example.com/trellis/operator", "tag": "dev", "pullPolicy": "Always"},
        "agent": {"image": "registry.example.com/trellis/agent:dev"},
        "leaderElection": {"leaseName": "trellis-lead", "leaseDurationSeconds": 30},
        "healthPort": 9200,
        "logLevel": "trellis_operator=debug,info",
        "installation": {
            "registry": "mirror.example.com/",
            "mtu": 1400,
            "ipPools": [{"cidr": "10.244.0.0/16", "blockSize": 24, "encapsulation": "VXLAN"}],
        },
    }
    objects = render(values, namespace="net")
    c = container(objects)
    assert objects[("Deployment", "trellis-operator")]["spec"]["replicas"] == 2
    assert c["image"] == "registry.example.com/trellis/operator:dev"
    assert c["imagePullPolicy"] == "Always"
    assert c["args"] == [
        "--namespace=net",
        "--agent-image=registry.example.com/trellis/agent:dev",
        "--leader-election=true",
        "--lease-name=trellis-lead",
        "--lease-duration=30",
        "--health-addr=0.0.0.0:9200",
    ]
    assert {"name": "RUST_LOG", "value": "trellis_operator=debug,info"} in c["env"]
    role = objects[("Role", "trellis-operator")]
    assert role["metadata"]["namespace"] == "net"
    assert ("coordination.k8s.io", "leases", "patch", "trellis-lead") in permissions(role["rules"])
    assert ("coordination.k8s.io", "leases", "patch", "trellis-operator") not in permissions(role["rules"])
    cluster = permissions(objects[("ClusterRole", "trellis-operator")]["rules"])
    assert ("", "namespaces", "patch", "net") in cluster
    assert objects[("Installation", "default")]["spec"] == {
        "registry": "mirror.example.com/",
        "network": {"mtu": 1400, "ipPools": [{"cidr": "10.244.0.0/16", "blockSize": 24, "encapsulation": "VXLAN"}]},
    }


def test_leader_election_off_drops_the_lease_rules_and_installation_can_be_left_out():
    objects = render({"leaderElection": {"enabled": False}, "installation": {"enabled": False}})
    assert ("Installation", "default") not in objects
    assert "--leader-election=false" in container(objects)["args"]
    role = permissions(objects[("Role", "trellis-operator")]["rules"])
    assert not any(p[1] == "leases" for p in role)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicas": 0}, "at '/replicas': minimum: got 0, want 1"),
        ({"replicas": "two"}, "at '/replicas'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
        (
            {"installation": {"ipPools": [{"cidr": "10.0.0.0/8", "encapsulation": "GRE"}]}},
            "at '/installation/ipPools/0/encapsulation': value must be one of 'IPIP', 'IPIPCrossSubnet', 'VXLAN', 'VXLANCrossSubnet', 'None'",
        ),
        ({"installation": {"ipPools": [{"cidr": "ten/8"}]}}, "at '/installation/ipPools/0/cidr'"),
        ({"installation": {"ipPools": [{"cidr": "10.0.0.0/8", "blockSize": 8}]}}, "at '/installation/ipPools/0/blockSize': minimum"),
        ({"installation": {"mtu": 100}}, "at '/installation/mtu': minimum: got 100, want 576"),
        ({"leaderElection": {"leaseDurationSeconds": 1}}, "at '/leaderElection/leaseDurationSeconds': minimum"),
        ({"healthPort": 70000}, "at '/healthPort': maximum"),
        ({"replcas": 2}, "additional properties 'replcas' not allowed"),
        ({"installation": {"nodeAddressAutodetection": {"interface": "eth0", "canReach": "8.8.8.8"}}}, "maxProperties"),
    ],
)
def test_schema_rejects_bad_values_with_a_message_naming_the_key(values, message):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as refused:
            chart.render(values, name="trellis", namespace=NAMESPACE)
    assert message in str(refused.value), str(refused.value)


def test_two_replicas_without_leader_election_are_refused():
    with pytest.raises(helm.HelmRenderError) as refused:
        render({"replicas": 2, "leaderElection": {"enabled": False}})
    assert "replicas=2 needs leaderElection.enabled=true" in str(refused.value)
    assert render({"replicas": 2})[("Deployment", "trellis-operator")]["spec"]["replicas"] == 2


def test_every_value_is_in_the_schema_and_documented():
    with helm.Chart.load(CHART) as chart:
        schema = chart.schema
        defaults = chart.values
    assert schema is not None
    lines = (CHART / "values.yaml").read_text().splitlines()

    def walk(value, node, path):
        props = node.get("properties")
        assert props is not None or "properties" not in node, path
        if isinstance(value, dict) and props:
            for key, sub in value.items():
                assert key in props, f"{'.'.join(path + [key])} is not in values.schema.json"
                walk(sub, props[key], path + [key])
        else:
            # A leaf (or free-form map/list): its key line must follow a comment.
            index = -1
            for depth, key in enumerate(path):
                prefix = " " * (2 * depth) + f"{key}:"
                index = next(i for i in range(index + 1, len(lines)) if lines[i].startswith(prefix))
            assert lines[index - 1].strip().startswith("#"), f"{'.'.join(path)} has no comment in values.yaml"

    walk(defaults, schema, [])


def test_notes_tell_the_user_what_to_run_next():
    text = notes()
    for command in (
        "kubectl get installation default",
        "kubectl get ippools",
        "kubectl get nodenetworks",
        "kubectl patch ippool",
        "rollout status deployment/trellis-operator",
    ):
        assert command in text, command
    assert "installation.enabled=false" in notes({"installation": {"enabled": False}})


def test_schema_is_valid_json_with_a_title():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
