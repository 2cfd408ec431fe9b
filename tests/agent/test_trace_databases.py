"""Database spans through the real kernel path: Debian's redis-server, PostgreSQL and MariaDB on
loopback, driven by real clients (redis-cli, psql, pgbench, mariadb, a minimal binary-protocol
MySQL client) running in traced cgroup pods; spans are checked as a real OTLP receiver got them.

Servers run in pods of their own (untraced unless a test selects them), one per module.
"""

from __future__ import annotations

import collections.abc
import contextlib
import pathlib
import sys

import pytest

from podspan_agent import tracer
from podspan_demo import otlp_receiver, pods
from tests.agent import conftest
from tests.support import db_servers

SERVER, CLIENT = 2, 3  # OTLP SpanKind values
STATUS_ERROR = 2

Spans = list[otlp_receiver.ReceivedSpan]
Traced = collections.abc.Callable[[pods.Pod], None]
Starter = collections.abc.Callable[[db_servers.Spawn], contextlib.AbstractContextManager[db_servers.Server]]

@pytest.fixture(scope="module")
def server_pods() -> collections.abc.Iterator[pods.PodRunner]:
    runner = pods.PodRunner()
    yield runner
    runner.stop_all()


@contextlib.contextmanager
def _serving(start: Starter, runner: pods.PodRunner) -> collections.abc.Iterator[db_servers.Server]:
    try:
        with start(db_servers.spawn_in_pod(runner)) as server:
            yield server
    except db_servers.Unavailable as missing:  # raised before the server starts
        pytest.skip(str(missing))


@pytest.fixture(scope="module")
def redis_server(server_pods: pods.PodRunner) -> collections.abc.Iterator[db_servers.Server]:
    with _serving(db_servers.redis, server_pods) as server:
        yield server


USERS = "CREATE TABLE users (id INT PRIMARY KEY, name VARCHAR(64), email VARCHAR(128));" \
        "INSERT INTO users VALUES (1, 'alice', 'a@example.com'), (2, 'bob', 'b@example.com')," \
        " (3, 'carol', 'c@example.com');"


@pytest.fixture(scope="module")
def postgresql_server(server_pods: pods.PodRunner) -> collections.abc.Iterator[db_servers.Server]:
    with _serving(db_servers.postgresql, server_pods) as server:
        server.admin_run(USERS)
        yield server


@pytest.fixture(scope="module")
def mariadb_server(server_pods: pods.PodRunner) -> collections.abc.Iterator[db_servers.Server]:
    with _serving(db_servers.mariadb, server_pods) as server:
        server.admin_run("CREATE DATABASE other;" + USERS)
        yield server


def _pod_of(runner: pods.PodRunner, server: db_servers.Server) -> pods.Pod:
    return next(pod for pod in runner.pods if pod.process is server.process)


def _run_client(pod_runner: pods.PodRunner, traced: Traced, tmp_path: pathlib.Path, name: str,
                argv: list[str], stdin: str = "") -> tuple[pods.Pod, int, str]:
    """Run a client to completion in a traced pod: (pod, exit code, output)."""
    gate, stdin_file, out = (tmp_path / f"{name}.{suffix}" for suffix in ("go", "in", "out"))
    stdin_file.write_text(stdin)
    pod = pod_runner.start(name, conftest.gated(gate, argv, stdin_file), log_path=out)
    traced(pod)
    gate.touch()
    assert pod.process is not None
    code = pod.process.wait(timeout=60)
    return pod, code, out.read_text(errors="replace")


def _spans_of(receiver: otlp_receiver.OtlpReceiver, pid: int, count: int, kind: int = CLIENT) -> Spans:
    """The first `count` spans of one process and kind, in start order (waits for them)."""
    def ours(spans: Spans) -> Spans:
        return [s for s in spans if s.resource.get("process.pid") == pid and s.kind == kind]

    spans = receiver.wait_for(lambda spans: len(ours(spans)) >= count, timeout=30)
    return sorted(ours(spans), key=lambda s: s.start_ns)


