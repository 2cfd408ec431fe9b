"""Local servers for the demo, tests and benchmarks: nginx configs and free loopback ports."""

from __future__ import annotations

import pathlib
import shutil
import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(root: pathlib.Path, host: str, port: int) -> pathlib.Path:
    """One worker as root (temp dirs are private), no access log, a static file at / and
    a `return 200` at /api/; every path nginx writes stays under `root`."""
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
        listen {host}:{port};
        root {root}/html;
        location /api/ {{ return 200 '{{"ok":true}}'; }}
    }}
}}
"""
    )
    return conf
