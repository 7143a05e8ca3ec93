#!/usr/bin/env python3
"""Read a gateway topic with a stock Kafka client and verify every record.

This is what a central data team can run without any of the gateway's code:
it needs only the PyPI packages ``confluent-kafka`` and ``cryptography``.

The ``icu-signature`` header holds an ed25519 signature in standard base64,
over what ``icu-signature-alg`` names.  ``ed25519-envelope-v1`` (the default):
the record's envelope, UTF-8 lines each ending in LF: ``icu-envelope-v1``,
``key=<record key>``, then for each covered header in this order
(icu-stream, content-type, icu-schema-version, icu-gateway-id, icu-device-id, icu-seq-first,
icu-seq-last, icu-bed, icu-patient-id, icu-key-id, ce_specversion, ce_id,
ce_source, ce_type, ce_time) ``name=value`` when the
record has it or ``name`` alone when not, then ``value-sha256=<hex>``; in
the key and values ``%``, LF and CR are written ``%25``, ``%0A``, ``%0D``.
``ed25519`` (or no such header, the older scheme): the exact value bytes.
The public key is the gateway's PEM (SubjectPublicKeyInfo) key, e.g. the
``gateway.pub`` written by ``icu-gateway keygen``.

    kafka_consume.py --brokers 127.0.0.1:9092 --topic icu.observations \\
        (--public-key gateway.pub | --keys DIR) [--max N] [--timeout S] [--audit]

With --keys, DIR holds the public keys (``*.pub``) of every gateway on the
topic and their rotated keys; each record is verified with the key its
``icu-key-id`` header names (the first 16 hex digits of SHA-256 of the raw
32-byte key); a record naming a key that is not there is BAD ("unknown key id").

With --audit (for ``icu.audit``), every value must be a FHIR AuditEvent of one
audit-trail entry, and each entry is checked as well: its own ed25519
signature over its 32-byte hash (the ``hash`` and ``signature`` details of
the ``urn:icu-gateway:<gateway>:audit`` entity, base64), with the same public
key; its seq equal to the record's ``icu-seq-first``; its ``prev-hash`` equal
to the previous entry's hash (32 zero bytes for seq 1); and the seqs arriving
as 1, 2, 3... in order, without a gap.  A summary line "audit: N entries, seq
A..B, N entry signatures ok, N bad, N chain breaks, N gaps, N out of order, N
identical re-deliveries" follows (an identical re-delivery, at-least-once, is
not a failure).

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
import hashlib
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
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--public-key", help="gateway ed25519 public key (PEM, SPKI)")
    who.add_argument(
        "--keys",
        help="a directory of gateway public keys (*.pub): each record is verified with the key"
        " its icu-key-id names (many gateways, rotated keys); a record naming a key not there is BAD",
    )
    p.add_argument("--max", type=int, default=None, help="stop after this many records")
    p.add_argument("--timeout", type=float, default=30.0, help="overall deadline in seconds (default 30)")
    p.add_argument("--audit", action="store_true", help="also verify each audit-trail entry (icu.audit)")
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


def key_id(key: Ed25519PublicKey) -> str:
    """The gateway's key id: the first 16 hex digits of SHA-256 of the raw public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def load_keys(directory: str) -> dict[str, Ed25519PublicKey]:
    import os

    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".pub"))
    except OSError as e:
        print(f"kafka_consume: cannot read key directory {directory}: {e}", file=sys.stderr)
        raise SystemExit(2) from e
    keys = {}
    for name in names:
        key = load_key(os.path.join(directory, name))
        keys[key_id(key)] = key
    if not keys:
        print(f"kafka_consume: no *.pub key in {directory}", file=sys.stderr)
        raise SystemExit(2)
    return keys


def header_map(msg) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for k, v in msg.headers() or []:
        out[k] = v if v is not None else b""
    return out


def text(v: bytes | None) -> str:
    if v is None:
        return "-"
    return v.decode("utf-8", errors="replace")


COVERED = (
    "icu-stream",
    "content-type",
    "icu-schema-version",
    "icu-gateway-id",
    "icu-device-id",
    "icu-seq-first",
    "icu-seq-last",
    "icu-bed",
    "icu-patient-id",
    "icu-key-id",
    "ce_specversion",
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
)


def envelope(record_key: bytes | None, headers: dict[str, bytes], value: bytes) -> bytes:
    """The bytes an ``ed25519-envelope-v1`` signature covers (see the module text)."""
    lines = ["icu-envelope-v1"]

    def field(name: str, v: bytes | None) -> None:
        if v is None:
            lines.append(name)
        else:
            s = v.decode("utf-8", "replace")
            s = s.replace("%", "%25").replace("\n", "%0A").replace("\r", "%0D")
            lines.append(f"{name}={s}")

    field("key", record_key)
    for name in COVERED:
        field(name, headers.get(name))
    lines.append("value-sha256=" + hashlib.sha256(value).hexdigest())
    return ("\n".join(lines) + "\n").encode("utf-8")


