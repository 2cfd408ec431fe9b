"""Standalone mode's choice of output and its OTLP settings: the CLI hands over only what the user typed,
the exporter resolves the rest from the OTEL_EXPORTER_OTLP_* environment (one resolver for both modes)."""

from __future__ import annotations

import logging

import pytest

from podspan_agent import cli
from podspan_agent.export import otlp_settings, sinks

OTLP_ENV = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_TRACES_INSECURE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTLP_ENV:
        monkeypatch.delenv(name, raising=False)


def outputs(*argv: str) -> sinks.Standalone:
    args = cli._parser().parse_args(["trace", "--pid", "1", *argv])
    return sinks.Standalone(args.otlp_endpoint, args.otlp_protocol, args.output, None)


def exported_to(*argv: str) -> tuple[str, str] | None:
    out = outputs(*argv)
    try:
        return None if out.otlp is None else (out.otlp.endpoint, out.otlp.protocol)
    finally:
        out.shutdown()


def test_no_endpoint_anywhere_prints_spans() -> None:
    out = outputs()
    assert out.otlp is None and out.console is not None
    out.shutdown()


def test_generic_endpoint_is_a_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/otlp")
    assert exported_to() == ("http://collector:4318/otlp/v1/traces", otlp_settings.HTTP_PROTOBUF)


def test_signal_specific_endpoint_and_protocol_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert exported_to() == ("http://traces:4317", otlp_settings.GRPC)


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert exported_to("--otlp-endpoint", "http://mine:4318", "--otlp-protocol", "http/protobuf") == (
        "http://mine:4318/v1/traces", otlp_settings.HTTP_PROTOBUF)


def test_default_protocol_is_the_specs_and_a_grpc_port_gets_a_hint(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert exported_to("--otlp-endpoint", "http://127.0.0.1:4317") == (
            "http://127.0.0.1:4317/v1/traces", otlp_settings.DEFAULT_PROTOCOL)
    assert "--otlp-protocol grpc" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert exported_to("--otlp-endpoint", "http://127.0.0.1:4317", "--otlp-protocol", "grpc") == (
            "http://127.0.0.1:4317", otlp_settings.GRPC)
    assert "--otlp-protocol grpc" not in caplog.text
