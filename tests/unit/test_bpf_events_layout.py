"""The ctypes mirror in bpf_events.py must match bpf/include/podspan_events.h byte for byte,
for every struct and constant the header defines, and under the -D variants the loader passes."""

from __future__ import annotations

import ctypes
import enum
import json
import pathlib
import re
import subprocess

import pytest

from podspan_agent import bpf_events, loader

HEADER_DIR = loader.bpf_dir() / "include"
HEADER = HEADER_DIR / "podspan_events.h"

# C struct name -> ctypes mirror
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "podspan_run": bpf_events.Run,
    "podspan_event_header": bpf_events.EventHeader,
    "podspan_open_event": bpf_events.OpenEvent,
    "podspan_data_event": bpf_events.DataEventFixed,  # the fixed part; `data` follows at DATA_OFFSET
    "podspan_conn_key": bpf_events.ConnKey,
    "podspan_conn": bpf_events.Conn,
    "podspan_skip": bpf_events.Skip,
    "podspan_sampled_conn": bpf_events.SampledConn,
    "podspan_skip_key": bpf_events.SkipKey,
    "podspan_skip_counts": bpf_events.SkipCounts,
}
# C enum prefix -> Python enum: every member of one must be a member of the other.
ENUM_PREFIXES: dict[str, type[enum.IntEnum] | type[enum.IntFlag]] = {
    "PODSPAN_EV_": bpf_events.EventKind,
    "PODSPAN_DIR_": bpf_events.Direction,
    "PODSPAN_ROLE_": bpf_events.Role,
    "PODSPAN_STAT_": bpf_events.Stat,
    "PODSPAN_CONN_": bpf_events.ConnFlag,
    "PODSPAN_SAMPLE_": bpf_events.SampleProtocol,
    "PODSPAN_METHOD_": bpf_events.Method,
}
CONSTANTS = {
    **{f"{prefix}{member.name}": int(member) for prefix, kind in ENUM_PREFIXES.items() for member in kind},
    "PODSPAN_STAT_MAX": bpf_events.STAT_COUNT,
    "PODSPAN_SOCKADDR_SIZE": bpf_events.SOCKADDR_SIZE,
    "PODSPAN_CAPTURE_SIZE": bpf_events.DEFAULT_CAPTURE_SIZE,
    "PODSPAN_CHUNK_CAPTURE_SIZE": bpf_events.DEFAULT_CHUNK_CAPTURE_SIZE,
    "PODSPAN_MAX_CHUNK_CAPTURE_SIZE": bpf_events.MAX_CHUNK_CAPTURE_SIZE,
    "PODSPAN_SKIP_BUCKETS": bpf_events.SKIP_BUCKETS,
    "PODSPAN_VERSION_UNKNOWN": bpf_events.Version.UNKNOWN,
    "PODSPAN_VERSION_10": bpf_events.Version.V10,
    "PODSPAN_VERSION_11": bpf_events.Version.V11,
}
# Histogram bounds of skipped exchanges (X-macro lists of ns) -> the mirror's, which are red.py's buckets.
BOUNDS = {"PODSPAN_HTTP_BOUNDS_NS": bpf_events.HTTP_BOUNDS_NS, "PODSPAN_DB_BOUNDS_NS": bpf_events.DB_BOUNDS_NS}
# -D values the loader may pass; they change capture sizes, never a layout the agent reads.
VARIANT = {"PODSPAN_CAPTURE_SIZE": 64, "PODSPAN_CHUNK_CAPTURE_SIZE": 1024}


def _field_names(mirror: type[ctypes.Structure]) -> list[str]:
    return [field[0] for field in mirror._fields_]


def _header_names() -> tuple[set[str], set[str]]:
    """(struct names, constant names) the header defines."""
    text = HEADER.read_text()
    structs = set(re.findall(r"^struct (podspan_\w+) \{", text, re.M))
    constants = set(re.findall(r"^\s+(PODSPAN_\w+) = ", text, re.M))
    constants |= set(re.findall(r"^#define (PODSPAN_\w+) ", text, re.M))
    return structs, constants


