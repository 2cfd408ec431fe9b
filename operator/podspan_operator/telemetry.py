"""The operator's own metrics: reconcile passes (count, failures, duration) and API writes by kind
(count, errors, latency), in a prometheus_client registry of its own, plus the process metrics; served
by `podspan-operator --metrics-port`."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from wsgiref import simple_server

import prometheus_client

DEFAULT_PORT = 9464  # as the agents: the operator runs in its own pod
# Writes the operator makes, by the `kind` label.
NODE_CONFIG, NODE_CONFIG_DELETE, PROFILE_STATUS, EVENT = "node_config", "node_config_delete", "profile_status", "event"
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.passes = prometheus_client.Counter(
            "podspan_operator_reconcile_passes", "Reconciliation passes completed.", registry=self.registry)
        self.pass_failures = prometheus_client.Counter(
            "podspan_operator_reconcile_failures", "Reconciliation passes that failed (and were retried).",
            registry=self.registry)
        self.pass_seconds = prometheus_client.Histogram(
            "podspan_operator_reconcile_pass_seconds", "Duration of a reconciliation pass.", buckets=_SECONDS,
            registry=self.registry)
        self.writes = prometheus_client.Counter(
            "podspan_operator_api_writes", "Writes to the Kubernetes API, by kind.", ["kind"], registry=self.registry)
        self.write_errors = prometheus_client.Counter(
            "podspan_operator_api_write_errors", "Writes the API refused or that failed, by kind.", ["kind"],
            registry=self.registry)
        self.write_seconds = prometheus_client.Histogram(
            "podspan_operator_api_write_seconds", "Latency of writes to the Kubernetes API, by kind.", ["kind"],
            buckets=_SECONDS, registry=self.registry)
        prometheus_client.ProcessCollector(registry=self.registry)

    @contextlib.contextmanager
    def write(self, kind: str) -> Iterator[None]:
        """Count and time one API write; an exception leaving it counts as an error."""
        self.writes.labels(kind).inc()
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.write_errors.labels(kind).inc()
            raise
        finally:
            self.write_seconds.labels(kind).observe(time.monotonic() - started)

    @contextlib.contextmanager
    def reconcile_pass(self) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self.pass_failures.inc()
            raise
        finally:
            self.passes.inc()
            self.pass_seconds.observe(time.monotonic() - started)

    def serve(self, address: str, port: int) -> tuple[simple_server.WSGIServer, threading.Thread]:
        """GET /metrics in a daemon thread; returns prometheus_client's (server, thread)."""
        return prometheus_client.start_http_server(port, address, self.registry)
