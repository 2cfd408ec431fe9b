"""The Grafana dashboard in config/grafana asks only for metrics and labels the agent exposes: every
name and label in its PromQL is checked against a real scrape of the agent's collector."""

from __future__ import annotations

import json
import pathlib
import re

import prometheus_client
from prometheus_client import parser

from podspan_agent.metrics import prometheus, red
from podspan_agent.spans import model
from tests.unit import test_red_metrics

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "config" / "grafana" / "podspan-dashboard.json"
# PromQL words that are not metric names: functions, aggregations, keywords, Grafana variables.
_PROMQL = {"sum", "by", "rate", "histogram_quantile", "le"}
_SELECTOR = re.compile(r"\{([^}]*)\}")
_METRIC = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[)")
_LABEL = re.compile(r"([a-z_][a-z0-9_]*)\s*(?:=~|!=|=)")
_BY = re.compile(r"by \(([^)]*)\)")


def exposed() -> tuple[set[str], set[str]]:
    """Sample names and label names of a scrape holding one span of every instrument, a pair, health."""
    metrics = red.RedMetrics()
    for (protocol, kind), instrument in red.INSTRUMENTS.items():
        attributes = {key: "x" for key in instrument.attributes}
        metrics.record(test_red_metrics.span(protocol, kind, attributes=attributes), sampled=True)
    metrics.record_pair(test_red_metrics.span(kind=model.SpanKind.CLIENT), test_red_metrics.span())
    registry = prometheus_client.CollectorRegistry()
    registry.register(prometheus.Collector(metrics))
    prometheus_client.ProcessCollector(registry=registry)
    text = prometheus_client.generate_latest(registry).decode()
    samples = [s for family in parser.text_string_to_metric_families(text) for s in family.samples]
    return {s.name for s in samples}, {label for s in samples for label in s.labels} | {"instance", "job"}


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    queries += [var["query"]["query"] for var in dashboard["templating"]["list"] if isinstance(var.get("query"), dict)]
    assert len(queries) > 10
    return queries


def test_every_metric_the_dashboard_queries_is_exposed() -> None:
    names, _ = exposed()
    wanted = {m for expr in expressions() for m in _METRIC.findall(expr.replace("label_values(", "("))} - _PROMQL
    assert wanted and wanted <= names, sorted(wanted - names)


def test_every_label_the_dashboard_uses_is_exposed() -> None:
    _, labels = exposed()
    used = {label for expr in expressions() for selector in _SELECTOR.findall(expr)
            for label in _LABEL.findall(selector)}
    used |= {label.strip() for expr in expressions() for group in _BY.findall(expr) for label in group.split(",")}
    used |= {m.group(1) for expr in expressions() for m in re.finditer(r", ([a-z_]+)\)$", expr)}  # label_values
    assert used and used - {"le"} <= labels, sorted(used - {"le"} - labels)