def verify(
    key: Ed25519PublicKey, headers: dict[str, bytes], value: bytes, record_key: bytes | None = None
) -> tuple[bool, str]:
    alg = headers.get("icu-signature-alg")
    alg_name = "ed25519" if alg is None else alg.decode("utf-8", "replace").strip().lower()
    if alg_name == "ed25519":
        signed = value
    elif alg_name == "ed25519-envelope-v1":
        signed = envelope(record_key, headers, value)
    else:
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
        key.verify(sig, signed)
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


class AuditCheck:
    """The entries of icu.audit as they arrive: signature over the hash, chain, order."""

    def __init__(self) -> None:
        self.entries = self.ok = self.bad = self.breaks = self.gaps = self.disorder = self.dups = 0
        self.hashes: dict[int, bytes] = {}
        self.first: int | None = None
        self.last: int | None = None
        self.last_hash: bytes | None = None

    @staticmethod
    def chain_entity(doc: dict) -> dict[str, str]:
        for entity in doc.get("entity") or []:
            system = ((entity.get("what") or {}).get("identifier") or {}).get("system") or ""
            if system.startswith("urn:icu-gateway:") and system.endswith(":audit"):
                out = {}
                for d in entity.get("detail") or []:
                    out[d.get("type")] = d.get("valueString", d.get("valueBase64Binary"))
                return out
        raise ValueError("no audit-trail entity")

    def check(self, value: bytes, header_seq: str, key: Ed25519PublicKey | None) -> str:
        """One record's entry; returns what to print."""
        self.entries += 1
        try:
            doc = json.loads(value)
            if doc.get("resourceType") != "AuditEvent":
                raise ValueError(f"resourceType {doc.get('resourceType')!r}")
            d = self.chain_entity(doc)
            seq = int(d["seq"])
            prev = base64.b64decode(d["prev-hash"], validate=True)
            digest = base64.b64decode(d["hash"], validate=True)
            sig = base64.b64decode(d["signature"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error) as e:
            self.bad += 1
            return f"audit entry unreadable ({e})"
        problems = []
        try:
            if key is None:
                raise InvalidSignature("no key for this record")
            key.verify(sig, digest)
            self.ok += 1
        except InvalidSignature:
            self.bad += 1
            problems.append("entry signature BAD")
        if str(seq) != header_seq:
            self.bad += 1
            problems.append(f"entry seq {seq} under record seq {header_seq}")
        expected_prev = bytes(32) if seq == 1 else self.last_hash
        if self.last is None and seq != 1:
            self.gaps += 1
            problems.append(f"first entry is seq {seq}, not 1")
        elif self.last is not None and seq <= self.last and self.hashes.get(seq) == digest:
            # At-least-once: an identical re-delivery of an entry already seen.
            self.dups += 1
            return f"audit seq={seq} duplicate of an entry already seen (identical)"
        elif self.last is not None and seq <= self.last:
            self.disorder += 1
            problems.append(f"seq {seq} after {self.last}")
        elif self.last is not None and seq != self.last + 1:
            self.gaps += 1
            problems.append(f"gap: seqs {self.last + 1}..{seq - 1} missing")
        elif expected_prev is not None and prev != expected_prev:
            self.breaks += 1
            problems.append("prev-hash is not the previous entry's hash")
        if self.first is None:
            self.first = seq
        self.last = seq if self.last is None else max(self.last, seq)
        self.last_hash = digest
        self.hashes[seq] = digest
        action = next(
            (c.get("code") for c in doc.get("subtype") or [] if c.get("system") == "urn:icu-gateway:audit-action"),
            "?",
        )
        what = f"audit seq={seq} action={action} entry-signature={'ok' if not problems else 'BAD'}"
        return what + (f" ({'; '.join(problems)})" if problems else " chain=ok")

    def failed(self) -> bool:
        return bool(self.bad or self.breaks or self.gaps or self.disorder)

    def summary(self) -> str:
        span = f"seq {self.first}..{self.last}" if self.first is not None else "no seqs"
        return (
            f"audit: {self.entries} entries, {span}, {self.ok} entry signatures ok, {self.bad} bad,"
            f" {self.breaks} chain breaks, {self.gaps} gaps, {self.disorder} out of order,"
            f" {self.dups} identical re-deliveries"
        )


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
    keys = load_keys(args.keys) if args.keys else None
    single = load_key(args.public_key) if args.public_key else None
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
    audit = AuditCheck() if args.audit else None
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
            if keys is None:
                key = single
                good, why = verify(key, h, value, msg.key())
            else:
                named = text(h.get("icu-key-id"))
                key = keys.get(named)
                if key is None:
                    good, why = False, f"unknown key id {named}"
                else:
                    good, why = verify(key, h, value, msg.key())
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
            if audit is not None:
                line += " " + audit.check(value, text(h.get("icu-seq-first")), key)
            print(line, flush=True)
    finally:
        consumer.close()

    print(f"{total} records, {ok} signatures ok, {bad} bad", flush=True)
    if audit is not None:
        print(audit.summary(), flush=True)
    if invalid:
        print(f"kafka_consume: {invalid} values were not JSON", file=sys.stderr)
    if bad or invalid or (audit is not None and audit.failed()):
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
