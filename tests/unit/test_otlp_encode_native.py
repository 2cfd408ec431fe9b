"""The C span encoder (podspan_agent._otlp_encode) against protobuf's own serialization, and hostile input."""

from __future__ import annotations

import collections
import dataclasses
import gc
import importlib.metadata
import logging
import math
import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from podspan_agent import _otlp_encode
from podspan_agent.export import otlp
from podspan_agent.protocols.base import AttributeValue
from podspan_agent.spans import model

MASK_64 = 2**64 - 1
KINDS = {
    model.SpanKind.INTERNAL: trace_pb2.Span.SPAN_KIND_INTERNAL,
    model.SpanKind.SERVER: trace_pb2.Span.SPAN_KIND_SERVER,
    model.SpanKind.CLIENT: trace_pb2.Span.SPAN_KIND_CLIENT,
}


def record(**overrides: object) -> model.SpanRecord:
    fields: dict[str, object] = {
        "trace_id": 0x0AF7651916CD43DD8448EB211C80319C,
        "span_id": 0xB7AD6B7169203331,
        "parent_span_id": None,
        "name": "GET /items/{id}",
        "kind": model.SpanKind.SERVER,
        "start_ns": 1_763_900_000_123_456_789,
        "end_ns": 1_763_900_000_124_956_790,
        "attributes": {"http.request.method": "GET", "http.response.status_code": 200},
        "resource": {"service.name": "shop"},
        "protocol": "http",
    }
    fields.update(overrides)
    return model.SpanRecord(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the reference encoding


def utf8(text: str) -> str:
    """What survives of a text as UTF-8: lone surrogates become "?"."""
    return text.encode("utf-8", "replace").decode()


def any_value(value: object) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return common_pb2.AnyValue(int_value=value)
        return common_pb2.AnyValue(string_value=str(value))
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    assert isinstance(value, str)
    return common_pb2.AnyValue(string_value=utf8(value))


def key_values(attributes: dict[str, object]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=utf8(key), value=any_value(value)) for key, value in attributes.items()]


def reference_span(r: model.SpanRecord) -> trace_pb2.Span:
    """The span as opentelemetry-proto classes, built from the OTLP spec rather than from the encoder."""
    span = trace_pb2.Span(
        trace_id=(r.trace_id % 2**128).to_bytes(16, "big"),
        span_id=(r.span_id & MASK_64).to_bytes(8, "big"),
        trace_state=utf8(r.trace_state),
        name=utf8(r.name),
        kind=KINDS[r.kind],
        start_time_unix_nano=min(max(r.start_ns, 0), MASK_64),
        end_time_unix_nano=min(max(r.end_ns, 0), MASK_64),
        attributes=key_values(dict(r.attributes)),
        # W3C sampled, and whether the parent is remote is known (and whether it is).
        flags=0x301 if r.parent_span_id is not None and r.parent_is_remote else 0x101,
    )
    if r.parent_span_id is not None:
        span.parent_span_id = (r.parent_span_id & MASK_64).to_bytes(8, "big")
    if r.error is not None:
        span.status.CopyFrom(trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message=utf8(r.error)))
    return span


def encoded(r: model.SpanRecord) -> bytes:
    [span] = _otlp_encode.encode_spans([r])
    assert isinstance(span, bytes), span
    return span


# --------------------------------------------------------------------------- generated spans

# Text with lone surrogates mixed in: captured bytes decoded with surrogateescape carry them.
texts = st.lists(st.one_of(st.text(max_size=12), st.sampled_from(["\ud800", "\udfff", "\udc80x"])), max_size=4).map(
    "".join
)
NAN_WITH_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0xFFF8_0000_DEAD_BEEF))[0]
values = st.one_of(
    texts,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**200), max_value=2**200),  # mostly beyond int64: sent as their digits
    st.sampled_from([2**63, -(2**63) - 1, 2**64, -1, 0]),
    st.floats(),
    st.sampled_from([math.nan, -math.nan, NAN_WITH_PAYLOAD, math.inf, -math.inf, -0.0, 5e-324]),
)


def span_strategy(
    name: st.SearchStrategy[str], key: st.SearchStrategy[str], ns: st.SearchStrategy[int]
) -> st.SearchStrategy[model.SpanRecord]:
    return st.builds(
        record,
        trace_id=st.integers(min_value=-(2**130), max_value=2**130),
        span_id=st.integers(min_value=-(2**65), max_value=2**65),
        parent_span_id=st.one_of(st.none(), st.integers(min_value=-(2**65), max_value=2**65)),
        parent_is_remote=st.booleans(),
        trace_state=texts,
        name=name,
        kind=st.sampled_from(list(model.SpanKind)),
        start_ns=ns,
        end_ns=ns,
        attributes=st.dictionaries(key, values, max_size=8),
        error=st.one_of(st.none(), texts),
    )


