"""A small fault-injecting HTTP server on 127.0.0.1 for what nginx will not do on purpose.

Each path has a *script*: a list of behaviours used by successive requests to that path; when the
script runs out, ``default`` applies (normally ``"ok"``). Behaviours:

    "ok"           serve the file; honours ``Range: bytes=N-`` with 206 + Content-Range
    "cut:N"        send headers for the full answer, then N body bytes, then drop the connection
    "wrong"        serve bytes of the right length but different content
    "status:CODE"  answer CODE with an empty body (500, 404, 416...)
    "hang"         accept the request and never answer (until the server stops)
    "stall:N"      send headers and N body bytes, then go silent (until the server stops)
    "ignore-range" answer 200 with the whole file even to a Range request
    "trickle-headers:S"  send the status line and headers one byte every S seconds (never finishing)
    "trickle:S"    send headers, then the body one byte every S seconds
    "gate:N"       send headers and N body bytes, wait until ``server.gate`` is set, then the rest
    "retry-after:CODE:V"  answer CODE (429, 503) with ``Retry-After: V`` (V may hold colons) and no body

Every request is recorded in ``server.log`` as :class:`Hit` (path, range header, status, body
bytes sent). The server runs in a daemon thread, stops on :meth:`FaultServer.stop` and, at the
latest, by itself after ``lifetime`` seconds, so a broken test never leaves it running.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable


@dataclass
class Hit:
    path: str
    range: str | None
    status: int
    sent: int
    behaviour: str


class FaultServer:
    def __init__(self, files: dict[str, bytes] | None = None, *, default: str = "ok", lifetime: float = 60.0) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.scripts: dict[str, list[str]] = {}
        self.default = default
        self.log: list[Hit] = []
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._timer = threading.Timer(lifetime, self.stop)
        self._timer.daemon = True

    def start(self) -> "FaultServer":
        self._thread.start()
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()  # releases "hang" handlers
        self.gate.set()
        self._timer.cancel()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, path: str, behaviours: Iterable[str]) -> None:
        """Behaviours for the next requests to ``path`` (in order)."""
        with self._lock:
            self.scripts[path] = list(behaviours)

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.log if path is None or h.path == path]

    def _next(self, path: str) -> str:
        with self._lock:
            queue = self.scripts.get(path)
            return queue.pop(0) if queue else self.default

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.log.append(hit)


def _make_handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            behaviour = server._next(path)
            rng = self.headers.get("Range")
            if behaviour == "hang":
                server._record(Hit(path, rng, 0, 0, behaviour))
                server._stopped.wait(30)
                self.close_connection = True
                return
            if behaviour.startswith("status:"):
                code = int(behaviour.split(":", 1)[1])
                self._send(code, b"", {}, path, rng, behaviour)
                return
            if behaviour.startswith("retry-after:"):
                _, code, value = behaviour.split(":", 2)
                self._send(int(code), b"", {"Retry-After": value}, path, rng, behaviour)
                return
            if behaviour.startswith("trickle-headers:"):
                delay = float(behaviour.split(":", 1)[1])
                server._record(Hit(path, rng, 200, 0, behaviour))
                head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"a" * 100_000
                for i in range(len(head)):
                    if server._stopped.wait(delay if i else 0):
                        break
                    try:
                        self.wfile.write(head[i:i + 1])
                        self.wfile.flush()
                    except OSError:
                        break
                self.close_connection = True
                return
            data = server.files.get(path)
            if data is None:
                self._send(404, b"", {}, path, rng, behaviour)
                return
            if behaviour == "wrong":
                data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            start = 0
            if rng and behaviour != "ignore-range" and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes="):-1])
                if start >= len(data):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"}, path, rng, behaviour)
                    return
            body = data[start:]
            headers = {"ETag": '"fault"'}
            status = 200
            if start:
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            if behaviour.startswith(("trickle:", "gate:")):
                arg = behaviour.split(":", 1)[1]
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                sent = 0
                try:
                    if behaviour.startswith("gate:"):
                        n = int(arg)
                        self.wfile.write(body[:n])
                        self.wfile.flush()
                        sent = n
                        server.gate.wait(30)
                        self.wfile.write(body[n:])
                        sent = len(body)
                    else:
                        for i in range(len(body)):
                            if server._stopped.wait(float(arg)):
                                break
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            sent += 1
                except OSError:
                    pass
                server._record(Hit(path, rng, status, sent, behaviour))
                self.close_connection = True
                return
            if behaviour.startswith(("cut:", "stall:")):
                n = int(behaviour.split(":", 1)[1])
                server._record(Hit(path, rng, status, min(n, len(body)), behaviour))   # before the client can see it
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:n])
                self.wfile.flush()
                if behaviour.startswith("stall:"):
                    server._stopped.wait(30)
                self.close_connection = True
                return
            self._send(status, body, headers, path, rng, behaviour)

        def _send(self, status: int, body: bytes, headers: dict[str, str], path: str, rng: str | None,
                  behaviour: str) -> None:
            # recorded before the response goes out: a client that has its answer finds the hit logged
            server._record(Hit(path, rng, status, len(body), behaviour))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except OSError:
                pass

    return Handler
