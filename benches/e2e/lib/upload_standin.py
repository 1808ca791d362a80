#!/usr/bin/env python3
"""The receiving half of the stand-in for CDI's upload path (benches/e2e/run.sh, group upload).

CDI's cdi-uploadserver copies the request body into a file on the scratch volume with Go's
io.Copy (buffered writes through the page cache), and only then runs qemu-img convert. This
does the first half: one PUT or POST over TLS, its body written to OUT in 1 MiB pieces through
the page cache, a 200 answer, then exit. The conversion and the sync are the shell's, so the
stand-in's time is receive + convert + sync, as in CDI.

    upload_standin.py PORT CERT KEY OUT
"""

import http.server
import ssl
import sys

PIECE = 1 << 20


class Receive(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _receive(self):
        left = int(self.headers.get("Content-Length", "0"))
        with open(self.server.out, "wb") as f:
            while left > 0:
                piece = self.rfile.read(min(PIECE, left))
                if not piece:
                    break
                f.write(piece)
                left -= len(piece)
        ok = left == 0
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.server.ok = ok
        self.server.done = True

    do_PUT = _receive
    do_POST = _receive

    def log_message(self, *args):
        pass


def main():
    port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    srv = http.server.HTTPServer(("127.0.0.1", port), Receive)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.out, srv.done, srv.ok = out, False, False
    while not srv.done:
        srv.handle_request()
    sys.exit(0 if srv.ok else 1)


if __name__ == "__main__":
    main()