# Protobuf leaves out proto3 fields at their default; the encoder (like the Python one before it) always
# writes the span name, both times and every attribute key, so an empty name or key or a zero time costs a
# few bytes more on the wire but decodes to the same message.
canonical_spans = span_strategy(texts.map(lambda text: text or "x"), texts.map(lambda text: text or "k"),
                                st.integers(min_value=1, max_value=2**70))
any_spans = span_strategy(texts, texts, st.integers(min_value=-(2**70), max_value=2**70))


@settings(max_examples=1000, deadline=None)
@given(span=canonical_spans)
def test_span_bytes_are_protobufs_own(span: model.SpanRecord) -> None:
    assert encoded(span) == trace_pb2.ScopeSpans(spans=[reference_span(span)]).SerializeToString()


@settings(max_examples=300, deadline=None)
@given(span=any_spans)
def test_any_span_decodes_as_protobufs_own(span: model.SpanRecord) -> None:
    decoded = trace_pb2.ScopeSpans.FromString(encoded(span))
    expected = trace_pb2.ScopeSpans(spans=[reference_span(span)])
    # Compared on the wire form, canonical once decoded: nan != nan would fail an equality of messages.
    assert decoded.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_fields_at_their_default_are_still_written() -> None:
    span = record(name="", start_ns=0, end_ns=-5, attributes={"": ""})
    body = trace_pb2.ScopeSpans.FromString(encoded(span)).spans[0]
    assert (body.name, body.start_time_unix_nano, body.end_time_unix_nano) == ("", 0, 0)
    assert b"\x2a\x00" in encoded(span)  # name (5), empty
    assert b"\x39" + bytes(8) + b"\x41" + bytes(8) in encoded(span)  # both times, fixed64 zero
    assert b"\x4a\x06\x0a\x00\x12\x02\x0a\x00" in encoded(span)  # KeyValue "" = ""


resources = st.dictionaries(
    st.sampled_from(["service.name", "process.pid", "k8s.pod.name", "process.executable.name", "x"]),
    st.one_of(st.text(max_size=6), st.integers(min_value=-5, max_value=5), st.booleans()),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(
    batch=st.lists(st.tuples(canonical_spans, resources), max_size=6),
    base=st.dictionaries(st.sampled_from(["host.name", "service.name", "x"]), st.text(max_size=4), max_size=2),
)
def test_request_bytes_are_protobufs_own(
    batch: list[tuple[model.SpanRecord, dict[str, AttributeValue]]], base: dict[str, AttributeValue]
) -> None:
    records = [dataclasses.replace(span, resource=resource) for span, resource in batch]
    payload, invalid = otlp.encode_request(records, base)
    assert invalid == 0

    groups: dict[tuple[tuple[str, object], ...], list[trace_pb2.Span]] = {}
    for r in records:
        groups.setdefault(tuple(r.resource.items()), []).append(reference_span(r))
    request = trace_service_pb2.ExportTraceServiceRequest()
    for key, members in groups.items():
        attributes = {**base, **dict(key)}
        if "service.name" not in attributes:
            executable = attributes.get("process.executable.name")
            attributes["service.name"] = f"unknown_service:{executable}" if executable else "unknown_service"
        scope = common_pb2.InstrumentationScope(name="podspan", version=importlib.metadata.version("podspan"))
        request.resource_spans.append(
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(attributes=key_values(attributes)),
                scope_spans=[trace_pb2.ScopeSpans(scope=scope, spans=members)],
            )
        )
    assert payload == request.SerializeToString()


def test_resource_values_of_equal_value_keep_their_type() -> None:
    # 0 == False == 0.0 as dict keys: the encoding must still follow each value's type.
    for value, field in ((False, "bool_value"), (0, "int_value"), (0.0, "double_value"), (1, "int_value")):
        payload, _ = otlp.encode_request([record(resource={"r": value})], {})
        [resource_spans] = trace_service_pb2.ExportTraceServiceRequest.FromString(payload).resource_spans
        [attribute] = [kv for kv in resource_spans.resource.attributes if kv.key == "r"]
        assert attribute.value.WhichOneof("value") == field


# --------------------------------------------------------------------------- hostile input


class OddStr(str):
    def __str__(self) -> str:
        return "from __str__"


class Exploding:
    def __bool__(self) -> bool:
        raise ZeroDivisionError("no truth")

    def __index__(self) -> int:
        raise ZeroDivisionError("no index")


class RaisingStr(str):
    def __str__(self) -> str:
        raise LookupError("no text")


