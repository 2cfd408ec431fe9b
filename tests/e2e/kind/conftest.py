"""The kind cluster for the e2e scenario: skipped with the reason when docker, its daemon, kind or kubectl
is missing; otherwise images built from this checkout, a fresh cluster, `kubectl apply -k config/`, the
sample app and collector from manifests/. PODSPAN_E2E_KEEP=1 keeps (and next time reuses) the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.kind import harness


@pytest.fixture(scope="session")
def progress(pytestconfig: pytest.Config) -> harness.Progress:
    """Prints a line past output capture: image builds and cluster setup take minutes."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")

    def say(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[kind e2e] {message}")

    return say


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory, progress: harness.Progress) -> Iterator[harness.Kubectl]:
    """kubectl for a kind cluster running Podspan from config/ and the e2e workloads, agent reporting."""
    reason = harness.missing_prerequisites()
    if reason is not None:
        pytest.skip(reason)
    keep = harness.keep_cluster()
    kind = harness.Kind(harness.CLUSTER, tmp_path_factory.mktemp("kind") / "kubeconfig")
    images = harness.config_images()
    # Before any cluster exists: a broken build fails fast and leaves nothing to clean up.
    progress(f"building {', '.join(images.values())}")
    harness.build_images(images)
    reuse = kind.exists()
    if reuse and not keep:
        progress(f"deleting the leftover cluster {kind.name}")
        kind.delete()
        reuse = False
    if reuse:
        progress(f"reusing the kept cluster {kind.name}")
        kind.write_kubeconfig()
    else:
        progress(f"creating the kind cluster {kind.name}")
        kind.create()
    try:
        kubectl = harness.Kubectl(kind.kubeconfig)
        progress("loading images into the node, applying config/")
        kind.load(images.values())
        kubectl.apply_config()
        if reuse:  # same tags as before: only new pods pick up the images just loaded
            kubectl("-n", harness.SYSTEM_NAMESPACE, "rollout", "restart", *harness.WORKLOADS)
        for workload in harness.WORKLOADS:
            kubectl.rollout(harness.SYSTEM_NAMESPACE, workload)
        node = kubectl.node_name()
        # The agent heartbeats only once its BPF program compiled and loaded: the real readiness signal.
        harness.wait_for(lambda: _heartbeat(kubectl, node), f"the agent's heartbeat in NodeTraceConfig/{node}",
                         timeout=300, diagnose=kubectl.diagnostics)
        progress("deploying the sample app, client and collector")
        # A kept cluster may hold the previous run's workloads (and profile): start from nothing.
        kubectl("delete", "namespace", harness.NAMESPACE, "--ignore-not-found", "--timeout=180s", timeout=200)
        kubectl("apply", "-k", harness.MANIFESTS)
        for workload in ("deployment/frontend", "deployment/backend", "deployment/other",
                         "deployment/otel-collector"):
            kubectl.rollout(harness.NAMESPACE, workload)
        kubectl("-n", harness.NAMESPACE, "wait", "--for=condition=Ready", "pod/client", "--timeout=180s",
                timeout=200)
        yield kubectl
    finally:
        if keep:
            progress(f"kept the cluster: `kind export kubeconfig --name {kind.name}` to look around, "
                     f"`kind delete cluster --name {kind.name}` to remove it")
        else:
            kind.delete()


def _heartbeat(kubectl: harness.Kubectl, node: str) -> tuple[bool, object]:
    config = kubectl.json_or_none("nodetraceconfig", node)
    status = (config or {}).get("status") or {}
    return status.get("heartbeatTime") is not None, status
