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


def build(directory: pathlib.Path) -> Programs:
    """Both builds of the program into `directory`; skips the test when no Go toolchain is installed."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (scripts/setup.sh installs golang-go)")
    env = {**os.environ, "GOCACHE": str(_CACHE / "go-build"), "GOPATH": str(_CACHE / "gopath"), "GOPROXY": "off",
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    programs = Programs(directory / "gohttps", directory / "gohttps-stripped")
    for out, flags in ((programs.unstripped, []), (programs.stripped, ["-ldflags=-s -w"])):
        subprocess.run([go, "build", *flags, "-o", str(out), str(SOURCE)], env=env, check=True, timeout=300,
                       capture_output=True)
    return programs
