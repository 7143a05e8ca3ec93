#!/usr/bin/env python3
"""Read a gateway topic with a stock Kafka client and verify every record.

This is what a central data team can run without any of the gateway's code:
it needs only the PyPI packages ``confluent-kafka`` and ``cryptography``.

Each record's value is the exact byte string the gateway signed; the
``icu-signature`` header holds the ed25519 signature over those bytes, in
standard base64.  The public key is the gateway's PEM (SubjectPublicKeyInfo)
key, e.g. the ``gateway.pub`` written by ``icu-gateway keygen``.

    kafka_consume.py --brokers 127.0.0.1:9092 --topic icu.observations \\
        --public-key gateway.pub [--max N] [--timeout S]

The topic is read from the beginning with a fresh consumer group.  Reading
stops after --max records, or (without --max) once every partition has been
read to its end, or when --timeout seconds have passed.  One line is printed
per record, then a summary "N records, N signatures ok, N bad".

Exit status: 0 when every record verified (and parsed as JSON); 1 when any
signature was bad or missing, or a value was not JSON; 2 on a usage or
connection problem, or when --max records did not arrive within --timeout.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", required=True, help="bootstrap servers, host:port[,host:port]")
    p.add_argument("--topic", required=True, help="topic to read, e.g. icu.observations")
    p.add_argument("--public-key", required=True, help="gateway ed25519 public key (PEM, SPKI)")
    p.add_argument("--max", type=int, default=None, help="stop after this many records")
    p.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds (default 30)")
    return p.parse_args(argv)


def load_key(path: str) -> Ed25519PublicKey:
    try:
        with open(path, "rb") as f:
            key = load_pem_public_key(f.read())
    except (OSError, ValueError) as e:
        print(f"kafka_consume: cannot load public key {path}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    if not isinstance(key, Ed25519PublicKey):
        print(f"kafka_consume: {path}: not an ed25519 public key", file=sys.stderr)
        raise SystemExit(2)
    return key


def header_map(msg) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for k, v in msg.headers() or []:
        out[k] = v if v is not None else b""
    return out


def text(v: bytes | None) -> str:
    if v is None:
        return "-"
    return v.decode("utf-8", errors="replace")


def verify(key: Ed25519PublicKey, headers: dict[str, bytes], value: bytes) -> tuple[bool, str]:
    alg = headers.get("icu-signature-alg")
    if alg is not None and alg.decode("utf-8", "replace").lower() != "ed25519":
        return False, f"unsupported alg {text(alg)}"
    sig_b64 = headers.get("icu-signature")
    if sig_b64 is None:
        return False, "no icu-signature header"
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        return False, "signature is not base64"
    if len(sig) != 64:
        return False, f"signature is {len(sig)} bytes, not 64"
    try:
        key.verify(sig, value)
    except InvalidSignature:
        return False, "signature does not match"
    return True, ""


def describe_value(value: bytes) -> tuple[bool, str]:
    try:
        doc = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return False, f"value is not JSON ({e})"
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        return True, f"entries={len(doc.get('entry') or [])}"
    if isinstance(doc, dict) and "resourceType" in doc:
        return True, f"entries=1 ({doc['resourceType']})"
    return True, "entries=?"


def partitions_of(consumer: Consumer, topic: str, deadline: float) -> list[int]:
    last_err = "no metadata"
    while time.monotonic() < deadline:
        try:
            md = consumer.list_topics(topic, timeout=max(0.5, min(5.0, deadline - time.monotonic())))
        except KafkaException as e:
            last_err = str(e)
            time.sleep(0.2)
            continue
        t = md.topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return sorted(t.partitions)
        last_err = str(t.error) if t is not None and t.error else "topic has no partitions"
        time.sleep(0.2)
    print(f"kafka_consume: topic {topic!r} not available: {last_err}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    key = load_key(args.public_key)
    deadline = time.monotonic() + args.timeout

    consumer = Consumer(
        {
            "bootstrap.servers": args.brokers,
            "group.id": f"icu-verify-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    total = ok = bad = invalid = 0
    try:
        parts = partitions_of(consumer, args.topic, deadline)
        # Explicit assignment from offset 0 of every partition: reads the whole
        # topic without depending on a group rebalance.
        consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in parts])
        at_eof: set[int] = set()
        while time.monotonic() < deadline:
            if args.max is not None and total >= args.max:
                break
            if args.max is None and at_eof.issuperset(parts):
                break
            msg = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                    continue
                if err.fatal():
                    print(f"kafka_consume: fatal: {err}", file=sys.stderr)
                    return 2
                print(f"kafka_consume: {err}", file=sys.stderr)
                continue
            at_eof.discard(msg.partition())
            total += 1
            value = msg.value() or b""
            h = header_map(msg)
            good, why = verify(key, h, value)
            if good:
                ok += 1
            else:
                bad += 1
            parsed, what = describe_value(value)
            if not parsed:
                invalid += 1
            k = msg.key()
            line = (
                f"partition={msg.partition()} offset={msg.offset()} key={text(k)}"
                f" device={text(h.get('icu-device-id'))}"
                f" seq={text(h.get('icu-seq-first'))}..{text(h.get('icu-seq-last'))}"
                f" signature={'ok' if good else 'BAD'} {what}"
            )
            if not good:
                line += f" ({why})"
            print(line, flush=True)
    finally:
        consumer.close()

    print(f"{total} records, {ok} signatures ok, {bad} bad", flush=True)
    if invalid:
        print(f"kafka_consume: {invalid} values were not JSON", file=sys.stderr)
    if bad or invalid:
        return 1
    if args.max is not None and total < args.max:
        print(
            f"kafka_consume: timed out after {args.timeout}s with {total} of {args.max} records",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
