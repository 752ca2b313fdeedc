"""The demo's local web server: the page and two JSON endpoints, on ``http.server``.

    GET  /                the page (static/index.html)
    GET  /static/NAME     its stylesheet and script (only the files shipped in static/)
    GET  /config          {"classes": N, "shots": K, "eval_iters": k, "model": text}
    POST /preview         {"drawing": D}                    -> {"image": 28 x 28 of 0/1}
    POST /learn           {"support": [D] * (N*K), "query": D}
                          -> {"support": images, "query": image, "meta": result,
                              "scratch": result, "seconds": time of the request}

A drawing D is a list of strokes, a stroke a list of [x, y] points; the support drawings come
class by class (class 0's K shots first). A result is ``Learner.learn``'s (the probabilities
after every inner step, the predicted class). Errors are {"error": one line} with a 4xx
status: 400 for input the page can show (an empty canvas, a wrong number of drawings, not
JSON), 404 an unknown path, 405 a wrong method, 411 no Content-Length, 413 a body over
MAX_BODY; a bug is a 500 with its one line, and the server goes on. It listens on 127.0.0.1
only; requests run in threads, the learning one at a time.
"""
import json
import math
import os
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

from ..errors import UserError
from .preprocess import drawing_to_input

HOST = "127.0.0.1"
MAX_BODY = 1 << 20          # bytes: a busy drawing is a few kB per canvas
STATIC = os.path.join(os.path.dirname(__file__), "static")
FILES = {"index.html": "text/html", "demo.css": "text/css", "demo.js": "text/javascript"}


