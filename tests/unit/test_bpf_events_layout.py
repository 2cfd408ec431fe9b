"""The ctypes mirror in bpf_events.py must match bpf/include/podspan_events.h byte for byte."""

from __future__ import annotations

import ctypes
import json
import pathlib
import subprocess

import pytest

from podspan_agent import bpf_events, loader

HEADER_DIR = loader.bpf_dir() / "include"

# C struct name -> ctypes mirror
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "podspan_run": bpf_events.Run,
    "podspan_event_header": bpf_events.EventHeader,
    "podspan_open_event": bpf_events.OpenEvent,
    "podspan_conn_key": bpf_events.ConnKey,
    "podspan_conn": bpf_events.Conn,
}
ENUMS = {
    "PODSPAN_EV_OPEN": bpf_events.EventKind.OPEN,
    "PODSPAN_EV_DATA": bpf_events.EventKind.DATA,
    "PODSPAN_EV_CLOSE": bpf_events.EventKind.CLOSE,
    "PODSPAN_DIR_INGRESS": bpf_events.Direction.INGRESS,
    "PODSPAN_DIR_EGRESS": bpf_events.Direction.EGRESS,
    "PODSPAN_ROLE_SERVER": bpf_events.Role.SERVER,
    "PODSPAN_ROLE_CLIENT": bpf_events.Role.CLIENT,
    "PODSPAN_STAT_EVENTS": bpf_events.Stat.EVENTS,
    "PODSPAN_STAT_EVENTS_LOST": bpf_events.Stat.EVENTS_LOST,
    "PODSPAN_STAT_CHUNKS": bpf_events.Stat.CHUNKS,
    "PODSPAN_STAT_CONN_FULL": bpf_events.Stat.CONN_FULL,
    "PODSPAN_STAT_SENDFILE": bpf_events.Stat.SENDFILE,
    "PODSPAN_STAT_MAX": bpf_events.STAT_COUNT,
    "PODSPAN_SOCKADDR_SIZE": bpf_events.SOCKADDR_SIZE,
    "PODSPAN_CAPTURE_SIZE": bpf_events.DEFAULT_CAPTURE_SIZE,
}


def _c_layout(tmp_path: pathlib.Path) -> dict[str, int]:
    """Compile a probe program against the real header and read its layout facts."""
    lines = []
    for struct, mirror in MIRRORS.items():
        lines.append(f'P("sizeof {struct}", sizeof(struct {struct}));')
        for name, _ in mirror._fields_:
            lines.append(f'P("{struct}.{name}", offsetof(struct {struct}, {name}));')
    for field in ("chunk_bytes", "captured", "data"):
        lines.append(f'P("podspan_data_event.{field}", offsetof(struct podspan_data_event, {field}));')
    lines += [f'P("{name}", {name});' for name in ENUMS]
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <linux/types.h>\n"
        '#include "podspan_events.h"\n'
        "static int first = 1;\n"
        '#define P(k, v) printf("%s\\"%s\\": %lu", first ? "" : ", ", k, (unsigned long)(v)), first = 0\n'
        'int main(void) { printf("{"); ' + " ".join(lines) + ' printf("}\\n"); return 0; }\n'
    )
    binary = tmp_path / "layout"
    subprocess.run(["cc", "-I", str(HEADER_DIR), "-o", str(binary), str(source)], check=True)
    return json.loads(subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout)


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    return _c_layout(tmp_path_factory.mktemp("layout"))


@pytest.mark.parametrize("struct", sorted(MIRRORS))
def test_struct_layout_matches_header(c_layout: dict[str, int], struct: str) -> None:
    mirror = MIRRORS[struct]
    assert ctypes.sizeof(mirror) == c_layout[f"sizeof {struct}"]
    for name, _ in mirror._fields_:
        assert getattr(mirror, name).offset == c_layout[f"{struct}.{name}"], name


def test_data_event_offsets(c_layout: dict[str, int]) -> None:
    assert bpf_events.DataEventFixed.chunk_bytes.offset == c_layout["podspan_data_event.chunk_bytes"]
    assert bpf_events.DataEventFixed.captured.offset == c_layout["podspan_data_event.captured"]
    assert c_layout["podspan_data_event.data"] == bpf_events.DATA_OFFSET


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_constants_match_header(c_layout: dict[str, int], name: str) -> None:
    assert int(ENUMS[name]) == c_layout[name]
