"""Builds the Go HTTPS server and client of tests/support/gotls (Debian's golang-go, standard library only,
no network), with and without symbols; the build cache is kept in the checkout's .cache/."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess

import pytest

SOURCE = pathlib.Path(__file__).resolve().parent / "gotls" / "main.go"
_CACHE = SOURCE.parents[3] / ".cache"


@dataclasses.dataclass(frozen=True)
class Programs:
    unstripped: pathlib.Path
    stripped: pathlib.Path  # -ldflags=-s -w: no symbol table, no DWARF


class Unavailable(RuntimeError):
    """No Go toolchain."""


def build(directory: pathlib.Path) -> Programs:
    """Both builds of the program into `directory`; raises Unavailable without a Go toolchain."""
    go = shutil.which("go")
    if go is None:
        raise Unavailable("no Go toolchain (scripts/setup.sh installs golang-go)")
    programs = Programs(directory / "gohttps", directory / "gohttps-stripped")
    for out, flags in ((programs.unstripped, []), (programs.stripped, ["-ldflags=-s -w"])):
        go_build(go, SOURCE, out, flags)
    return programs


def go_build(go: str, source: pathlib.Path, out: pathlib.Path, flags: list[str]) -> None:
    """`go build` of one file, offline, statically linked, with the checkout's build cache."""
    env = {**os.environ, "GOCACHE": str(_CACHE / "go-build"), "GOPATH": str(_CACHE / "gopath"), "GOPROXY": "off",
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    subprocess.run([go, "build", *flags, "-o", str(out), str(source)], env=env, check=True, timeout=300,
                   capture_output=True)


def build_for_test(directory: pathlib.Path) -> Programs:
    """build(), skipping the test without a Go toolchain."""
    try:
        return build(directory)
    except Unavailable as missing:
        pytest.skip(str(missing))
