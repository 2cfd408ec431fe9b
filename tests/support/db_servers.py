"""Real Redis, PostgreSQL and MariaDB servers from Debian's packages, on 127.0.0.1 and free ports,
for kernel tests, benchmarks and fixture captures.

Each context manager makes its own data directory in a temp dir, starts the server binary
directly (never the system service), waits until it answers, and stops it by PID on exit.
`spawn` decides where the server process runs (plainly, or in a cgroup "pod").
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import os
import pathlib
import shutil
import signal
import subprocess
import tempfile
import time

from podspan_demo import pods, servers

HOST = "127.0.0.1"
USER, PASSWORD, DATABASE = "app", "secret", "shop"
_READY_TIMEOUT = 60.0

# (name, argv, log file) -> the started server process; its PID must be the server's own.
Spawn = collections.abc.Callable[[str, list[str], pathlib.Path], subprocess.Popen[bytes]]


class Unavailable(RuntimeError):
    """A server binary or client tool is not installed (scripts/setup.sh installs them)."""


@dataclasses.dataclass(frozen=True)
class Server:
    """A running server: where clients connect (`USER`/`PASSWORD`/`DATABASE` for SQL servers)
    and `admin`, a CLI client argv connected as superuser over the server's unix socket."""

    system: str
    port: int
    process: subprocess.Popen[bytes]
    workdir: pathlib.Path
    admin: tuple[str, ...]
    host: str = HOST

    @property
    def pid(self) -> int:
        return self.process.pid

    def admin_run(self, script: str) -> str:
        """Run SQL (or Redis commands) as the superuser; raises with the tool's output on failure."""
        done = subprocess.run(self.admin, input=script, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{self.system} admin failed ({done.returncode}): {done.stderr or done.stdout}")
        return done.stdout


def spawn_plain(_name: str, argv: list[str], log: pathlib.Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def spawn_in_pod(runner: pods.PodRunner) -> Spawn:
    """Start servers as the main process of a new cgroup "pod" of `runner` (stopped with it, too)."""
    def spawn(name: str, argv: list[str], log: pathlib.Path) -> subprocess.Popen[bytes]:
        pod = runner.start(name, argv, log_path=log)
        assert pod.process is not None
        return pod.process

    return spawn


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)")


def postgresql_bin() -> pathlib.Path:
    bindir = servers.postgresql_bin()
    if bindir is None:
        raise Unavailable("not installed: /usr/lib/postgresql/*/bin/postgres (apt: postgresql)")
    return bindir


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    """Stop a server this module started, by its PID: `sig`, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_ready(process: subprocess.Popen[bytes], log: pathlib.Path, ready: collections.abc.Callable[[], bool]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            state = f"exited with {process.returncode}" if process.poll() is not None else "not ready in time"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{log.stem} {state}:\n{tail}")
        time.sleep(0.1)


def _succeeds(argv: list[str]) -> bool:
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


@contextlib.contextmanager
def _running(name: str, argv: list[str], workdir: pathlib.Path, spawn: Spawn, stop_signal: int,
             ready: collections.abc.Callable[[], bool]) -> collections.abc.Iterator[subprocess.Popen[bytes]]:
    log = workdir / f"{name}.log"
    process = spawn(name, argv, log)
    try:
        _wait_ready(process, log, ready)
        yield process
    finally:
        _stop(process, stop_signal)


@contextlib.contextmanager
def redis(spawn: Spawn = spawn_plain, extra_args: collections.abc.Sequence[str] = ()
          ) -> collections.abc.Iterator[Server]:
    """redis-server without persistence; `admin` is redis-cli reading commands from stdin."""
    _require("redis-server", "redis-cli")
    port = servers.free_port(HOST)
    with tempfile.TemporaryDirectory(prefix="podspan-redis-") as tmp:
        workdir = pathlib.Path(tmp)
        argv = ["redis-server", "--port", str(port), "--bind", HOST, "--dir", tmp, "--save", "",
                "--appendonly", "no", *extra_args]
        admin = ("redis-cli", "-h", HOST, "-p", str(port))

        def ready() -> bool:
            answer = subprocess.run([*admin, "PING"], capture_output=True, text=True, timeout=30).stdout
            return answer.strip() == "PONG"

        # SIGTERM is redis' normal shutdown (nothing to save with persistence off).
        with _running("redis-server", argv, workdir, spawn, signal.SIGTERM, ready) as process:
            yield Server("redis", port, process, workdir, admin)


@contextlib.contextmanager
def postgresql(spawn: Spawn = spawn_plain,
               tls: tuple[pathlib.Path, pathlib.Path] | None = None) -> collections.abc.Iterator[Server]:
    """A fresh cluster run as the `postgres` OS user (the server refuses root), password
    (SCRAM) authentication over TCP, trust over its private unix socket; database `DATABASE`.
    `tls`: (certificate, key) to accept TLS with (clients choose it with sslmode)."""
    _require("psql", "setpriv")
    bindir = postgresql_bin()
    port = servers.free_port(HOST)
    with tempfile.TemporaryDirectory(prefix="podspan-postgresql-") as tmp:
        workdir = pathlib.Path(tmp)
        shutil.chown(workdir, "postgres", "postgres")
        as_postgres = servers.AS_POSTGRES
        pwfile = workdir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        data = workdir / "data"
        subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", USER, "--pwfile", str(pwfile),
                        "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        argv = [*as_postgres, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", tmp,
                "-c", f"listen_addresses={HOST}", "-c", "fsync=off", "-c", "synchronous_commit=off"]
        if tls is not None:
            # The server reads them as `postgres` and refuses a key others may read.
            for source, name, mode in ((tls[0], "server.crt", 0o644), (tls[1], "server.key", 0o600)):
                shutil.copyfile(source, workdir / name)
                shutil.chown(workdir / name, "postgres", "postgres")
                (workdir / name).chmod(mode)
            argv += ["-c", "ssl=on", "-c", f"ssl_cert_file={workdir / 'server.crt'}",
                     "-c", f"ssl_key_file={workdir / 'server.key'}"]

        def admin(database: str) -> tuple[str, ...]:
            return ("psql", "-h", tmp, "-p", str(port), "-U", USER, "-d", database, "-X", "-q", "-v", "ON_ERROR_STOP=1")

        # SIGINT is the "fast" shutdown: SIGTERM would wait for clients to disconnect.
        with _running("postgres", argv, workdir, spawn, signal.SIGINT,
                      lambda: _succeeds([str(bindir / "pg_isready"), "-q", "-h", HOST, "-p", str(port)])) as process:
            Server("postgresql", port, process, workdir, admin("postgres")).admin_run(f"CREATE DATABASE {DATABASE};")
            yield Server("postgresql", port, process, workdir, admin(DATABASE))


@contextlib.contextmanager
def mariadb(spawn: Spawn = spawn_plain) -> collections.abc.Iterator[Server]:
    """mariadbd as root with no config files read; user `USER`@127.0.0.1 (native password) owns
    database `DATABASE`; `admin` is the mariadb client as root over the unix socket."""
    _require("mariadbd", "mariadb-install-db", "mariadb")
    port = servers.free_port(HOST)
    with tempfile.TemporaryDirectory(prefix="podspan-mariadb-") as tmp:
        workdir = pathlib.Path(tmp)
        data, sock = workdir / "data", workdir / "mariadbd.sock"
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                        "--skip-test-db", "--auth-root-authentication-method=socket"],
                       check=True, capture_output=True, timeout=120)
        argv = ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
                f"--bind-address={HOST}", "--user=root", f"--pid-file={workdir / 'mariadbd.pid'}",
                "--skip-log-bin", "--skip-name-resolve", "--innodb-buffer-pool-size=16M"]
        admin = ("mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "--batch")
        with _running("mariadbd", argv, workdir, spawn, signal.SIGTERM,
                      lambda: _succeeds([*admin, "-e", "SELECT 1"])) as process:
            Server("mariadb", port, process, workdir, admin).admin_run(
                f"CREATE DATABASE {DATABASE}; CREATE USER '{USER}'@'{HOST}' IDENTIFIED BY '{PASSWORD}';"
                f"GRANT ALL ON *.* TO '{USER}'@'{HOST}';")
            yield Server("mariadb", port, process, workdir, (*admin, DATABASE))

