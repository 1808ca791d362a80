#!/usr/bin/env python3
"""Scrapes the importer's progress metric the way CDI's import controller does: HTTPS without
certificate verification, any path, the body parsed with the controller's regular expression.
Polls until --until-file exists (the test creates it when the container has exited) or a
deadline passes, and writes every parsed value, one per line, to --out. Scrape errors (server not
up yet, container gone) are expected and skipped; a line naming the metric that the regex cannot
parse is recorded as "MALFORMED <line>", since the controller would silently lose progress.
"""
import argparse
import os
import re
import ssl
import time
import urllib.request

# As in CDI's pkg/controller/common/util.go (the controller's progress parsing): one label,
# a plain decimal value.
def controller_regex(owner_uid: str) -> "re.Pattern[str]":
    return re.compile(
        r"(kubevirt_cdi_import_progress_total|kubevirt_cdi_clone_progress_total)\{ownerUID\=\""
        + re.escape(owner_uid)
        + r"\"\} (\d{1,3}\.?\d*)"
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--owner-uid", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--until-file", required=True)
    ap.add_argument("--deadline", type=float, default=300.0)
    args = ap.parse_args()

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    rx = controller_regex(args.owner_uid)
    url = f"https://127.0.0.1:{args.port}/metrics"
    end = time.monotonic() + args.deadline
    with open(args.out, "w") as out:
        while time.monotonic() < end and not os.path.exists(args.until_file):
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
                    body = resp.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(0.02)
                continue
            for line in body.splitlines():
                if "kubevirt_cdi_import_progress_total{" not in line:
                    continue
                m = rx.search(line)
                out.write((m.group(2) if m else "MALFORMED " + line) + "\n")
                out.flush()
            time.sleep(0.02)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
