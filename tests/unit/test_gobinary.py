"""Go executables for the crypto/tls probes, without the kernel: real Go builds (Debian's Go, from
tests/support/gotls) with and without symbols, and the RET search on hand-assembled x86-64."""

from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from podspan_agent import elffile, gobinary, tls
from tests.support import go_programs


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> go_programs.Programs:
    return go_programs.build_for_test(tmp_path_factory.mktemp("gobinary"))


def test_unstripped_build_gives_each_function_and_its_returns(programs: go_programs.Programs) -> None:
    found = gobinary.inspect(str(programs.unstripped))
    assert found is not None and not found.problem
    assert found.version.startswith("go1.")
    assert {f.symbol for f in found.functions} == {gobinary.READ, gobinary.WRITE, gobinary.SERVER_HANDSHAKE,
                                                   gobinary.CLIENT_HANDSHAKE}
    with open(programs.unstripped, "rb") as elf:
        parsed = elffile.parse(elf)
        assert parsed is not None
        symbols = elffile.functions(elf, parsed, elffile.SHT_SYMTAB, [f.symbol for f in found.functions])
        for function in found.functions:
            symbol = symbols[function.symbol]
            text = parsed.containing(symbol.address)
            assert text is not None and text.name == b".text"
            code = elffile.read(elf, text, symbol.address - text.addr, symbol.size)
            assert function.returns and all(code[offset] == 0xC3 for offset in function.returns)
            # every RET: the function's bytes hold no other 0xC3 that decodes as one
            assert function.returns == gobinary.return_offsets(code)


def test_stripped_build_is_reported_not_guessed(programs: go_programs.Programs) -> None:
    found = gobinary.inspect(str(programs.stripped))
    assert found is not None
    assert found.version == gobinary.inspect(str(programs.unstripped)).version  # type: ignore[union-attr]
    assert found.functions == () and found.problem == "stripped: no symbols to probe"


def test_tracker_names_go_executables(programs: go_programs.Programs) -> None:
    examined = tls._examine("", str(programs.unstripped), executable=True)
    assert examined is not None and examined[0].endswith(" (gohttps)") and examined[1] is not None
    assert tls._examine("", str(programs.unstripped), executable=False) is None  # only a process's executable


def test_go_programs_without_crypto_tls_are_not_listed(tmp_path: pathlib.Path) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain")
    source = tmp_path / "plain.go"
    source.write_text('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("no TLS here") }\n')
    for flags in ([], ["-ldflags=-s -w"]):
        out = tmp_path / f"plain{len(flags)}"
        go_programs.go_build(go, source, out, flags)
        assert gobinary.inspect(str(out)) is None


def test_other_files_are_not_go(tmp_path: pathlib.Path) -> None:
    shell = shutil.which("sh")
    assert shell is not None
    assert gobinary.inspect(os.path.realpath(shell)) is None
    (tmp_path / "text").write_text("not an ELF file")
    assert gobinary.inspect(str(tmp_path / "text")) is None
    (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 20)
    assert gobinary.inspect(str(tmp_path / "short")) is None
    assert gobinary.inspect(str(tmp_path / "missing")) is None


def test_returns_only_at_instruction_boundaries() -> None:
    # mov eax, 0xc3 (an immediate 0xC3, not a RET); ret; xor eax, eax; ret
    assert gobinary.return_offsets(bytes.fromhex("b8c3000000" "c3" "31c0" "c3")) == (5, 8)
    # a function cut off inside an instruction is not guessed at
    assert gobinary.return_offsets(bytes.fromhex("c3" "b8c300")) == ()
    assert gobinary.return_offsets(b"") == ()


@pytest.mark.parametrize(("head", "version"), [
    (b"\xff Go buildinf:\x08\x02" + b"\0" * 16 + b"\x08go1.19.8rest", "go1.19.8"),
    (b"\xff Go buildinf:\x08\x00" + b"\0" * 16 + b"\x10\x20\x30\x40" + b"\0" * 8, "go"),  # pointers: Go < 1.18
    (b"\xff Go buildinf:\x08\x02" + b"\0" * 16 + b"\x05hello", "go"),  # not a Go release
    (b"\x7fELF" + b"\0" * 40, None),
])
def test_build_info_version(head: bytes, version: str | None) -> None:
    assert gobinary._version(head) == version


@pytest.mark.parametrize(("version", "machine", "problem"), [
    ("go1.19.8", elffile.EM_X86_64, ""), ("go1.17", elffile.EM_X86_64, ""),
    ("go1.16.15", elffile.EM_X86_64, "before Go 1.17: stack-based calling convention"),
    ("go", elffile.EM_X86_64, "Go release unknown (build info before Go 1.18)"),
    ("go1.19.8", 183, "not x86-64: probes read the amd64 register ABI"),  # EM_AARCH64
])
def test_supported_releases(version: str, machine: int, problem: str) -> None:
    assert gobinary._unsupported(version, machine) == problem