class BadRequest(Exception):
    """A request the server refuses: status (4xx) and a one-line message for the page."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class DemoApp:
    """What the endpoints answer: N-way K-shot drawings in, the learner's results out.

    learner: a ``Learner``; classes, shots: N and K (the page's canvases); model: a line
    describing the checkpoint, shown on the page.
    """

    def __init__(self, learner, classes, shots, model):
        self.learner, self.classes, self.shots, self.model = learner, classes, shots, model
        self.lock = threading.Lock()

    def config(self):
        return {"classes": self.classes, "shots": self.shots,
                "eval_iters": self.learner.cfg.eval_iters, "model": self.model}

    def preview(self, body):
        return {"image": _image(drawing_to_input(_drawing(_field(body, "drawing"), "drawing")))}

    def learn(self, body):
        """The /learn answer, timed from the parsed body to the last probability."""
        t0 = time.perf_counter()
        support, query = _field(body, "support"), _field(body, "query")
        n = self.classes * self.shots
        if not isinstance(support, list) or len(support) != n:
            got = f"{len(support)}" if isinstance(support, list) else type(support).__name__
            raise BadRequest(400, f"'support' must be a list of {n} drawings ({self.classes} "
                                  f"classes x {self.shots} each), got {got}")
        names = [f"class {c + 1}, example {s + 1}" if self.shots > 1 else f"class {c + 1}"
                 for c in range(self.classes) for s in range(self.shots)]
        strokes = [_drawing(d, name) for d, name in zip(support, names)]
        query_strokes = _drawing(query, "query")
        x_train = np.stack([drawing_to_input(s) for s in strokes])        # (N*K, 28, 28, 1)
        x_query = drawing_to_input(query_strokes)                         # (28, 28, 1)
        y_train = np.repeat(np.arange(self.classes), self.shots)
        with self.lock:
            result = self.learner.learn(x_train, y_train, x_query)
        for r in result.values():
            r["steps"] = [[round(p, 5) for p in row] for row in r["steps"]]
        return {"support": [_image(x) for x in x_train], "query": _image(x_query), **result,
                "seconds": time.perf_counter() - t0}


def _field(body, name):
    if not isinstance(body, dict) or name not in body:
        raise BadRequest(400, f"the request needs a JSON object with '{name}'")
    return body[name]


def _drawing(drawing, name):
    """A drawing's strokes as float arrays (n, 2); BadRequest naming the canvas if it is not
    a list of strokes of finite [x, y] points, or has none."""
    if not isinstance(drawing, list):
        raise BadRequest(400, f"{name}: a drawing must be a list of strokes")
    if not drawing:
        raise BadRequest(400, f"{name}: the canvas is empty; draw a character there")
    strokes = []
    for stroke in drawing:
        if not isinstance(stroke, list) or not stroke or not all(
                isinstance(p, list) and len(p) == 2 and all(_number(v) for v in p)
                for p in stroke):
            raise BadRequest(400, f"{name}: a stroke must be a non-empty list of [x, y] "
                                  f"points with finite numbers")
        strokes.append(np.asarray(stroke, np.float64))
    return strokes


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _image(x):
    """28 rows of 28 ints, 0 ink and 1 background, from a (28, 28, 1) input."""
    return x[..., 0].astype(int).tolist()


def _static_name(path):
    """The file of static/ a GET path asks for ("/" is the page), or None."""
    name = "index.html" if path == "/" else path[len("/static/"):]
    return name if (path == "/" or path.startswith("/static/")) and name in FILES else None


def _reject_constant(name):
    raise BadRequest(400, f"the request body is not valid JSON ({name} is not a number)")


class Handler(BaseHTTPRequestHandler):
    """The endpoints of the module docstring; ``self.server.app`` is the ``DemoApp``."""

    server_version = "minireptile-demo"
    timeout = 30                   # seconds a client may take to send its request
    posts = {"/learn": "learn", "/preview": "preview"}

    def do_GET(self):
        path = urlsplit(self.path).path
        name = _static_name(path)
        if path == "/config":
            self._send_json(HTTPStatus.OK, self.server.app.config())
        elif name:
            with open(os.path.join(STATIC, name), "rb") as f:
                self._send(HTTPStatus.OK, f.read(), FILES[name] + "; charset=utf-8")
        else:
            self._refuse(path)

    def do_POST(self):
        path = urlsplit(self.path).path
        if path not in self.posts:
            return self._refuse(path)
        try:
            reply = getattr(self.server.app, self.posts[path])(self._read_json())
        except BadRequest as exc:
            return self._send_error(exc.status, str(exc))
        except UserError as exc:            # e.g. a shape the model refuses
            return self._send_error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:            # a bug: answer, log, and keep serving
            self.log_error("%s", traceback.format_exc())
            return self._send_error(HTTPStatus.INTERNAL_SERVER_ERROR,
                                    f"internal error ({type(exc).__name__}: {exc})")
        if path == "/learn":
            self.log_message("learn: %.3f s; meta-learned says class %d, scratch class %d",
                             reply["seconds"], reply["meta"]["predicted"] + 1,
                             reply["scratch"]["predicted"] + 1)
        self._send_json(HTTPStatus.OK, reply)

    def _refuse(self, path):
        """405 for a known path asked with the wrong method, 404 for any other."""
        if path in self.posts or path == "/config" or _static_name(path):
            self._send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} {path} is not "
                                                            f"supported")
        else:
            self._send_error(HTTPStatus.NOT_FOUND, f"no page at {path}")

    def do_PUT(self):
        self._refuse(urlsplit(self.path).path)

    do_DELETE = do_PATCH = do_PUT

    def handle(self):
        """Serve one connection; a client that hangs up or stalls only ends its own."""
        try:
            super().handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length")
        if not length.isdigit():
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length!r}")
        if int(length) > MAX_BODY:
            self.close_connection = True    # the body is not read
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"request body of {int(length)} bytes; at most {MAX_BODY}")
        data = self.rfile.read(int(length))
        try:
            return json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the request body is not valid JSON")

    def _send_json(self, status, obj):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send_error(self, status, message):
        self._send_json(status, {"error": message})

    def _send(self, status, data, content_type):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        print(f"[{time.strftime('%H:%M:%S')}] {format % args}", file=sys.stdout, flush=True)


def make_server(app, port=None, tries=20):
    """An HTTP server for app on 127.0.0.1: on port, or the first free one from 8000 on.

    A given port that is taken raises UserError (one line).
    """
    ports = [port] if port is not None else range(8000, 8000 + tries)
    for p in ports:
        try:
            server = ThreadingHTTPServer((HOST, p), Handler)
        except OSError as exc:
            if port is not None:
                raise UserError(f"port {p} on {HOST} is in use or not allowed ({exc.strerror}); "
                                f"pass another --port") from None
            continue
        server.app, server.daemon_threads = app, True
        return server
    raise UserError(f"ports 8000-{8000 + tries - 1} on {HOST} are all in use; pass --port")
