"""The dashboard's HTTP server (stdlib only): the page, its static files, the JSON API and the
run's evaluation videos. Read-only: GET and HEAD, nothing else.

    /                      the page (static/index.html); ?run=NAME picks a run, ?compare=A,B compares
    /static/<file>         the page's script and style
    /api/<endpoint>?...    JSON (see `api.ENDPOINTS`); errors are {"error": "..."} with a 4xx status
    /videos/<path>?run=N   a file inside RUN/videos (byte ranges supported, for seeking)
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.resources
import json
import logging
import re
import socket
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlsplit

from ada_curriculum.config import ConfigError
from ada_curriculum.dashboard import api
from ada_curriculum.dashboard.runs import RequestError, RunIndex

log = logging.getLogger(__name__)

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page draws everything itself from this origin; nothing inline, nothing from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
CHUNK = 1 << 16


@dataclasses.dataclass
class DashboardConfig:
    """Serve the live dashboard of a run directory (or of every run in a folder of runs)."""

    run_dir: str = dataclasses.field(
        metadata={"help": "run directory, or a folder holding run directories", "metavar": "RUN_DIR"})
    host: str = dataclasses.field(default="127.0.0.1",
                                  metadata={"help": "address to bind (loopback: this machine only)"})
    port: int = dataclasses.field(default=8000, metadata={"min": 0, "max": 65535, "help": "TCP port (0: any free one)"})


def _static_files() -> dict[str, bytes]:
    """The page's files, read once (package data: `ada_curriculum/dashboard/static/`)."""
    root = importlib.resources.files("ada_curriculum.dashboard") / "static"
    return {f.name: f.read_bytes() for f in root.iterdir() if Path(f.name).suffix in STATIC_TYPES}


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    server_version = "ada-curriculum-dashboard"

    def do_GET(self):  # noqa: N802 - http.server's naming
        self._dispatch(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._dispatch(send_body=False)

    def _dispatch(self, send_body: bool):
        self._send_body = send_body
        url = urlsplit(self.path)
        try:
            if url.path in ("/", "/index.html"):
                self._static("index.html")
            elif url.path.startswith("/static/"):
                self._static(url.path[len("/static/"):])
            elif url.path.startswith("/api/"):
                body = api.json_safe(api.handle(self.server.index, url.path[len("/api/"):], url.query))
                self._json(200, body)
            elif url.path.startswith("/videos/"):
                self._video(unquote(url.path[len("/videos/"):]), url.query)
            else:
                raise RequestError(404, f"not found: {url.path[:80]}")
        except RequestError as e:
            self._json(e.status, {"error": str(e)})
        except sqlite3.DatabaseError as e:  # e.g. a truncated or foreign file named metrics.sqlite
            log.warning("dashboard: %s: metrics store unreadable: %s", self.path, e)
            self._json(503, {"error": f"metrics store unreadable: {' '.join(str(e).split())}"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away mid-answer
        except Exception:  # noqa: BLE001 - logged here; the client gets no traceback
            log.exception("dashboard: %s failed", self.path)
            self._json(500, {"error": "internal error (details in the dashboard's log)"})

    # -- answers ------------------------------------------------------------------------------
    def _headers(self, status: int, content_type: str, length: int, extra: Optional[dict] = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("X-Content-Type-Options", "nosniff")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _json(self, status: int, body: dict):
        data = json.dumps(body, allow_nan=False).encode()
        self._headers(status, "application/json", len(data), {"Cache-Control": "no-store"})
        if self._send_body:
            self.wfile.write(data)

    def _static(self, name: str):
        data = self.server.static.get(name)
        if data is None:
            raise RequestError(404, f"not found: /static/{name[:80]}")
        extra = {"Cache-Control": "no-cache"}
        if name.endswith(".html"):
            extra["Content-Security-Policy"] = CSP
        self._headers(200, STATIC_TYPES[Path(name).suffix], len(data), extra)
        if self._send_body:
            self.wfile.write(data)

    def _video(self, rel: str, query: str):
        run = self.server.index.get(api.Query(query, ("run",)).get("run"))
        path = api.resolve_video(run, rel)
        size = path.stat().st_size
        start, end, status = 0, size - 1, 200
        wanted = self.headers.get("Range")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip()) if wanted else None
        if match and (match[1] or match[2]):
            if match[1]:
                start, end = int(match[1]), min(int(match[2]) if match[2] else size - 1, size - 1)
            else:  # the last N bytes
                start = max(0, size - int(match[2]))
            if start > end:
                self._headers(416, "text/plain", 0, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        extra = {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
        if status == 206:
            extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._headers(status, api.VIDEO_SUFFIXES[path.suffix], end - start + 1, extra)
        if not self._send_body:
            return
        with path.open("rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, unsupported method) as JSON too."""
        try:
            self._send_body = self.command != "HEAD"
            self._json(code, {"error": message or self.responses.get(code, ("error",))[0]})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.debug("dashboard: " + format, *args)


class DashboardServer(ThreadingHTTPServer):
    """The dashboard on `(host, port)`; `start()` serves from a daemon thread, `close()` stops."""

    daemon_threads = True

    def __init__(self, run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000):
        self.index = RunIndex(run_dir)
        self.static = _static_files()
        if ":" in host:
            self.address_family = socket.AF_INET6
        self._thread: Optional[threading.Thread] = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.serve_forever, name="dashboard", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> "DashboardServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_server(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> DashboardServer:
    """A bound (not yet serving) dashboard; bad input raises ConfigError with one line."""
    if not Path(run_dir).is_dir():
        raise ConfigError("run_dir", f"{run_dir} is not a directory")
    try:
        return DashboardServer(run_dir, host, port)
    except socket.gaierror:
        raise ConfigError("host", f"cannot bind to {host!r}: unknown address") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError("port", f"{host}:{port} is in use (choose another, or --port 0 for any free port)") \
                from None
        raise ConfigError("host", f"cannot bind to {host}:{port}: {e.strerror}") from None


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> DashboardServer:
    """Serve `run_dir` from a background thread; returns the running server (`.url`, `.close()`)."""
    return make_server(run_dir, host, port).start()
