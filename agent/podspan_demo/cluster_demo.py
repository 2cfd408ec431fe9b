"""`python -m podspan_demo cluster`: the Kubernetes path on this machine. Applies a TraceProfile to a
local installation (emulated API, podspan-operator, podspan-agent run, OTLP receiver), shows its
status with `kubectl get tp` (the real kubectl when installed), drives traffic and draws the traces the receiver got."""

from __future__ import annotations

import collections
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

from podspan_agent.export import console
from podspan_agent.spans import model
from podspan_demo import cluster

NAMESPACE, PROFILE = "shop", "web"
# OTLP's SpanKind numbers (what the receiver decoded) -> ours.
_KINDS = {1: model.SpanKind.INTERNAL, 2: model.SpanKind.SERVER, 3: model.SpanKind.CLIENT}
_STATUS_ERROR = 2


def kubectl_table(rows: list[dict[str, Any]]) -> str:
    """Rows as kubectl prints them: upper-case headers, columns padded, three spaces apart."""
    if not rows:
        return "No resources found.\n"
    headers = list(rows[0])
    cells = [[h.upper() for h in headers]] + [["" if r[h] is None else str(r[h]) for h in headers] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    return "".join("   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
                   for line in cells)


def kubectl_get(installation: cluster.LocalCluster, args: list[str], resource: str,
                namespace: str | None = None) -> str:
    """`kubectl get ...` output: the real kubectl's when it is installed, else the API server's table."""
    if shutil.which("kubectl"):
        result = subprocess.run(["kubectl", "--kubeconfig", str(installation.kubeconfig), "get", *args],
                                capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            return result.stdout.rstrip()
    return kubectl_table(installation.table(resource, namespace)).rstrip()


def to_record(span: dict[str, Any]) -> model.SpanRecord:
    """A span as the OTLP receiver decoded it, back into the shape the console renders."""
    failed = span["status_code"] == _STATUS_ERROR
    return model.SpanRecord(
        trace_id=int(span["trace_id"], 16), span_id=int(span["span_id"], 16),
        parent_span_id=int(span["parent_span_id"], 16) if span["parent_span_id"] else None,
        name=span["name"], kind=_KINDS.get(span["kind"], model.SpanKind.INTERNAL),
        start_ns=span["start_ns"], end_ns=span["end_ns"], attributes=span["attributes"],
        resource=span["resource"], protocol="", error=(span["status_message"] or "error") if failed else None,
    )


def _say(text: str) -> None:
    print(text, flush=True)


def _command(text: str) -> None:
    _say(f"\n\033[1m$ {text}\033[0m" if sys.stdout.isatty() else f"\n$ {text}")


def run(requests: int) -> int:
    color = sys.stdout.isatty()
    with tempfile.TemporaryDirectory(prefix="podspan-demo-") as tmp:
        workdir = pathlib.Path(tmp)
        _say("podspan-demo: starting an emulated API server, podspan-operator, podspan-agent run and an OTLP "
             "receiver (separate processes; logs in a temporary directory)")
        with cluster.LocalCluster(workdir) as installation:
            shop = installation.run_shop(NAMESPACE)
            _say(f"podspan-demo: pods running in namespace {NAMESPACE}: "
                 + ", ".join(f"{pod.name} ({pod.ip})" for pod in shop.values()))
            profile = cluster.profile(PROFILE, NAMESPACE, installation.otlp_endpoint, ["frontend", "backend"])
            _command("kubectl apply -f - <<EOF")
            _say(yaml.safe_dump(profile, sort_keys=False).rstrip() + "\nEOF")
            installation.apply_profile(profile)
            started = time.monotonic()
            cluster.wait_for(lambda: installation.condition(NAMESPACE, PROFILE, "Ready")[0] == "True",
                             "the profile to become Ready", timeout=60)
            _say(f"(Ready after {time.monotonic() - started:.1f}s)")
            _command(f"kubectl get tp -n {NAMESPACE}")
            _say(kubectl_get(installation, ["tp", "-n", NAMESPACE], cluster.TP, NAMESPACE))
            _command("kubectl get ntc")
            _say(kubectl_get(installation, ["ntc"], cluster.NTC))

            paths = [f"/users/{i}" for i in range(1, requests + 1)] + ["/missing/7"]
            _command(f"for path in ...; do curl http://{shop['frontend'].ip}:8080$path; done   "
                     f"# {len(paths)} requests")
            for url_path in paths:
                _say(f"GET {url_path} -> {cluster.http_get(shop['frontend'].url + url_path)}")
            _say(f"GET {shop['other'].url}/users/9 -> {cluster.http_get(shop['other'].url + '/users/9')}   "
                 "# the unselected pod: no spans")
            # Frontend server + client + backend server per request, plus the backend's cache miss
            # (Redis GET, PostgreSQL SELECT, Redis SET) for each user.
            cluster.wait_for(lambda: len(installation.spans()) >= 3 * len(paths) + 3 * requests,
                             "the traces at the receiver", timeout=60)
            spans = installation.spans()
            traces: dict[int, list[model.SpanRecord]] = collections.defaultdict(list)
            for span in map(to_record, spans):
                traces[span.trace_id].append(span)
            _say(f"\npodspan-demo: the OTLP receiver got {len(spans)} spans in {len(traces)} traces:\n")
            for trace in sorted(traces.values(), key=lambda t: min(s.start_ns for s in t)):
                _say(console.render_trace(trace, color=color))
            cluster.wait_for(lambda: installation.profile_status(NAMESPACE, PROFILE).get("spansExported", 0)
                             >= len(spans), "the exported counter in the status", timeout=30)
            _command(f"kubectl get tp {PROFILE} -n {NAMESPACE} -o yaml   # its status")
            status = installation.profile_status(NAMESPACE, PROFILE)
            _say(yaml.safe_dump({k: v for k, v in status.items() if k != "conditions"}, sort_keys=False).rstrip())
            for condition in status.get("conditions", []):
                _say(f"{condition['type']}={condition['status']} ({condition['reason']}): {condition['message']}")
        _say("\npodspan-demo: stopped every process, pod, cgroup and network namespace it started")
    return 0