def _compile(tmp_path: pathlib.Path, cflags: list[str]) -> subprocess.CompletedProcess[str]:
    """Compile a probe program against the real header; its output is the layout facts as JSON."""
    lines = []
    for struct, mirror in MIRRORS.items():
        if mirror is not bpf_events.DataEventFixed:
            lines.append(f'P("sizeof {struct}", sizeof(struct {struct}));')
        for name in _field_names(mirror):
            lines.append(f'P("{struct}.{name}", offsetof(struct {struct}, {name}));')
    lines.append('P("podspan_data_event.data", offsetof(struct podspan_data_event, data));')
    lines.append('P("sizeof podspan_data_event.data", sizeof(((struct podspan_data_event *)0)->data));')
    lines += [f'P("{name}", {name});' for name in CONSTANTS]
    for bounds in BOUNDS:
        lines.append(f'{{ unsigned long long b[] = {{0 {bounds}(BOUND)}}; '
                     f'for (unsigned i = 1; i < sizeof b / sizeof *b; i++) '
                     f'{{ char k[64]; snprintf(k, sizeof k, "{bounds}[%u]", i - 1); P(k, b[i]); }} }}')
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        '#include "podspan_events.h"\n'
        "static int first = 1;\n"
        "#define BOUND(b) , b\n"
        '#define P(k, v) printf("%s\\"%s\\": %lu", first ? "" : ", ", k, (unsigned long)(v)), first = 0\n'
        'int main(void) { printf("{"); ' + " ".join(lines) + ' printf("}\\n"); return 0; }\n'
    )
    binary = tmp_path / "layout"
    return subprocess.run(["cc", "-I", str(HEADER_DIR), *cflags, "-o", str(binary), str(source)],
                          capture_output=True, text=True)


def _c_layout(tmp_path: pathlib.Path, cflags: list[str]) -> dict[str, int]:
    compiled = _compile(tmp_path, cflags)
    assert compiled.returncode == 0, compiled.stderr
    run = subprocess.run([str(tmp_path / "layout")], check=True, capture_output=True, text=True)
    facts: dict[str, int] = json.loads(run.stdout)
    return facts


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return _c_layout(tmp_path_factory.mktemp("layout"), [])


@pytest.fixture(scope="module")
def variant_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return _c_layout(tmp_path_factory.mktemp("variant"), [f"-D{name}={value}" for name, value in VARIANT.items()])


def test_every_struct_and_constant_is_mirrored() -> None:
    structs, constants = _header_names()
    assert structs == set(MIRRORS)
    assert constants - {"PODSPAN_EVENTS_H"} == set(CONSTANTS)


@pytest.mark.parametrize("struct", sorted(MIRRORS))
def test_struct_layout_matches_header(c_layout: dict[str, int], variant_layout: dict[str, int], struct: str) -> None:
    mirror = MIRRORS[struct]
    for layout in (c_layout, variant_layout):
        if mirror is not bpf_events.DataEventFixed:
            assert ctypes.sizeof(mirror) == layout[f"sizeof {struct}"]
        for name in _field_names(mirror):
            assert getattr(mirror, name).offset == layout[f"{struct}.{name}"], name


def test_data_follows_the_fixed_part(c_layout: dict[str, int], variant_layout: dict[str, int]) -> None:
    # The event buffer holds the largest capture; only `captured` bytes of it are ever sent.
    assert c_layout["podspan_data_event.data"] == variant_layout["podspan_data_event.data"] == bpf_events.DATA_OFFSET
    assert c_layout["sizeof podspan_data_event.data"] == bpf_events.DEFAULT_CHUNK_CAPTURE_SIZE
    assert variant_layout["sizeof podspan_data_event.data"] == VARIANT["PODSPAN_CHUNK_CAPTURE_SIZE"]


@pytest.mark.parametrize("name", sorted(CONSTANTS))
def test_constants_match_header(c_layout: dict[str, int], variant_layout: dict[str, int], name: str) -> None:
    assert CONSTANTS[name] == c_layout[name]
    assert variant_layout[name] == VARIANT.get(name, CONSTANTS[name])


@pytest.mark.parametrize(("capture", "chunk"), [(512, 16384), (1024, 512)])
def test_header_rejects_chunk_sizes_the_loader_rejects(tmp_path: pathlib.Path, capture: int, chunk: int) -> None:
    compiled = _compile(tmp_path, [f"-DPODSPAN_CAPTURE_SIZE={capture}", f"-DPODSPAN_CHUNK_CAPTURE_SIZE={chunk}"])
    assert compiled.returncode != 0 and "PODSPAN_CHUNK_CAPTURE_SIZE must be" in compiled.stderr
    with pytest.raises(ValueError, match="chunk capture size"):
        loader.ProbeOptions(capture_size=capture, chunk_capture_size=chunk).cflags()


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_skip_bucket_bounds_match_header_and_red_metrics(c_layout: dict[str, int], name: str) -> None:
    from podspan_agent.metrics import red

    bounds = BOUNDS[name]
    assert tuple(c_layout[f"{name}[{i}]"] for i in range(len(bounds))) == bounds
    assert f"{name}[{len(bounds)}]" not in c_layout
    assert len(bounds) < bpf_events.SKIP_BUCKETS
    seconds = red.DURATION_BUCKETS_S if name == "PODSPAN_HTTP_BOUNDS_NS" else red.DB_BUCKETS_S
    assert bounds == tuple(round(s * 1e9) for s in seconds)
