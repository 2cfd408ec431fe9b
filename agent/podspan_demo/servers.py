"""Local servers for the demo, tests and benchmarks: nginx configs, PostgreSQL clusters, free ports."""

from __future__ import annotations

import glob
import pathlib
import shutil
import socket
import subprocess


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def self_signed_certificate(directory: pathlib.Path, host: str = "127.0.0.1") -> tuple[pathlib.Path, pathlib.Path]:
    """A fresh self-signed certificate for `host` (an IP address) and localhost, made with the `openssl`
    tool: (certificate, key), PEM files in `directory`; the certificate is its own CA."""
    cert, key = directory / "tls-cert.pem", directory / "tls-key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", f"subjectAltName=IP:{host},DNS:localhost"],
        capture_output=True, text=True, timeout=60)
    if made.returncode != 0:
        raise RuntimeError(f"openssl req failed: {made.stderr.strip()[-500:]}")
    return cert, key


def nginx_config(root: pathlib.Path, host: str, port: int, upstream: int | None = None,
                 tls: tuple[pathlib.Path, pathlib.Path] | None = None, http2: bool = False) -> pathlib.Path:
    """One worker as root (temp dirs are private), no access log, a static file at / and
    a `return 200` at /api/ (and with `upstream`, /upstream/ proxied to that port on `host`); every
    path nginx writes stays under `root`. `tls`: (certificate, key) to serve HTTPS instead, and with
    `http2` HTTP/2 too (clients choose it by ALPN)."""
    proxied = f"location /upstream/ {{ proxy_pass http://{host}:{upstream}; }}" if upstream else ""
    listen = f"{host}:{port}"
    if tls:
        listen += (" ssl http2" if http2 else " ssl") + f";\n        ssl_certificate {tls[0]};\n" \
                  f"        ssl_certificate_key {tls[1]}"
    (root / "html").mkdir(exist_ok=True)
    (root / "html" / "index.html").write_text("<h1>podspan</h1>\n")
    conf = root / "nginx.conf"
    conf.write_text(
        f"""daemon off;
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen {listen};
        root {root}/html;
        location /api/ {{ return 200 '{{"ok":true}}'; }}
        {proxied}
    }}
}}
"""
    )
    return conf


# setpriv execs (no fork), so a spawned PID stays the server's own; PostgreSQL refuses to run as root.
AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def postgresql_bin() -> pathlib.Path | None:
    """Debian keeps the server binaries (initdb, postgres) off PATH, per major version."""
    found = [pathlib.Path(path).parent for path in glob.glob("/usr/lib/postgresql/*/bin/postgres")]
    versions = [bindir for bindir in found if bindir.parent.name.isdigit()]
    return max(versions, key=lambda bindir: int(bindir.parent.name)) if versions else None


def postgresql_trust_cluster(root: pathlib.Path, network: str) -> list[str]:
    """initdb a cluster under `root` (a new directory outside private temp dirs: the `postgres` user must
    reach it) that trusts every client from `network` (CIDR; a network of the test's or demo's own), and
    return the argv that serves it on port 5432."""
    bindir = postgresql_bin()
    if bindir is None:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/postgres (apt: postgresql; scripts/setup.sh)")
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    done = subprocess.run([*AS_POSTGRES, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                           "--no-sync"], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr.strip()[-500:]}")
    with open(data / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {network} trust\n")
    return [*AS_POSTGRES, str(bindir / "postgres"), "-D", str(data), "-p", "5432", "-k", str(root),
            "-c", "listen_addresses=*", "-c", "fsync=off", "-c", "synchronous_commit=off"]