def _server_children(receiver: otlp_receiver.OtlpReceiver, client: otlp_receiver.ReceivedSpan,
                     timeout: float = 30) -> Spans:
    """Server spans the agent made children of `client` (both ends of its connection traced);
    none if none came within `timeout`."""
    def children(spans: Spans) -> Spans:
        return [s for s in spans if s.kind == SERVER and s.parent_span_id == client.span_id]

    try:
        return children(receiver.wait_for(lambda spans: bool(children(spans)), timeout=timeout))
    except TimeoutError:
        return []


def _assert_client_spans(spans: Spans, server: db_servers.Server, system: str) -> None:
    for span in spans:
        assert span.kind == CLIENT
        assert span.attributes["db.system.name"] == system
        assert span.attributes["server.address"] == "127.0.0.1"
        assert span.attributes["server.port"] == server.port
        assert span.attributes["network.peer.port"] == server.port
        assert span.end_ns >= span.start_ns > 0


def _errors(spans: Spans) -> list[tuple[str, object]]:
    return [(s.attributes.get("db.operation.name"), s.attributes.get("db.response.status_code"))
            for s in spans if s.status_code == STATUS_ERROR]


# ---------------------------------------------------------------- Redis


def _redis_cli(server: db_servers.Server, *args: str) -> list[str]:
    return ["redis-cli", "-h", server.host, "-p", str(server.port), *args]


def test_redis_commands_and_error_replies(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    redis_server: db_servers.Server, tmp_path: pathlib.Path,
) -> None:
    # The last reply has no later event on its connection (redis-cli exits without close()): the
    # tracer's idle flush or the process's EXIT ends it, reading the run's end from the kernel.
    commands = "SET user:1 alice\nGET user:1\nLPUSH user:1 x\nNOSUCHCOMMAND a\n"
    pod, code, out = _run_client(pod_runner, traced, tmp_path, "redis-cli", _redis_cli(redis_server), commands)
    assert code == 0 and "WRONGTYPE" in out, out

    # redis-cli asks for COMMAND DOCS when it starts.
    spans = _spans_of(receiver, pod.pid, 5)
    _assert_client_spans(spans, redis_server, "redis")
    assert [s.name for s in spans] == ["COMMAND DOCS", "SET", "GET", "LPUSH", "NOSUCHCOMMAND"]
    assert [s.attributes["db.query.text"] for s in spans[1:]] == ["SET ? ?", "GET ?", "LPUSH ? ?", "NOSUCHCOMMAND ?"]
    assert _errors(spans) == [("LPUSH", "WRONGTYPE"), ("NOSUCHCOMMAND", "ERR")]
    assert spans[3].status_message.startswith("WRONGTYPE Operation against a key holding the wrong kind")
    assert all(s.trace_id != 0 for s in spans)


def test_redis_pipeline(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    redis_server: db_servers.Server, tmp_path: pathlib.Path,
) -> None:
    # `redis-cli --pipe` writes all commands in one write() before reading any reply. They fit in the
    # 512-byte capture: pipelined commands beyond it could not be reported.
    commands = [f"SET k{i} value-{i}" for i in range(5)] + [f"GET k{i}" for i in range(5)] + ["INCR k1"]
    pod, code, out = _run_client(pod_runner, traced, tmp_path, "redis-pipe", _redis_cli(redis_server, "--pipe"),
                                 "".join(_resp(*line.split()) for line in commands))
    assert code == 1 and "errors: 1, replies: 11" in out, out  # exit code 1: a reply was an error

    spans = _spans_of(receiver, pod.pid, 12)
    _assert_client_spans(spans, redis_server, "redis")
    # redis-cli then sends an ECHO of its own in a second write() of the same run, before reading:
    # the kernel copies that write too (a CONTINUATION of the run, whose capture was not full).
    assert [s.attributes["db.operation.name"] for s in spans] == ["SET"] * 5 + ["GET"] * 5 + ["INCR", "ECHO"]
    assert spans[11].attributes["db.query.text"] == "ECHO ?"
    assert _errors(spans) == [("INCR", "ERR")]
    assert spans[10].status_message == "ERR value is not an integer or out of range"
    # One run carried the commands and one the replies: the spans share their start and end.
    assert len({(s.start_ns, s.end_ns) for s in spans}) == 1


