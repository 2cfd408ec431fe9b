"""Standalone mode's outputs: which sinks get spans (OTLP, console waterfall, JSON lines)
and the live one-line summary on stderr."""

from __future__ import annotations

import pathlib
import sys
import time
from typing import TextIO

from podspan_agent.export import console, jsonl, otlp, otlp_settings

_PLAIN_SUMMARY_EVERY_S = 5.0


class Standalone:
    """With an endpoint (argument or environment) spans go to OTLP; without one they are printed (console or
    jsonl)."""

    def __init__(self, endpoint: str | None, protocol: str | None, output: str, path: pathlib.Path | None) -> None:
        self._stream: TextIO | None = open(path, "w") if path else None  # noqa: SIM115 - closed in shutdown
        stream = self._stream or sys.stdout
        self.otlp: otlp.OtlpExporter | None = None
        self.console: console.ConsoleExporter | None = None
        self.jsonl: jsonl.JsonlExporter | None = None
        if endpoint or otlp_settings.env_endpoint(otlp_settings.TRACES):
            # The exporter resolves what is not given from the OTEL_EXPORTER_OTLP_* environment.
            self.otlp = otlp.OtlpExporter(endpoint or None, protocol=protocol)
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
            return f"exporting to {self.otlp.endpoint} ({self.otlp.protocol})"
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
        if self._stream is not None:
            self._stream.close()
