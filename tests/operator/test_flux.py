"""The Flux example (config/flux): its objects reference each other and real directories of this repository,
and its health checks name profiles that the path they deploy holds."""

from __future__ import annotations

import pathlib
from typing import Any

import yaml

from tests.operator import test_manifests

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLUX = ROOT / "config" / "flux"
LISTED = yaml.safe_load((FLUX / "kustomization.yaml").read_text())["resources"]
DOCS = test_manifests._docs([FLUX / name for name in LISTED])
SOURCES = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "GitRepository"}
KUSTOMIZATIONS = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "Kustomization"}


def _objects(directory: pathlib.Path) -> list[dict[str, Any]]:
    """What kustomize builds from directory, followed through its resources (files and directories)."""
    objects = []
    for entry in yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"]:
        path = (directory / entry).resolve()
        objects += _objects(path) if path.is_dir() else test_manifests._docs([path])
    return objects


def test_every_file_is_listed_and_the_kinds_are_flux_ones() -> None:
    assert sorted(LISTED) == sorted(p.name for p in FLUX.glob("*.yaml") if p.name != "kustomization.yaml")
    assert {(d["apiVersion"], d["kind"]) for d in DOCS} == {
        ("source.toolkit.fluxcd.io/v1", "GitRepository"), ("kustomize.toolkit.fluxcd.io/v1", "Kustomization")}
    assert {d["metadata"]["namespace"] for d in DOCS} == {"flux-system"}


def test_kustomizations_build_real_directories_from_the_source() -> None:
    for name, kustomization in KUSTOMIZATIONS.items():
        spec = kustomization["spec"]
        assert spec["sourceRef"] == {"kind": "GitRepository", "name": "podspan"} and "podspan" in SOURCES
        assert spec["path"].startswith("./"), f"{name}: Flux paths are relative to the repository root"
        assert (ROOT / spec["path"] / "kustomization.yaml").is_file(), f"{name}: {spec['path']} is no kustomize tree"
        for dependency in spec.get("dependsOn", []):
            assert dependency["name"] in KUSTOMIZATIONS, f"{name} depends on an unknown {dependency['name']}"
    assert KUSTOMIZATIONS["podspan"]["spec"]["path"] == "./config"


def test_profiles_wait_for_podspan_and_check_profiles_they_deploy() -> None:
    spec = KUSTOMIZATIONS["podspan-profiles"]["spec"]
    assert spec["dependsOn"] == [{"name": "podspan"}]
    deployed = {(d["apiVersion"], d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
                for d in _objects(ROOT / spec["path"])}
    checks = {(c["apiVersion"], c["kind"], c["name"], c.get("namespace")) for c in spec["healthChecks"]}
    assert {c[1] for c in checks} == {"TraceProfile", "ClusterTraceProfile"}
    assert checks <= deployed
    # Their kinds are served by the CRDs the podspan Kustomization installs.
    crds = {(f"{d['spec']['group']}/{v['name']}", d["spec"]["names"]["kind"]) for d in _objects(ROOT / "config")
            if d["kind"] == "CustomResourceDefinition" for v in d["spec"]["versions"]}
    assert {c[:2] for c in checks} <= crds