def _resp(*args: str) -> str:
    return f"*{len(args)}\r\n" + "".join(f"${len(arg)}\r\n{arg}\r\n" for arg in args)


def test_redis_server_and_client_spans_are_linked(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    redis_server: db_servers.Server, server_pods: pods.PodRunner, tmp_path: pathlib.Path,
) -> None:
    server_pod = _pod_of(server_pods, redis_server)
    traced(server_pod)
    pod, code, _ = _run_client(pod_runner, traced, tmp_path, "redis-set",
                               _redis_cli(redis_server, "SET", "linked", "yes"))
    assert code == 0

    (client,) = _spans_of(receiver, pod.pid, 1)
    # Both ends of one connection seen by one agent: the server span is the client span's child.
    children = _server_children(receiver, client)
    assert len(children) == 1, children
    server = children[0]
    assert server.resource["process.pid"] == server_pod.pid
    assert client.name == server.name == "SET"
    assert server.attributes["db.query.text"] == "SET ? ?"
    assert server.attributes["server.port"] == redis_server.port
    assert server.attributes["client.address"] == "127.0.0.1"
    assert server.trace_id == client.trace_id
    assert client.start_ns <= server.start_ns <= server.end_ns <= client.end_ns


# ---------------------------------------------------------------- PostgreSQL


def _pg_env(*argv: str) -> list[str]:
    return ["env", f"PGPASSWORD={db_servers.PASSWORD}", "PGSSLMODE=disable", *argv]


def _psql(server: db_servers.Server) -> list[str]:
    return _pg_env("psql", "-h", server.host, "-p", str(server.port), "-U", db_servers.USER,
                   "-d", db_servers.DATABASE, "-X", "-q")


def test_postgresql_simple_queries(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    postgresql_server: db_servers.Server, tmp_path: pathlib.Path,
) -> None:
    script = ("CREATE TABLE notes (id int, body text);\n"
              "INSERT INTO notes VALUES (1, 'secret one'), (2, 'secret two');\n"
              "SELECT id, name FROM users WHERE name = 'alice' AND id > 0;\n"
              "SELECT * FROM nosuchtable;\n")
    pod, code, out = _run_client(pod_runner, traced, tmp_path, "psql", _psql(postgresql_server), script)
    assert code == 0 and 'relation "nosuchtable" does not exist' in out, out

    spans = _spans_of(receiver, pod.pid, 4)
    _assert_client_spans(spans, postgresql_server, "postgresql")
    assert [s.name for s in spans] == ["CREATE notes", "INSERT notes", "SELECT users", "SELECT nosuchtable"]
    assert [s.attributes["db.query.text"] for s in spans] == [
        "CREATE TABLE notes (id int, body text);",
        "INSERT INTO notes VALUES (?, ?);",  # literals gone, VALUES rows collapsed
        "SELECT id, name FROM users WHERE name = ? AND id > ?;",
        "SELECT * FROM nosuchtable;",
    ]
    assert {s.attributes["db.namespace"] for s in spans} == {db_servers.DATABASE}
    assert spans[2].attributes["db.response.returned_rows"] == 1
    assert _errors(spans) == [("SELECT", "42P01")]
    assert spans[3].status_message == 'relation "?" does not exist'  # quoted names and values hidden


