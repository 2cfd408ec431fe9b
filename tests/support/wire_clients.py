"""Real Kafka and MongoDB client sessions, for kernel tests and for recording parser fixtures.

    python -m tests.support.wire_clients [--gate FIFO] kafka HOST:PORT
    python -m tests.support.wire_clients [--gate FIFO] mongodb HOST PORT

They talk to tests/support/wire_responders.py (no broker or mongod comes from the package
registries). With `--gate`, the session waits until a writer opens and closes that FIFO, so a
test can select the process for tracing before its first connection; it exits 0 once every
exchange is done.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import struct

import bson
import kafka
import kafka.errors
import pymongo
import pymongo.errors

PRODUCER_ID, CONSUMER_ID = "podspan-producer", "podspan-consumer"
MONGO_APP = "podspan-test"
UNKNOWN_COMMAND = "noSuchCommand"


def kafka_session(bootstrap: str) -> None:
    """Two produced records, one rejected by the broker, then one consumer poll of `orders`."""
    producer = kafka.KafkaProducer(bootstrap_servers=bootstrap, client_id=PRODUCER_ID, retries=0)
    producer.send("orders", b"order-1").get(timeout=10)
    producer.send("orders", b"order-2").get(timeout=10)
    with contextlib.suppress(kafka.errors.MessageSizeTooLargeError):
        producer.send("rejected", b"too big").get(timeout=10)
    producer.close()
    consumer = kafka.KafkaConsumer(bootstrap_servers=bootstrap, client_id=CONSUMER_ID, fetch_max_wait_ms=50)
    partition = kafka.TopicPartition("orders", 0)
    consumer.assign([partition])
    consumer.seek(partition, 0)
    consumer.poll(timeout_ms=300)
    consumer.close()


def mongodb_session(host: str, port: int) -> None:
    """ping, inserts (one a duplicate key: writeErrors), finds (one refused: ok 0), delete,
    an unknown command (ok 0), then a legacy OP_QUERY isMaster on its own connection."""
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        host, port, directConnection=True, appname=MONGO_APP, serverSelectionTimeoutMS=5000
    )
    shop = client["shop"]
    shop.command("ping")
    shop.users.insert_one({"_id": 1, "name": "alice"})
    with contextlib.suppress(pymongo.errors.DuplicateKeyError):
        shop.users.insert_one({"_id": 0, "name": "duplicate"})
    list(shop.users.find({"name": "alice"}))
    with contextlib.suppress(pymongo.errors.OperationFailure):
        list(shop.forbidden.find({}))
    shop.users.delete_one({"_id": 1})
    with contextlib.suppress(pymongo.errors.OperationFailure):
        shop.command(UNKNOWN_COMMAND)
    client.close()
    legacy_is_master(host, port)


def legacy_is_master(host: str, port: int) -> None:
    """OP_QUERY isMaster on admin.$cmd, as drivers before MongoDB 3.6 opened connections
    (pymongo 4 sends its handshake as OP_MSG)."""
    query = bson.encode({"isMaster": 1, "client": {"application": {"name": "legacy"}}})
    body = struct.pack("<i", 0) + b"admin.$cmd\0" + struct.pack("<ii", 0, -1) + query
    with socket.create_connection((host, port)) as sock:
        sock.sendall(struct.pack("<iiii", 16 + len(body), 7, 0, 2004) + body)
        (length,) = struct.unpack("<i", sock.recv(4, socket.MSG_WAITALL))
        sock.recv(length - 4, socket.MSG_WAITALL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gate", help="a FIFO to read to its end before the session starts")
    commands = parser.add_subparsers(dest="system", required=True)
    commands.add_parser("kafka").add_argument("bootstrap")
    mongo = commands.add_parser("mongodb")
    mongo.add_argument("host")
    mongo.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.gate:
        with open(args.gate, "rb") as gate:
            gate.read()
    if args.system == "kafka":
        kafka_session(args.bootstrap)
    else:
        mongodb_session(args.host, args.port)


if __name__ == "__main__":
    main()
