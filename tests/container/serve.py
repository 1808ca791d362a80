#!/usr/bin/env python3
"""Static file server on loopback for the container test: plain HTTP, or HTTPS with a given
certificate. It binds port 0 (a free port chosen by the kernel, so parallel runs cannot clash)
and writes the port number to --port-file once it is listening.

Python's standard library only, so it runs wherever Debian's python3 does.
"""
import argparse
import functools
import http.server
import os
import ssl
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    # HTTP/1.1 keep-alive with a Content-Length on every file, as real image servers send.
    protocol_version = "HTTP/1.1"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True, help="directory to serve")
    ap.add_argument("--port-file", required=True, help="file to write the bound port to")
    ap.add_argument("--cert", help="PEM certificate chain: serve HTTPS")
    ap.add_argument("--key", help="PEM private key for --cert")
    args = ap.parse_args()

    handler = functools.partial(Handler, directory=args.dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)

    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)  # atomic: the reader never sees a partial number
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