def _pgbench(server: db_servers.Server, tmp_path: pathlib.Path, mode: str, transactions: int,
             script: str) -> list[str]:
    script_file = tmp_path / f"pgbench-{mode}.sql"
    script_file.write_text(script)
    return _pg_env("pgbench", "-h", server.host, "-p", str(server.port), "-U", db_servers.USER, "-n",
                   "-M", mode, "-t", str(transactions), "-f", str(script_file), db_servers.DATABASE)


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_postgresql_extended_protocol(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    postgresql_server: db_servers.Server, tmp_path: pathlib.Path, mode: str,
) -> None:
    # extended: Parse/Bind/Execute/Sync of unnamed statements for every query; prepared: named
    # statements parsed once, so the second transaction's Executes name statements parsed earlier.
    script = ("\\set uid 2\n"
              "SELECT name, email FROM users WHERE id = :uid;\n"
              "UPDATE users SET email = 'b2@example.com' WHERE id = :uid;\n")
    argv = _pgbench(postgresql_server, tmp_path, mode, 2, script)
    pod, code, out = _run_client(pod_runner, traced, tmp_path, f"pgbench-{mode}", argv)
    assert code == 0, out

    spans = _spans_of(receiver, pod.pid, 4)
    _assert_client_spans(spans, postgresql_server, "postgresql")
    assert [s.name for s in spans] == ["SELECT users", "UPDATE users"] * 2
    assert [s.attributes["db.query.text"] for s in spans[:2]] == [
        "SELECT name, email FROM users WHERE id = $1;",
        "UPDATE users SET email = ? WHERE id = $1;",
    ]
    assert spans[2].attributes == spans[0].attributes
    assert spans[0].attributes["db.response.returned_rows"] == 1
    # Bind parameters stay private by default (CaptureSettings.statement_parameters).
    assert not [key for s in spans for key in s.attributes if key.startswith("db.query.parameter")]
    assert not _errors(spans)


def test_postgresql_extended_protocol_error(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    postgresql_server: db_servers.Server, tmp_path: pathlib.Path,
) -> None:
    script = "SELECT name FROM users WHERE id = 'not-a-number';\n"
    argv = _pgbench(postgresql_server, tmp_path, "extended", 1, script)
    pod, code, out = _run_client(pod_runner, traced, tmp_path, "pgbench-error", argv)
    assert code != 0 and "invalid input syntax for type integer" in out, out

    (span,) = _spans_of(receiver, pod.pid, 1)
    _assert_client_spans([span], postgresql_server, "postgresql")
    assert span.attributes["db.query.text"] == "SELECT name FROM users WHERE id = ?;"
    assert span.attributes["db.response.status_code"] == span.attributes["error.type"] == "22P02"
    assert span.status_code == STATUS_ERROR
    assert span.status_message == 'invalid input syntax for type integer: "?"'  # the value is not exported


# ---------------------------------------------------------------- MariaDB


def _mariadb(server: db_servers.Server) -> list[str]:
    return ["mariadb", "--no-defaults", "-h", server.host, "-P", str(server.port), f"-u{db_servers.USER}",
            f"-p{db_servers.PASSWORD}", "--ssl=0", "--force", db_servers.DATABASE]


def test_mariadb_cli_queries(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    mariadb_server: db_servers.Server, tmp_path: pathlib.Path,
) -> None:
    script = ("SELECT id, name FROM users WHERE name = 'alice';\n"
              "INSERT INTO users VALUES (4, \"dave\", 'd@example.com');\n"
              "SELECT * FROM nosuchtable;\n"
              "use other\n"
              "SELECT DATABASE();\n")
    pod, code, out = _run_client(pod_runner, traced, tmp_path, "mariadb", _mariadb(mariadb_server), script)
    assert code == 0 and "ERROR 1146" in out, out  # --force: the script goes on past the error

    spans = _spans_of(receiver, pod.pid, 6)
    _assert_client_spans(spans, mariadb_server, "mariadb")
    # The CLI asks for the current database when it runs `use`.
    assert [s.name for s in spans] == ["SELECT users", "INSERT users", "SELECT nosuchtable", "SELECT shop",
                                       "USE other", "SELECT other"]
    assert [s.attributes.get("db.query.text") for s in spans[:3]] == [
        "SELECT id, name FROM users WHERE name = ?",
        "INSERT INTO users VALUES (?, ?, ?)",  # MySQL's "..." is a string literal
        "SELECT * FROM nosuchtable",
    ]
    assert [s.attributes["db.namespace"] for s in spans] == ["shop"] * 4 + ["other"] * 2
    assert spans[0].attributes["db.response.returned_rows"] == 1
    assert _errors(spans) == [("SELECT", "1146")]
    assert spans[2].status_message == "Table '?' doesn't exist"  # quoted names and values hidden


