"""Spans: the neutral SpanRecord, span building from parser records, and correlation."""
