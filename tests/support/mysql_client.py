"""A minimal MySQL/MariaDB client for the binary (prepared statement) protocol, which the mariadb
CLI never speaks; used for fixture captures and, as a traced process, by kernel tests.

`python -m tests.support.mysql_client --port N` runs `prepared_session` against 127.0.0.1:N as
user `app`/`secret` on database `shop`, whose table `users (id INT, name, email)` must exist.
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import struct

_CLIENT_CONNECT_WITH_DB, _CLIENT_PROTOCOL_41, _CLIENT_SECURE_CONNECTION = 0x8, 0x200, 0x8000
_CLIENT_MULTI_STATEMENTS, _CLIENT_MULTI_RESULTS, _CLIENT_PLUGIN_AUTH = 0x10000, 0x20000, 0x80000
_UTF8_GENERAL_CI = 33


class Client:
    """One connection, native-password authentication, no TLS; responses are read and discarded.

    Reads are buffered, as in real drivers (PyMySQL, libmariadb): one recv() takes whatever has
    arrived, not a 4-byte packet header and then its payload.
    """

    def __init__(self, port: int, user: str, password: str, database: str, host: str = "127.0.0.1") -> None:
        self._sock = socket.create_connection((host, port), timeout=30)
        self._reader = self._sock.makefile("rb")
        _, greeting = self._read()
        # Greeting: version string, thread id, 8 scramble bytes, ..., 10 reserved, the other 12.
        pos = greeting.index(b"\x00", 1) + 1 + 4
        salt = greeting[pos : pos + 8]
        pos += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
        salt += greeting[pos : pos + 12]
        stage1 = hashlib.sha1(password.encode()).digest()
        mask = hashlib.sha1(salt + hashlib.sha1(stage1).digest()).digest()
        token = bytes(a ^ b for a, b in zip(stage1, mask, strict=True))
        caps = (_CLIENT_PROTOCOL_41 | _CLIENT_SECURE_CONNECTION | _CLIENT_CONNECT_WITH_DB | _CLIENT_PLUGIN_AUTH
                | _CLIENT_MULTI_STATEMENTS | _CLIENT_MULTI_RESULTS)
        response = (struct.pack("<IIB", caps, 1 << 24, _UTF8_GENERAL_CI) + b"\x00" * 23
                    + user.encode() + b"\x00" + bytes([len(token)]) + token
                    + database.encode() + b"\x00" + b"mysql_native_password\x00")
        self._send(response, seq=1)
        _, answer = self._read()
        if answer[:1] != b"\x00":
            raise ConnectionError(f"authentication failed: {answer[3:]!r}")

    def _send(self, payload: bytes, seq: int = 0) -> None:
        self._sock.sendall(struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload)

    def _read(self) -> tuple[int, bytes]:
        header = self._reader.read(4)
        if len(header) < 4:
            raise ConnectionError("server closed the connection")
        return header[3], self._reader.read(int.from_bytes(header[:3], "little"))

    def _response(self) -> bytes:
        """Read one whole response (OK, ERR, or a result set up to its closing EOF); its first packet."""
        _, first = self._read()
        if first[:1] in (b"\x00", b"\xff"):
            return first
        eofs = 0
        while eofs < 2:  # after the column definitions, then after the rows
            _, payload = self._read()
            if payload[:1] == b"\xfe" and len(payload) < 9:
                eofs += 1
            elif payload[:1] == b"\xff":
                break
        return first

    def command(self, payload: bytes) -> bytes:
        self._send(payload)
        return self._response()

    def query(self, text: str) -> bytes:
        return self.command(b"\x03" + text.encode())

    def prepare(self, text: str) -> int:
        """COM_STMT_PREPARE; the statement id, or -1 if the server refused it."""
        self._send(b"\x16" + text.encode())
        _, ok = self._read()
        if ok[:1] == b"\xff":
            return -1
        stmt_id, columns, params = struct.unpack("<IHH", ok[1:9])
        # Parameter and column definitions, each list closed by an EOF packet.
        for _ in range(params + (1 if params else 0) + columns + (1 if columns else 0)):
            self._read()
        return int(stmt_id)

    def execute(self, stmt_id: int, *values: int) -> bytes:
        """COM_STMT_EXECUTE with BIGINT parameters, no cursor, one iteration."""
        body = struct.pack("<IBI", stmt_id, 0, 1)
        if values:
            body += b"\x00" * ((len(values) + 7) // 8) + b"\x01" + b"\x08\x00" * len(values)
            body += b"".join(struct.pack("<q", value) for value in values)
        return self.command(b"\x17" + body)

    def close_statement(self, stmt_id: int) -> None:
        self._send(b"\x19" + struct.pack("<I", stmt_id))  # COM_STMT_CLOSE: the server does not answer

    def quit(self) -> None:
        self._send(b"\x01")  # COM_QUIT
        self._reader.close()
        self._sock.close()


def prepared_session(client: Client) -> None:
    """Text and prepared queries, a failing prepare, executing a closed statement, ping, change of database."""
    client.query("SELECT id, name FROM users WHERE id = 1")
    select = client.prepare("SELECT id, name, email FROM users WHERE id = ?")
    update = client.prepare("UPDATE users SET name = 'prepared' WHERE id = ?")
    for uid in (1, 2, 3):
        client.execute(select, uid)
    client.execute(update, 2)
    client.prepare("SELECT * FROM nosuchtable WHERE id = ?")
    client.close_statement(select)
    client.execute(select, 1)  # unknown statement now: ERR
    client.command(b"\x0e")  # COM_PING
    client.command(b"\x02other")  # COM_INIT_DB
    client.query("SELECT DATABASE()")
    client.quit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="app")
    parser.add_argument("--password", default="secret")
    parser.add_argument("--database", default="shop")
    args = parser.parse_args(argv)
    prepared_session(Client(args.port, args.user, args.password, args.database, args.host))


if __name__ == "__main__":
    main()