def test_mariadb_prepared_statements(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    mariadb_server: db_servers.Server, tmp_path: pathlib.Path,
) -> None:
    argv = [sys.executable, "-m", "tests.support.mysql_client", "--port", str(mariadb_server.port)]
    pod, code, out = _run_client(pod_runner, traced, tmp_path, "mysql-client", argv)
    assert code == 0, out

    spans = _spans_of(receiver, pod.pid, 10)
    _assert_client_spans(spans, mariadb_server, "mariadb")
    select = "SELECT id, name, email FROM users WHERE id = ?"
    # The client writes the COM_STMT_EXECUTE of the closed statement right after COM_STMT_CLOSE
    # (which has no reply), in a second write() of the same run: the kernel copies it as a
    # CONTINUATION. The parser forgot the statement's text with its close, so the span has none.
    assert [s.attributes.get("db.query.text") for s in spans] == [
        "SELECT id, name FROM users WHERE id = ?", select, select, select,
        "UPDATE users SET name = ? WHERE id = ?",
        "SELECT * FROM nosuchtable WHERE id = ?",  # the failed COM_STMT_PREPARE
        None,  # COM_STMT_EXECUTE of the closed statement
        None, None, "SELECT DATABASE()",  # COM_PING, COM_INIT_DB
    ]
    assert [s.attributes.get("db.operation.name") for s in spans[6:9]] == [None, "PING", "USE"]
    assert all(s.attributes["db.response.returned_rows"] == 1 for s in spans[1:4])
    assert _errors(spans) == [("SELECT", "1146"), (None, "1243")]
    assert spans[5].status_message == "Table '?' doesn't exist"
    assert spans[6].status_message.startswith("Unknown prepared statement handler")
    assert [s.attributes["db.namespace"] for s in spans] == ["shop"] * 8 + ["other"] * 2


# ---------------------------------------------------------------- server side of SQL servers


@pytest.mark.parametrize("system", [
    # mariadbd reads each packet's 4-byte header and then its payload in two recv() calls: the
    # payload reaches the parser as a CONTINUATION of the run.
    "mariadb",
    # The postmaster accepts, forks a backend that serves the socket, and closes its copy: the kernel
    # opens the connection again for the backend, on the same fd.
    "postgresql",
])
def test_sql_server_spans(
    agent: tracer.Tracer, receiver: otlp_receiver.OtlpReceiver, pod_runner: pods.PodRunner, traced: Traced,
    server_pods: pods.PodRunner, tmp_path: pathlib.Path, request: pytest.FixtureRequest, system: str,
) -> None:
    server = request.getfixturevalue(f"{system}_server")
    traced(_pod_of(server_pods, server))
    client_argv = _mariadb(server) if system == "mariadb" else _psql(server)
    pod, code, out = _run_client(pod_runner, traced, tmp_path, f"{system}-linked", client_argv,
                                 "SELECT email FROM users WHERE id = 3;\n")
    assert code == 0, out

    (client,) = _spans_of(receiver, pod.pid, 1)
    # The client span is in: its server-side child would be made at the same time (short wait).
    children = _server_children(receiver, client, timeout=5)
    assert len(children) == 1, "no server span"
    assert children[0].name == client.name == "SELECT users"
    assert children[0].attributes["server.port"] == server.port
    # mariadbd serves in its own process, PostgreSQL in a backend the postmaster forked.
    assert (children[0].resource["process.pid"] == server.process.pid) == (system == "mariadb")
