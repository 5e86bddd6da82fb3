"""`helm install`, `helm upgrade` and `helm uninstall` of charts/trellis through libhelm (Helm v4,
helm-python-sdk) against the real API server of the test bed, and the real trellis-operator run
with the arguments of the installed Deployment.

Needs KUBECONFIG of a running test-bed API server (`eval $(make -s apiserver-start)`) and the
operator binary (`cargo build -p trellis-operator`); `make test-root` provides both. The test
bed runs no controllers: a Deployment never gets pods, so the tests check objects, not pods."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import helm_python as helm
import pytest

from chart import CHART, NAMESPACE, RELEASE, REPO, uncovered
from test_chart import AGENT_RULES

KUBECONFIG = os.environ.get("KUBECONFIG", "")
OPERATOR = os.environ.get("TRELLIS_OPERATOR_BIN", str(REPO / "target" / "debug" / "trellis-operator"))


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=check, timeout=60)


def get(kind: str, name: str, namespace: str | None = None) -> dict | None:
    """The object as stored, or None when it does not exist."""
    ns = ["-n", namespace] if namespace else []
    r = kubectl("get", kind, name, *ns, "-o", "json", "--ignore-not-found")
    return json.loads(r.stdout) if r.stdout.strip() else None


def wait_for(what: str, check, timeout: float = 60.0):
    """Polls `check` until it returns a true value (returned) or fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.fixture()
def cfg():
    assert KUBECONFIG, "KUBECONFIG must name the test bed's API server: eval $(make -s apiserver-start)"
    with helm.Config(kubeconfig_path=KUBECONFIG, namespace=NAMESPACE) as config:
        config.check_reachable()
        config.uninstall(RELEASE, ignore_not_found=True)
        # What earlier tests on this API server left (the test bed has no garbage collector):
        # an Installation not owned by a release would make `helm install` refuse to adopt it.
        kubectl("delete", "installation", "default", "--ignore-not-found", check=False)  # no CRD yet: fine
        kubectl("delete", "clusterrole,clusterrolebinding", "trellis-agent", "--ignore-not-found")
        kubectl("delete", "-n", NAMESPACE, "daemonset,serviceaccount", "trellis-agent", "--ignore-not-found")
        kubectl("delete", "-n", NAMESPACE, "lease", "--all", "--ignore-not-found")
        kubectl("delete", "ippools", "--all", "--ignore-not-found", check=False)
        yield config
        config.uninstall(RELEASE, ignore_not_found=True)


