"""An HTTP server on 127.0.0.1 (port 0) for the downloader's tests: it serves bytes the
test made and misbehaves on request (truncated bodies, reset connections, stalls,
ignored Range headers, server errors)."""
from __future__ import annotations

import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        served = self.server.owner
        path = self.path.split("?", 1)[0]
        with served.lock:
            served.requests.append((path, self.headers.get("Range")))
            item = served.files.get(path)
            fault = item["faults"].pop(0) if item and item["faults"] else None
        if item is None:
            self.send_error(404)
            return
        if fault == "500":
            self.send_error(500)
            return
        if fault == "stall":
            time.sleep(served.stall)
            return
        data = item["data"]
        start = 0
        wanted = self.headers.get("Range")
        if wanted and not item["ignore_range"]:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted)[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if fault in ("truncate", "reset"):
            body = body[: len(body) // 2]
        step = max(1, len(body) // 8)
        try:
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset:offset + step])
                self.wfile.flush()
                if item["chunk_delay"]:
                    time.sleep(item["chunk_delay"])
        except OSError:  # the client went away
            return
        if fault == "reset":  # an abortive close: the client sees ECONNRESET, not EOF
            time.sleep(0.2)  # let the client read what was sent (a reset discards unread data)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: "ImageServer") -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request, client_address) -> None:
        pass  # resets and stalls are on purpose


class ImageServer:
    """``add(path, data, faults=[...])``: each fault applies to one request, in order:
    ``"truncate"`` (Content-Length of the whole body, half of it sent, connection closed),
    ``"reset"`` (half sent, then a TCP reset), ``"stall"`` (no answer for ``stall`` s),
    ``"500"`` (an internal server error)."""

    def __init__(self) -> None:
        self.files: dict[str, dict] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.stall = 1.0
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(self, path: str, data: bytes, *, faults=(), ignore_range: bool = False,
            chunk_delay: float = 0.0) -> str:
        self.files[path] = {"data": data, "faults": list(faults), "ignore_range": ignore_range,
                            "chunk_delay": chunk_delay}
        return self.url(path)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def gets(self, path: str) -> list[str | None]:
        """The Range header of each request for *path* (None: no Range)."""
        with self.lock:
            return [rng for p, rng in self.requests if p == path]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
