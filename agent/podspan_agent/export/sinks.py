"""Standalone mode's outputs: which sinks get spans (OTLP, console waterfall, JSON lines), the OTLP
metric push beside the OTLP span export, and the live one-line summary on stderr."""

from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import TextIO

from podspan_agent.export import console, jsonl, otlp, otlp_metrics, otlp_settings
from podspan_agent.metrics import red

_PLAIN_SUMMARY_EVERY_S = 5.0


class Standalone:
    """With an endpoint (argument or environment) spans go to OTLP, and with `metrics` its RED metrics go
    to the same collector; without one spans are printed (console or jsonl)."""

    def __init__(self, endpoint: str | None, protocol: str | None, output: str, path: pathlib.Path | None,
                 metrics: red.RedMetrics | None = None) -> None:
        self._stream: TextIO | None = open(path, "w") if path else None  # noqa: SIM115 - closed in shutdown
        stream = self._stream or sys.stdout
        self.otlp: otlp.OtlpExporter | None = None
        self.console: console.ConsoleExporter | None = None
        self.jsonl: jsonl.JsonlExporter | None = None
        self.otlp_metrics: otlp_metrics.MetricsExporter | None = None
        if endpoint or otlp_settings.env_endpoint(otlp_settings.TRACES):
            # The exporter resolves what is not given from the OTEL_EXPORTER_OTLP_* environment.
            self.otlp = otlp.OtlpExporter(endpoint or None, protocol=protocol)
            if metrics is not None:
                settings = otlp_settings.resolve(otlp_settings.METRICS, _metrics_endpoint(endpoint), protocol=protocol)
                self.otlp_metrics = otlp_metrics.MetricsExporter(metrics.snapshot, settings)
        elif output == "jsonl":
            self.jsonl = jsonl.JsonlExporter(stream)
        else:
            self.console = console.ConsoleExporter(stream)
        self.sinks = [s for s in (self.otlp, self.console, self.jsonl) if s is not None]
        self._started = time.monotonic()
        self._previous: console.LiveStats | None = None
        self._last_plain = 0.0
        self._tty = sys.stderr.isatty()

    def export_stats(self) -> list[otlp.ExportStats]:
        return [self.otlp.stats()] if self.otlp is not None else []

    def describe(self) -> str:
        if self.otlp is not None:
            metrics = f", metrics to {self.otlp_metrics.endpoint}" if self.otlp_metrics is not None else ""
            return f"exporting to {self.otlp.endpoint} ({self.otlp.protocol}){metrics}"
        return "printing spans" if self.console is not None else "writing JSON lines"

    def summary(self, tracer_stats: dict[str, int], final: bool = False) -> None:
        """Print the live summary: in place on a terminal, every few seconds otherwise."""
        # Spans released early by a full correlation buffer are still exported: not counted here.
        dropped = 0
        exported = None
        if self.otlp is not None:
            otlp_stats = self.otlp.stats()
            dropped += otlp_stats.spans_dropped
            exported = otlp_stats.spans_exported
        if self.console is not None:
            dropped += self.console.stats().spans_dropped
        current = console.LiveStats(
            elapsed_s=time.monotonic() - self._started,
            spans=tracer_stats.get("spans", 0),
            traces=tracer_stats.get("corr_new_traces", 0) + tracer_stats.get("corr_linked_remote", 0),
            spans_dropped=dropped,
            events_lost=tracer_stats.get("kernel_events_lost", 0),
            spans_exported=exported,
            parser_drops=tracer_stats.get("parser_drops", 0),
        )
        line = console.summary_line(current, self._previous)
        self._previous = current
        if final:
            print(("\r\033[K" if self._tty else "") + "podspan: done " + line.strip(), file=sys.stderr)
        elif self._tty:
            print("\r\033[K" + line, end="", file=sys.stderr, flush=True)
        elif current.elapsed_s - self._last_plain >= _PLAIN_SUMMARY_EVERY_S:
            self._last_plain = current.elapsed_s
            print(line, file=sys.stderr, flush=True)

    def shutdown(self) -> None:
        for sink in self.sinks:
            sink.shutdown()
        if self.otlp_metrics is not None:
            self.otlp_metrics.shutdown()
        if self._stream is not None:
            self._stream.close()


def _metrics_endpoint(traces_endpoint: str | None) -> str | None:
    """Metrics go where the spans go: beside the traces endpoint given or set for traces only
    (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT); None lets the metric exporter read its own environment."""
    if traces_endpoint is None and otlp_settings.env_value(os.environ, otlp_settings.METRICS, "ENDPOINT") is None:
        traces_endpoint = otlp_settings.env_endpoint(otlp_settings.TRACES)
    return otlp_metrics.metrics_endpoint(traces_endpoint)