def install(config, values=None) -> dict:
    release = config.install(CHART, RELEASE, values or {}, create_namespace=True, timeout=120)
    assert release["status"] == "deployed", release
    return release


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_install_creates_the_release_and_the_operator_runs_with_its_arguments(cfg):
    install(cfg)
    for kind, name in [("crd", f"{p}.trellis.dev") for p in ("installations", "ippools", "nodenetworks", "ipamblocks", "globalnetworkpolicies")] + [
        ("clusterrole", "trellis-operator"),
        ("clusterrolebinding", "trellis-operator"),
        ("installation", "default"),
    ]:
        assert get(kind, name) is not None, (kind, name)
    for kind in ("deployment", "serviceaccount", "role", "rolebinding"):
        assert get(kind, "trellis-operator", NAMESPACE) is not None, kind
    deployment = get("deployment", "trellis-operator", NAMESPACE)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}

    # The real operator, started exactly as the stored Deployment says (its health address
    # moved to a free loopback port: this machine is not a pod).
    assert os.path.exists(OPERATOR), f"{OPERATOR} is missing: cargo build -p trellis-operator"
    port = free_port()
    args = [a for a in container["args"] if not a.startswith("--health-addr=")] + [f"--health-addr=127.0.0.1:{port}"]
    env = dict(os.environ, POD_NAME="trellis-operator-test", RUST_LOG="info")
    operator = subprocess.Popen([OPERATOR, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("/readyz 200 (the readiness probe's path)", lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200)
        assert http_status(f"http://127.0.0.1:{port}/healthz") == 200
        lease = wait_for("the leader Lease", lambda: get("lease", "trellis-operator", NAMESPACE))
        assert lease["spec"]["holderIdentity"] == "trellis-operator-test"
        agent_role = wait_for("the agent's ClusterRole", lambda: get("clusterrole", "trellis-agent"))
        wait_for("the agent's DaemonSet", lambda: get("daemonset", "trellis-agent", NAMESPACE))
        assert get("serviceaccount", "trellis-agent", NAMESPACE) is not None
        pool = wait_for("the IPPool of the chart's Installation", lambda: get("ippool", "default-ipv4-ippool"))
        assert pool["spec"]["cidr"] == "192.168.0.0/16" and pool["spec"]["blockSize"] == 26
    finally:
        operator.send_signal(signal.SIGTERM)
        _, stderr = operator.communicate(timeout=30)
    assert operator.returncode == 0, stderr[-3000:]

    # The operator may apply and bind the agent's ClusterRole only if it holds every rule of it.
    operator_rules = get("clusterrole", "trellis-operator")["rules"]
    assert agent_role["rules"] == AGENT_RULES, "the agent's rules changed: update AGENT_RULES and the chart"
    assert uncovered(agent_role["rules"], operator_rules) == set()


def test_upgrade_rolls_the_operator_only_when_its_pod_template_changes(cfg):
    install(cfg)
    before = get("deployment", "trellis-operator", NAMESPACE)

    # A change of the Installation alone: the Installation changes, the operator is not rolled.
    pools = [
        {"cidr": "192.168.0.0/16", "blockSize": 26, "encapsulation": "IPIP", "natOutgoing": "Enabled"},
        {"cidr": "10.250.0.0/16", "encapsulation": "VXLAN"},
    ]
    release = cfg.upgrade(CHART, RELEASE, {"installation": {"ipPools": pools}}, timeout=120)
    assert release["revision"] == 2 and release["status"] == "deployed"
    assert get("installation", "default")["spec"]["network"]["ipPools"][1] == pools[1]
    same = get("deployment", "trellis-operator", NAMESPACE)
    assert same["spec"]["template"] == before["spec"]["template"]
    assert same["metadata"]["generation"] == before["metadata"]["generation"]

    # Operator values: a new pod template (a real cluster rolls the pods), two replicas.
    release = cfg.upgrade(
        CHART, RELEASE, {"replicas": 2, "logLevel": "debug", "leaderElection": {"leaseDurationSeconds": 20}}, timeout=120
    )
    assert release["revision"] == 3
    after = get("deployment", "trellis-operator", NAMESPACE)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["spec"]["replicas"] == 2
    container = after["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "RUST_LOG", "value": "debug"} in container["env"]
    assert "--lease-duration=20" in container["args"]
    assert after["spec"]["template"] != before["spec"]["template"]
    # Values not given again fall back to the chart's defaults: the second pool is gone again.
    assert len(get("installation", "default")["spec"]["network"]["ipPools"]) == 1

    # A refused value changes nothing: the schema stops the upgrade before any write.
    with pytest.raises(helm.HelmError) as refused:
        cfg.upgrade(CHART, RELEASE, {"replicas": 0}, timeout=120)
    assert "at '/replicas': minimum" in str(refused.value)
    assert get("deployment", "trellis-operator", NAMESPACE)["spec"]["replicas"] == 2
    assert [r["revision"] for r in cfg.history(RELEASE)] == [1, 2, 3]


def test_uninstall_removes_the_release_objects_and_keeps_the_crds(cfg):
    install(cfg)
    cfg.uninstall(RELEASE, timeout=120)
    for kind in ("deployment", "serviceaccount", "role", "rolebinding"):
        assert get(kind, "trellis-operator", NAMESPACE) is None, kind
    for kind, name in [("clusterrole", "trellis-operator"), ("clusterrolebinding", "trellis-operator"), ("installation", "default")]:
        assert get(kind, name) is None, (kind, name)
    # Helm never deletes CRDs from crds/ (deleting them would delete every IPPool with them).
    assert get("crd", "ippools.trellis.dev") is not None
    with pytest.raises(helm.HelmNotFoundError):
        cfg.status(RELEASE)