HOSTILE: dict[str, dict[str, object]] = {
    "value None": {"attributes": {"k": None}},
    "value bytes": {"attributes": {"k": b"v"}},
    "value tuple": {"attributes": {"k": (1, 2)}},
    "value list": {"attributes": {"k": [1]}},
    "value dict": {"attributes": {"k": {}}},
    "value complex": {"attributes": {"k": 1j}},
    "value object": {"attributes": {"k": object()}},
    "value __str__ raises": {"attributes": {"k": RaisingStr("x")}},
    "value with 5000 digits": {"attributes": {"k": 10**5000}},  # str() refuses: sys.get_int_max_str_digits
    "key int": {"attributes": {1: "v"}},
    "key bytes": {"attributes": {b"k": "v"}},
    "key None": {"attributes": {None: "v"}},
    "attributes None": {"attributes": None},
    "attributes list of pairs": {"attributes": [("k", "v")]},
    "attributes str": {"attributes": "k=v"},
    "name None": {"name": None},
    "name bytes": {"name": b"GET"},
    "kind str": {"kind": "server"},
    "kind None": {"kind": None},
    "trace_id float": {"trace_id": 1.0},
    "trace_id str": {"trace_id": "1"},
    "trace_id None": {"trace_id": None},
    "span_id None": {"span_id": None},
    "span_id __index__ raises": {"span_id": Exploding()},
    "parent float": {"parent_span_id": 1.5},
    "remote __bool__ raises": {"parent_span_id": 1, "parent_is_remote": Exploding()},
    "start float": {"start_ns": 1.5},
    "end None": {"end_ns": None},
    "error bytes": {"error": b"boom"},
    "error int": {"error": 7},
    "trace_state int": {"trace_state": 5},
    "trace_state __bool__ raises": {"trace_state": Exploding()},
    "resource unhashable": {"resource": {"k": [1]}},
    "resource None": {"resource": None},
}


@pytest.mark.parametrize("overrides", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_record_is_left_out_and_counted(overrides: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    good = record(span_id=7)
    with caplog.at_level(logging.WARNING, logger=otlp.__name__):
        payload, invalid = otlp.encode_request([record(**overrides), good], {})
    assert invalid == 1
    assert payload == otlp.encode_request([good], {})[0]
    assert "cannot encode span" in caplog.text


def test_encode_spans_hands_back_the_exception() -> None:
    good, bad_kind, bad_value = _otlp_encode.encode_spans(
        [record(), record(kind="nope"), record(attributes={"k": None})]
    )
    assert isinstance(good, bytes)
    assert isinstance(bad_kind, ValueError) and "nope" in str(bad_kind)
    assert isinstance(bad_value, TypeError) and "'k'" in str(bad_value)


def test_lenient_types_follow_python() -> None:
    # A str subclass is sent as str() gives it; an int subclass, bool times and falsy oddities as Python treats them.
    ordered = collections.OrderedDict(a="1")  # any Mapping works, not just dict
    span = record(attributes={"s": OddStr("raw"), "b": True}, start_ns=True, trace_state=None, error=0)
    body = trace_pb2.ScopeSpans.FromString(encoded(span)).spans[0]
    kinds = [(kv.key, kv.value.WhichOneof("value")) for kv in body.attributes]
    assert kinds == [("s", "string_value"), ("b", "bool_value")]
    assert body.attributes[0].value.string_value == "from __str__"
    assert (body.start_time_unix_nano, body.trace_state, body.status.message) == (1, "", "")
    assert body.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert encoded(record(attributes=ordered)) == encoded(record(attributes={"a": "1"}))


def test_attributes_changed_while_encoded_do_not_crash() -> None:
    attributes: dict[str, object] = {}

    class Clearing(str):
        def __str__(self) -> str:
            attributes.clear()  # frees every other key and value while the encoder iterates
            return "x"

    attributes.update({"a": Clearing("a"), "b": "b" * 100, "c": "c" * 100})
    [result] = _otlp_encode.encode_spans([record(attributes=attributes)])
    assert isinstance(result, RuntimeError)


def test_errors_that_are_not_exceptions_propagate() -> None:
    class Interrupting(str):
        def __str__(self) -> str:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _otlp_encode.encode_spans([record(), record(attributes={"k": Interrupting("x")})])


def test_bad_arguments_raise() -> None:
    with pytest.raises(TypeError):
        _otlp_encode.encode_spans(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _otlp_encode.resource_spans({}, "podspan", "1", [b"\x12\x00", "not bytes"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        _otlp_encode.resource_spans({}, "podspan", 1, [])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        _otlp_encode.resource_spans({"k": None}, "podspan", "1", [])  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        _otlp_encode.resource_spans({}, "podspan", "1")  # type: ignore[call-arg]


def test_no_memory_is_kept_across_calls() -> None:
    odd = record(attributes={"k": "\udc80" * 3, "n": 2**70, "f": math.nan})
    batch = [odd, *(record(**overrides) for overrides in HOSTILE.values())]

    def run(times: int) -> None:
        for _ in range(times):
            for span in _otlp_encode.encode_spans(batch):
                if isinstance(span, bytes):
                    _otlp_encode.resource_spans({"service.name": "s", "n": 1}, "podspan", "1", [span, span])

    run(200)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    run(2000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    # 2000 rounds of ~35 spans: a leaked object or buffer per span would be megabytes.
    assert grown < 100_000
