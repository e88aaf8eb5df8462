"""A local HTTP server on 127.0.0.1 for the download tests: serves a folder, honours Range
requests, and can be told to fail: cut a response off half-way or answer 503 a number of times."""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cut_off: Counter = Counter()  # path -> times to send only half the body, then close
        self.unavailable: Counter = Counter()  # path -> times to answer 503
        self.no_length: set[str] = set()  # paths answered without Content-Length (the body ends at close)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                rel = self.path.lstrip("/")
                if server.unavailable[rel] > 0:
                    server.unavailable[rel] -= 1
                    self.send_error(503)
                    return
                path = server.root / rel
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if rng := self.headers.get("Range"):
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if rel not in server.no_length or rng:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_off[rel] > 0:
                    server.cut_off[rel] -= 1
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
