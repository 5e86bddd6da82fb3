"""Installs (or uninstalls) charts/trellis with real Helm v4 (libhelm through helm-python-sdk):
the one-machine cluster's installer (e2e/src/helm_install.rs runs it; `make lab` uses it).

    python3 e2e/helm/install.py install --kubeconfig K [--namespace trellis-system]
        [--release trellis] [--values-json '{"image": {...}}']
    python3 e2e/helm/install.py uninstall --kubeconfig K [--namespace ...] [--release ...]

Prints the release (name, namespace, revision, status) as one JSON line; exits non-zero with
Helm's error on stderr when Helm refuses."""

from __future__ import annotations

import argparse
import json
import sys

import helm_python as helm

from chart import CHART, NAMESPACE, RELEASE


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["install", "uninstall"])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", default=NAMESPACE)
    p.add_argument("--release", default=RELEASE)
    p.add_argument("--values-json", default="{}", help="chart values as a JSON object")
    a = p.parse_args()
    values = json.loads(a.values_json)
    if not isinstance(values, dict):
        print("--values-json must be a JSON object", file=sys.stderr)
        return 2
    try:
        with helm.Config(kubeconfig_path=a.kubeconfig, namespace=a.namespace) as config:
            config.check_reachable()
            if a.action == "install":
                r = config.install(CHART, a.release, values, create_namespace=True, timeout=120)
                print(json.dumps({k: r.get(k) for k in ("name", "namespace", "version", "revision", "status")}))
                return 0 if r.get("status") == "deployed" else 1
            config.uninstall(a.release, ignore_not_found=True, timeout=120)
            print(json.dumps({"name": a.release, "namespace": a.namespace, "status": "uninstalled"}))
            return 0
    except helm.HelmError as e:
        print(f"helm {a.action} {a.release}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
