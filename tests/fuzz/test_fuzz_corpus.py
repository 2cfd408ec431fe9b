"""Replays the fuzzing corpus (tests/fuzz/corpus) and a short seeded mutation pass through the parsers
the registry builds, with the invariants of tests/fuzz/scenario.py. The long coverage-guided runs are
tests/fuzz/fuzz_parsers.py (docs/reliability.md); this keeps what they found from coming back."""

from __future__ import annotations

import contextlib
import functools
import itertools
import pathlib
import random

import pytest

from podspan_agent.protocols import base, hpack, redact, registry
from tests.fuzz import scenario

CORPUS = pathlib.Path(__file__).resolve().parent / "corpus"
PROTOCOLS = [spec.name for spec in registry.ALL]
MUTATIONS = 10_000  # per protocol: about a second each on the project machine


def corpus(protocol: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((CORPUS / protocol).iterdir())]


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """One libFuzzer-like mutation: flip, overwrite, insert, erase, splice or truncate."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        pos = rng.randrange(len(out) + 1)
        if choice == 0 and out:
            out[pos % len(out)] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[pos % len(out)] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif choice == 2:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif choice == 3:
            del out[pos : pos + rng.randint(1, 64)]
        elif choice == 4:
            start = rng.randrange(len(other) + 1)
            out[pos:] = other[start : start + rng.randint(1, 512)]
        else:
            del out[pos:]
    return bytes(out)


def test_every_registry_protocol_is_fuzzed() -> None:
    assert set(PROTOCOLS) == set(scenario.STATE_LIMITS)
    for protocol in PROTOCOLS:
        files = list((CORPUS / protocol).iterdir())
        assert 10 <= len(files) <= 400, f"{protocol}: {len(files)} corpus files (minimise with -merge=1)"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_corpus_replays_within_the_invariants(protocol: str) -> None:
    records: list[base.Record] = []

    def replay(data: bytes) -> None:
        records.extend(scenario.run(protocol, data))

    for data in corpus(protocol):
        hidden = scenario.hidden_errors(functools.partial(replay, data))
        assert not hidden, f"{protocol} input {data.hex()}: {hidden}"
    assert records, "the corpus reaches no complete exchange: it would exercise nothing but the framing"


def test_hidden_errors_sees_what_a_catch_all_swallows() -> None:
    def swallowed() -> None:
        with contextlib.suppress(TypeError):
            redact.query(None)  # type: ignore[arg-type]

    (error,) = scenario.hidden_errors(swallowed)
    assert error.startswith("TypeError") and "protocols/redact.py" in error
    assert scenario.hidden_errors(lambda: hpack.Decoder().decode(b"\xff", complete=True)) == []  # its own HpackError


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_seeded_mutations_keep_the_invariants(protocol: str) -> None:
    rng = random.Random(f"podspan-{protocol}")
    inputs = corpus(protocol)
    for _ in range(MUTATIONS):
        data = mutate(rng, rng.choice(inputs), rng.choice(inputs))
        try:
            scenario.run(protocol, data)
        except Exception as exc:
            raise AssertionError(f"{protocol} input {data.hex()}: {exc!r}") from exc


def test_decode_inverts_encode() -> None:
    steps = [scenario.Step(base.Message(True, b"GET / HTTP/1.1\r\n\r\n", 18, 0, 0), False),
             scenario.Step(base.Message(False, b"HTTP/1.1 200 OK\r\n", 900, 0, 0), True)]
    settings, decoded = scenario.decode(scenario.encode(0b0101, steps))
    assert settings == base.CaptureSettings(headers=True, query=False, bodies=True, body_limit=scenario.BODY_LIMIT)
    assert [(s.message.from_client, s.message.data, s.message.size, s.flush_after) for s in decoded] == \
        [(True, b"GET / HTTP/1.1\r\n\r\n", 18, False), (False, b"HTTP/1.1 200 OK\r\n", 900, True)]
    assert all(a.message.end_ns <= b.message.start_ns for a, b in itertools.pairwise(decoded))


@pytest.mark.parametrize("record", [
    base.Record("http", "GET", 5, 4),  # ends before it starts
    base.Record("http", "", 1, 2),  # no name
    base.Record("http", "GET", 0, 2),  # starts before the first message
    base.Record("http", "GET", 1, 2, attributes={"http.request.header.x": ["a"]}),  # type: ignore[dict-item]
    base.Record("http", "GET", 1, 2, request_size=-1),
])
def test_malformed_records_are_violations(record: base.Record) -> None:
    with pytest.raises(scenario.Violation):
        scenario.check_record(record, 1, 10)
