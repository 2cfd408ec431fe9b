"""TLS library discovery without the kernel: which files export OpenSSL, read from real ELF files on this
machine, and what a process maps, read from /proc."""

from __future__ import annotations

import os
import pathlib
import shutil
import ssl
import sys

import pytest

from podspan_agent import tls

LIBSSL = pathlib.Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")
WANTED = (b"SSL_read", b"SSL_write", b"SSL_do_handshake")


@pytest.mark.skipif(not LIBSSL.exists(), reason="Debian's libssl.so.3 is not installed")
def test_libssl_exports_the_probed_functions() -> None:
    assert tls.exports(str(LIBSSL), WANTED) == set(WANTED)
    assert tls.exports(str(LIBSSL), [b"SSL_no_such_function"]) == set()


def test_executables_and_other_files_without_openssl_export_nothing(tmp_path: pathlib.Path) -> None:
    shell = shutil.which("sh")
    assert shell is not None
    assert tls.exports(os.path.realpath(shell), WANTED) == set()
    (tmp_path / "text").write_text("not an ELF file at all")
    assert tls.exports(str(tmp_path / "text"), WANTED) == set()
    (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01")  # an ELF header cut off
    assert tls.exports(str(tmp_path / "short"), WANTED) == set()
    assert tls.exports(str(tmp_path / "missing"), WANTED) == set()


@pytest.mark.skipif(not shutil.which("node"), reason="no node binary")
def test_a_statically_linked_openssl_is_found_in_the_executable() -> None:
    node = os.path.realpath(shutil.which("node") or "")
    if not tls.exports(node, [b"SSL_read"]):
        pytest.skip("this node links OpenSSL dynamically")
    assert tls.exports(node, WANTED) == set(WANTED)


def test_this_process_maps_the_libssl_the_ssl_module_uses() -> None:
    assert ssl.OPENSSL_VERSION  # imported: its libssl is mapped
    files = tls.mapped_files(os.getpid())
    assert [path for path in files if tls.is_libssl(path)], files
    assert os.path.realpath(sys.executable) in files
    assert tls.mapped_files(2**22 + 1) == {}  # no such process


@pytest.mark.parametrize(("path", "libssl"), [
    ("/usr/lib/x86_64-linux-gnu/libssl.so.3", True), ("/lib/libssl.so.1.1", True), ("/opt/libssl.so", True),
    ("/usr/lib/x86_64-linux-gnu/libssl3.so", False), ("/usr/lib/libcrypto.so.3", False),
    ("/usr/lib/libssl.so.3.bak", False),
])
def test_libssl_names(path: str, libssl: bool) -> None:
    assert tls.is_libssl(path) is libssl
