"""The lab's web server: the standard library's ``ThreadingHTTPServer`` serving the page (one HTML
file, plain JavaScript drawing on canvases, no build step) from ``static/`` and the JSON endpoints
of :data:`.app.ENDPOINTS`, GET with query parameters or POST with a JSON body.

A bad request never stops the server: it answers ``{"error": "one sentence"}`` with status 400
(bad parameters), 404 (an unknown endpoint, model or run) or 500 (a bug, whose traceback goes to
stderr), and the page shows the sentence.
"""
from __future__ import annotations

import json
import sys
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from .app import ENDPOINTS, Explorer, RequestError, jsonable

__all__ = ["LabServer", "make_server", "serve", "address", "STATIC", "THREADS"]

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
MAX_BODY = 8 * 2**20  # bytes of a POST body (a drawn mask is a few kB)


class Handler(BaseHTTPRequestHandler):
    """One request: a static file, or an endpoint's JSON (or PNG) answer, or a JSON error."""

    server_version = "difflab-explore"
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the standard library's name)
        self._handle()

    def do_POST(self):  # noqa: N802
        self._handle()

    def log_message(self, format, *args):  # quiet unless asked: the terminal shows the address only
        if self.server.verbose:
            super().log_message(format, *args)

    def _handle(self):
        url = urlsplit(self.path)
        try:
            params = self._params(url.query)  # the body first, so a kept-alive connection stays in step
            if url.path in ("/", "/index.html"):
                return self._static("index.html")
            if url.path.startswith("/static/"):
                return self._static(url.path[len("/static/"):])
            endpoint = ENDPOINTS.get(url.path)
            if endpoint is None:
                raise RequestError(f"no endpoint {url.path}; the lab's are {', '.join(ENDPOINTS)}", 404)
            result = endpoint(self.server.explorer, params)
            if isinstance(result, bytes):
                return self._send(200, result, "image/png")
            self._json(200, jsonable(result))
        except RequestError as e:
            self._json(e.status, {"error": str(e)})
        except ValueError as e:  # the library's one-sentence user errors
            self._json(400, {"error": " ".join(str(e).split()) or type(e).__name__})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away; nothing to answer
        except Exception as e:  # a bug: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error ({type(e).__name__}: {e}); the server is still running"})

    def _params(self, query: str) -> dict:
        params = dict(parse_qsl(query))
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self.close_connection = True  # the unread body would be taken for the next request
                raise RequestError(f"the request body is {length} bytes; the limit is {MAX_BODY}", 413)
            body = self.rfile.read(length) if length else b""
            if body.strip():
                try:
                    data = json.loads(body)
                except ValueError:
                    raise RequestError("the request body is not valid JSON") from None
                if not isinstance(data, dict):
                    raise RequestError("the request body must be a JSON object of parameters")
                params.update(data)
        return params

    def _static(self, name: str):
        files = {p.name: p for p in STATIC.iterdir() if p.is_file()}  # only the shipped files, by name
        if name not in files:
            raise RequestError(f"no file {name!r} in the lab's static files", 404)
        path = files[name]
        self._send(200, path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream"))

    def _json(self, status: int, obj):
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


class LabServer(ThreadingHTTPServer):
    """The standard library's threading server, one daemon thread per connection; a client that
    hangs up (a reloaded page) is not an error worth a traceback."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def make_server(paths=(), *, host: str = "127.0.0.1", port: int = 0, device=None,
                verbose: bool = False) -> LabServer:
    """A lab server on ``host:port`` (port 0: a free one; ``server.server_address`` says which) over
    the model directories and training runs ``paths`` (see :class:`.app.Explorer`). Call
    ``serve_forever()`` on it (in a thread for tests) and ``shutdown()`` to stop."""
    explorer = Explorer(paths, device)
    try:
        server = LabServer((host, port), Handler)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another port") from e
    server.explorer, server.verbose = explorer, verbose
    return server


def address(server: ThreadingHTTPServer) -> str:
    """The page's URL."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


#: torch's intra-op threads in a lab process. The lab's tensors are small (500 points, a few
#: thousand grid points), and on 2 CPU cores shared with other work a second thread only waits:
#: benchmarks/explore.py answered a change of sampler on the guided moons in 0.17 s (median) with
#: one thread against 0.93 s with two, and solved ring's reference ODE in 1.2 s against 6.9 s.
THREADS = 1


def serve(paths=(), *, host: str = "127.0.0.1", port: int = 8000, device=None, verbose: bool = False,
          threads: int | None = THREADS) -> None:
    """Run the lab until Ctrl-C, printing its address; ``threads``: torch's intra-op threads for this
    process (None: torch's default)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    server = make_server(paths, host=host, port=port, device=device, verbose=verbose)
    print(f"difflab explore: {address(server)} (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
