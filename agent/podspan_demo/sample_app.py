"""Sample services for the demo and tests: `frontend` calls `backend` over HTTP/1.1; the backend
optionally reads users through a Redis cache from PostgreSQL.

Run as `python -m podspan_demo.sample_app frontend --port 8080 --backend http://127.0.0.1:8081`
or `... backend --port 8081 [--redis HOST:PORT --postgres HOST:PORT]`; with `--tls-cert/--tls-key` a
service speaks HTTPS (the `ssl` module: OpenSSL), and a frontend calls an `https://` backend trusting
`--backend-ca`. Standard library only (tiny RESP and PostgreSQL simple-query clients), so the traced
process is plain CPython.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import random
import socket
import ssl
import struct
import time
import urllib.parse


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


def redis_command(address: tuple[str, int], *args: str) -> bytes | None:
    """One RESP command on a fresh connection; the bulk/simple reply (None for a nil)."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args)
    with socket.create_connection(address, timeout=5) as conn:
        conn.sendall(request)
        reply = conn.makefile("rb")
        line = reply.readline().rstrip(b"\r\n")
        if line[:1] == b"$":
            size = int(line[1:])
            return None if size < 0 else reply.read(size + 2)[:-2]
        if line[:1] == b"-":
            raise RuntimeError(line[1:].decode(errors="replace"))
        return line[1:]


def postgres_query(address: tuple[str, int], sql: str, user: str = "postgres") -> list[list[str | None]]:
    """One simple query on a fresh connection (trust authentication): the rows as text."""
    with socket.create_connection(address, timeout=5) as conn:
        params = f"user\0{user}\0database\0{user}\0\0".encode()
        conn.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        stream = conn.makefile("rb")
        rows: list[list[str | None]] = []
        sent = False
        while True:
            kind = stream.read(1)
            length = struct.unpack("!i", stream.read(4))[0]
            body = stream.read(length - 4)
            if kind == b"E":
                raise RuntimeError(body.decode(errors="replace"))
            if kind == b"D":
                rows.append(_data_row(body))
            elif kind == b"Z":
                if sent:
                    conn.sendall(b"X\0\0\0\4")  # Terminate
                    return rows
                query = sql.encode() + b"\0"
                conn.sendall(b"Q" + struct.pack("!i", 4 + len(query)) + query)
                sent = True
            elif not kind:
                raise RuntimeError("PostgreSQL closed the connection")


def _data_row(body: bytes) -> list[str | None]:
    values: list[str | None] = []
    pos = 2
    for _ in range(struct.unpack("!h", body[:2])[0]):
        size = struct.unpack("!i", body[pos:pos + 4])[0]
        pos += 4
        values.append(None if size < 0 else body[pos:pos + size].decode())
        pos += max(size, 0)
    return values


class BackendHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    redis: tuple[str, int] | None = None
    postgres: tuple[str, int] | None = None

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        parts = path.strip("/").split("/")
        delay = urllib.parse.parse_qs(url.query).get("delay_ms", ["0"])[0]
        if delay.isdigit():  # lets the demo and tests make a request slow
            time.sleep(min(int(delay), 5000) / 1000)
        if len(parts) == 2 and parts[0] == "users" and parts[1].isdigit():
            self._reply(200, {"id": int(parts[1]), "name": self._user_name(int(parts[1]))})
        elif path == "/healthz":
            self._reply(200, {"ok": True})
        else:
            self._reply(404, {"error": "not found"})

    def _user_name(self, user_id: int) -> str:
        """Through the cache when there is one, else from the database, else made up."""
        key = f"user:{user_id}"
        if self.redis is not None:
            cached = redis_command(self.redis, "GET", key)
            if cached is not None:
                return cached.decode()
        if self.postgres is not None:
            rows = postgres_query(self.postgres, f"SELECT name FROM users WHERE id = {user_id}")
            name = str(rows[0][0]) if rows else f"user-{user_id}"
        else:
            time.sleep(random.uniform(0.001, 0.005))  # pretend to read a database
            name = f"user-{user_id}"
        if self.redis is not None:
            redis_command(self.redis, "SET", key, name, "EX", "60")
        return name

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
    backend_tls: ssl.SSLContext | None = None  # an https:// backend

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if path.startswith("/users/") or path.startswith("/missing"):
            target = "/users/" + path.rsplit("/", 1)[-1] if path.startswith("/users/") else "/nope"
            if url.query:
                target += "?" + url.query
            host = self.backend.hostname or "127.0.0.1"
            conn = (http.client.HTTPSConnection(host, self.backend.port, timeout=5, context=self.backend_tls)
                    if self.backend_tls is not None else http.client.HTTPConnection(host, self.backend.port, timeout=5))
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
    parser.add_argument("--redis", type=_address, metavar="HOST:PORT", help="backend: cache users in Redis")
    parser.add_argument("--postgres", type=_address, metavar="HOST:PORT",
                        help="backend: read users from PostgreSQL (table users(id, name), trust auth)")
    parser.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM) ...")
    parser.add_argument("--tls-key", help="... and this private key (PEM)")
    parser.add_argument("--backend-ca", help="frontend: CA certificate (PEM) an https:// backend must chain to")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    BackendHandler.redis, BackendHandler.postgres = args.redis, args.postgres
    handler: type[BackendHandler] = BackendHandler
    if args.role == "frontend":
        FrontendHandler.backend = urllib.parse.urlsplit(args.backend)
        if FrontendHandler.backend.scheme == "https":
            FrontendHandler.backend_tls = ssl.create_default_context(cafile=args.backend_ca)
        handler = FrontendHandler
    server = http.server.ThreadingHTTPServer((args.bind, args.port), handler)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
