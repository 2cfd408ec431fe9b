"""Span exporters: OTLP (gRPC, HTTP/protobuf) to a backend, or console and JSON lines in standalone mode."""
