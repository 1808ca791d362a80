#!/usr/bin/env python3
"""A stand-in for the Kubernetes API server, for the poller case of the container test.

No Kubernetes API server can run on the test machines (no etcd, no cluster), so this serves one
DataImportCron object over HTTPS at its API path and checks what a real API server would refuse:

  * the bearer token (401 otherwise);
  * for PATCH, the content type `application/json-patch+json` (415 otherwise);
  * the patch document: a JSON array of `add` operations on `/metadata/annotations/KEY` with
    string values, KEY escaped as a JSON pointer (422 otherwise).

The patch is applied to the object, so that a second poll sees the new annotations. Each request
is appended to --log as one JSON line: method, path, content type, body (parsed), status.
"""

import argparse
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--path", required=True, help="the DataImportCron's API path")
    ap.add_argument("--object", required=True, help="JSON file with the object to serve")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()

    with open(args.object) as f:
        state = {"object": json.load(f)}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            sys.stderr.write("kube_api: " + (fmt % a) + "\n")

        def answer(self, status, doc, body=None):
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            with open(args.log, "a") as f:
                f.write(json.dumps({
                    "method": self.command,
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "body": body,
                    "status": status,
                }) + "\n")

        def failure(self, status, message, body=None):
            self.answer(status, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "message": message, "code": status}, body)

        def checked(self):
            if self.headers.get("Authorization") != "Bearer " + args.token:
                self.failure(401, "Unauthorized")
                return False
            if self.path != args.path:
                self.failure(404, "dataimportcrons.cdi.kubevirt.io not found")
                return False
            return True

        def do_GET(self):
            if self.checked():
                self.answer(200, state["object"])

        def do_PATCH(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if not self.checked():
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self.failure(422, "the patch is not JSON")
                return
            if self.headers.get("Content-Type") != "application/json-patch+json":
                self.failure(415, "the body of the request was in an unknown format", body)
                return
            patched = json.loads(json.dumps(state["object"]))
            annotations = patched.get("metadata", {}).get("annotations")
            if not isinstance(body, list) or annotations is None:
                self.failure(422, "the patch is not an array, or the object has no annotations", body)
                return
            prefix = "/metadata/annotations/"
            for op in body:
                if (not isinstance(op, dict) or op.get("op") != "add"
                        or not isinstance(op.get("value"), str)
                        or not str(op.get("path", "")).startswith(prefix)):
                    self.failure(422, "only add operations on annotations with string values", body)
                    return
                key = op["path"][len(prefix):]
                if "/" in key:
                    self.failure(422, "an annotation key must be one pointer token", body)
                    return
                annotations[key.replace("~1", "/").replace("~0", "~")] = op["value"]
            state["object"] = patched
            self.answer(200, patched, body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(args.port_file + ".tmp", args.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
