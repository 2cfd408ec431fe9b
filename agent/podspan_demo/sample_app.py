"""Sample services for the demo and tests: `frontend` calls `backend` over HTTP/1.1.

Run as `python -m podspan_demo.sample_app frontend --port 8080 --backend http://127.0.0.1:8081`
or `... backend --port 8081`. Standard library only, so the traced process is plain CPython.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import random
import time
import urllib.parse


class BackendHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "users" and parts[1].isdigit():
            time.sleep(random.uniform(0.001, 0.005))  # pretend to read a database
            self._reply(200, {"id": int(parts[1]), "name": f"user-{parts[1]}"})
        elif path == "/healthz":
            self._reply(200, {"ok": True})
        else:
            self._reply(404, {"error": "not found"})

    def _reply(self, status: int, payload: object) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class FrontendHandler(BackendHandler):
    backend: urllib.parse.SplitResult

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/users/") or path.startswith("/missing"):
            target = "/users/" + path.rsplit("/", 1)[-1] if path.startswith("/users/") else "/nope"
            host = self.backend.hostname or "127.0.0.1"
            conn = http.client.HTTPConnection(host, self.backend.port, timeout=5)
            try:
                conn.request("GET", target, headers={"User-Agent": "sample-frontend"})
                response = conn.getresponse()
                upstream = json.loads(response.read() or b"null")
                self._reply(200 if response.status == 200 else 502, {"upstream": upstream})
            finally:
                conn.close()
        else:
            super().do_GET()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("frontend", "backend"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--backend", default="http://127.0.0.1:8081")
    args = parser.parse_args()
    handler: type[BackendHandler] = BackendHandler
    if args.role == "frontend":
        FrontendHandler.backend = urllib.parse.urlsplit(args.backend)
        handler = FrontendHandler
    http.server.ThreadingHTTPServer((args.bind, args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
