"""Shared helpers of the Helm chart tests: the chart's path, rendering through libhelm (the Helm v4
SDK in PyPI's helm-python-sdk) and the RBAC rule arithmetic."""

from __future__ import annotations

import pathlib
import re

import helm_python as helm
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "trellis"
NAMESPACE = "trellis-system"
RELEASE = "trellis"


def crate_version() -> str:
    """The workspace version in Cargo.toml (the chart's appVersion must equal it)."""
    text = (REPO / "Cargo.toml").read_text()
    block = text.split("[workspace.package]", 1)[1]
    return re.search(r'^version\s*=\s*"([^"]+)"', block, re.M).group(1)


def render(values: dict | None = None, namespace: str = NAMESPACE) -> dict[tuple[str, str], dict]:
    """Renders the chart offline; returns the objects by (kind, name)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    objects: dict[tuple[str, str], dict] = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                key = (doc["kind"], doc["metadata"]["name"])
                assert key not in objects, f"{key} rendered twice"
                objects[key] = doc
    return objects


def notes(values: dict | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def permissions(rules: list[dict]) -> set[tuple[str, str, str, str | None]]:
    """Every (apiGroup, resource, verb, resourceName or None) a list of PolicyRules grants."""
    granted = set()
    for rule in rules:
        names = rule.get("resourceNames") or [None]
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    for name in names:
                        granted.add((group, resource, verb, name))
    return granted


def uncovered(needed: list[dict], held: list[dict]) -> set[tuple[str, str, str, str | None]]:
    """The permissions of `needed` that `held` does not grant (a name-limited permission is
    granted by the same name or by an unlimited rule). Kubernetes lets a subject create or
    bind a role only when this set is empty (RBAC escalation prevention)."""
    have = permissions(held)
    return {p for p in permissions(needed) if p not in have and (p[0], p[1], p[2], None) not in have}
