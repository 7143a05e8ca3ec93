#!/usr/bin/env python3
"""A minimal OpenTelemetry OTLP/HTTP trace receiver for the tracing test.

It decodes what an exporter posts to ``/v1/traces`` (``application/x-protobuf``,
optionally gzip) with the official protobuf classes of the PyPI package
``opentelemetry-proto``, and writes one JSON line per span to --out:
``trace_id``, ``span_id``, ``parent_span_id`` (lowercase hex, "" for a root),
``name``, ``kind``, ``attributes`` and the resource's attributes. It answers
each export with an empty ``ExportTraceServiceResponse`` (HTTP 200), as a
collector does, and anything else with 404/415.

    otlp_receiver.py --port-file PORT_FILE --out SPANS.jsonl

It listens on 127.0.0.1 on a free port, which it writes to --port-file once
it accepts connections. It runs until killed.
"""

import argparse
import gzip
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value_of(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: value_of(kv.value) for kv in kvs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = open(args.out, "a", encoding="utf-8")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            if self.path.rstrip("/") != "/v1/traces":
                self.send_error(404, "only /v1/traces")
                return
            if "protobuf" not in self.headers.get("Content-Type", ""):
                self.send_error(415, "only application/x-protobuf")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding", "") == "gzip":
                body = gzip.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            for rs in request.resource_spans:
                resource = attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.write(json.dumps({
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "start_ns": span.start_time_unix_nano,
                            "end_ns": span.end_time_unix_nano,
                            "attributes": attributes(span.attributes),
                            "resource": resource,
                        }) + "\n")
            out.flush()
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, fmt, *a):
            sys.stderr.write("otlp_receiver: " + (fmt % a) + "\n")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
