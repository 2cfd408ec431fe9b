"""Podspan node agent: eBPF capture, protocol parsing, span correlation and OTLP export."""
