"""bench/openloop.c, the open-loop HTTP/1.1 latency client of bench/http_overhead.py: compiled here with gcc
and run for 1 s at 200 req/s against a loopback http.server in a thread; the counts must add up."""

from __future__ import annotations

import http.server
import pathlib
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

SOURCE = pathlib.Path(__file__).resolve().parents[2] / "bench" / "openloop.c"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed (scripts/setup.sh)")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        body = b"<h1>podspan</h1>\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def openloop(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    binary = tmp_path_factory.mktemp("openloop") / "openloop"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-o", str(binary), str(SOURCE)],
                   check=True, timeout=60)
    return binary


def test_counts_add_up(openloop: pathlib.Path, http_port: int) -> None:
    done = subprocess.run([str(openloop), "--host", "127.0.0.1", "--port", str(http_port), "--path", "/",
                           "--rate", "200", "--duration", "1", "--connections", "2", "--warmup", "0.2"],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("openloop: ")
    fields = {k: float(v) for k, v in re.findall(r"(\w+)=([-\d.e+]+)", line)}
    assert fields["scheduled"] == 200
    assert fields["sent"] == fields["completed"] == fields["scheduled"]
    assert fields["errors"] == fields["timeouts"] == fields["non2xx"] == 0
    assert fields["warmup"] == 40
    assert 0 < fields["p50_us"] <= fields["p90_us"] <= fields["p99_us"] <= fields["p999_us"] <= fields["max_us"]
    assert fields["late_sends"] <= fields["sent"]


def test_refuses_chunked(openloop: pathlib.Path) -> None:
    """A chunked response cannot be framed: exit 2 and say so, no result line."""

    class Chunked(_Handler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"2\r\nok\r\n0\r\n\r\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Chunked)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = subprocess.run([str(openloop), "--port", str(server.server_address[1]), "--rate", "100",
                               "--duration", "0.1", "--warmup", "0"], capture_output=True, text=True, timeout=10)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "chunked" in done.stderr
