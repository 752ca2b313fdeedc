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
status: 400 for input the page can show (an empty canvas, a wrong number of drawings, a
drawing over the caps below, a number out of range, not JSON), 403 a foreign Host or Origin,
404 an unknown path, 405 a wrong method, 408 a body that came too slowly, 411 no
Content-Length, 413 a body over MAX_BODY, 415 a POST body not declared JSON (501 a method
http.server does not know, 503 all threads busy); a bug is a 500 with its one line, and the
server goes on.

The server listens on 127.0.0.1 only, but any web page the user visits can make the browser
send requests to it, and any program on the machine can connect. So:

- Host must be 127.0.0.1, localhost or [::1], with the server's port or none (else 403): a
  page whose DNS name is rebound to 127.0.0.1 (DNS rebinding) sends its own name in Host, and
  would otherwise read the answers as its own;
- Origin, when there is one, must be this server's page, http://NAME:PORT with NAME one of
  those three (else 403): browsers send it with every POST and every request a page of
  another site makes with fetch; a missing Origin (curl, the page's own GETs) is fine;
- a POST must be Content-Type: application/json (else 415): a page of another site may post
  text/plain without asking, but JSON only after a CORS preflight, which is never granted;
- a drawing has at most MAX_STROKES strokes and MAX_POINTS points in all, x and y within
  +/-MAX_COORD (else 400); numbers are read as floats, so an integer too large for one is
  refused like Infinity and NaN;
- the CPU work of /preview and /learn (checking and converting the drawings, the learning)
  runs under one lock, one request at a time;
- a client has DEADLINE seconds from connecting to send its whole request (headers and body;
  a slow one is dropped, with a 408 if its headers came), and as long for each write of the
  answer;
- at most THREADS connections are served at once, a thread each; one more is answered 503
  at once, and closed.

Each connection carries one request (HTTP/1.0). ``make_server`` takes the deadline and the
number of threads (the tests use a short deadline).
"""
import io
import json
import os
import re
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
LOCAL_NAMES = (HOST, "localhost", "[::1]")  # the names this server answers to, in Host
MAX_BODY = 1 << 20          # bytes: a busy drawing is a few kB per canvas
MAX_STROKES = 100           # strokes in a drawing: a character has a handful
MAX_POINTS = 2000           # points in a drawing: the page keeps one per 1/200 of a pad's width
MAX_COORD = 1e6             # |x| and |y|: the page sends fractions of a pad's width
DEADLINE = 10.0             # seconds a client has to send its request
THREADS = 8                 # connections served at once
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
    describing the checkpoint, shown on the page. A request's drawings are checked, converted
    and learned from under ``lock``: the CPU work runs one request at a time.
    """

    def __init__(self, learner, classes, shots, model):
        self.learner, self.classes, self.shots, self.model = learner, classes, shots, model
        self.lock = threading.Lock()

    def config(self):
        return {"classes": self.classes, "shots": self.shots,
                "eval_iters": self.learner.cfg.eval_iters, "model": self.model}

    def preview(self, body):
        """The /preview answer: the drawing as the model sees it."""
        drawing = _field(body, "drawing")
        with self.lock:
            return {"image": _image(drawing_to_input(_drawing(drawing, "drawing")))}

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
        with self.lock:
            strokes = [_drawing(d, name) for d, name in zip(support + [query], names + ["query"])]
            x = np.stack([drawing_to_input(s) for s in strokes])     # (N*K + 1, 28, 28, 1)
            result = self.learner.learn(x[:-1], np.repeat(np.arange(self.classes), self.shots),
                                        x[-1])
        for r in result.values():
            r["steps"] = [[round(p, 5) for p in row] for row in r["steps"]]
        return {"support": [_image(xi) for xi in x[:-1]], "query": _image(x[-1]), **result,
                "seconds": time.perf_counter() - t0}


def _field(body, name):
    if not isinstance(body, dict) or name not in body:
        raise BadRequest(400, f"the request needs a JSON object with '{name}'")
    return body[name]


def _drawing(drawing, name):
    """A drawing's strokes as float arrays (n, 2); BadRequest naming the canvas if it is not
    a list of strokes of [x, y] points, or has none, or is over the caps (MAX_STROKES strokes,
    MAX_POINTS points, coordinates within +/-MAX_COORD). The caps are checked before the
    points: a drawing over them costs no more than counting its strokes."""
    if not isinstance(drawing, list):
        raise BadRequest(400, f"{name}: a drawing must be a list of strokes")
    if not drawing:
        raise BadRequest(400, f"{name}: the canvas is empty; draw a character there")
    if len(drawing) > MAX_STROKES:
        raise BadRequest(400, f"{name}: {len(drawing)} strokes; a drawing may have at most "
                              f"{MAX_STROKES}")
    bad_stroke = BadRequest(400, f"{name}: a stroke must be a non-empty list of [x, y] points, "
                                 f"numbers from -{MAX_COORD:,.0f} to {MAX_COORD:,.0f}")
    if not all(isinstance(stroke, list) and stroke for stroke in drawing):
        raise bad_stroke
    points = sum(len(stroke) for stroke in drawing)
    if points > MAX_POINTS:
        raise BadRequest(400, f"{name}: {points} points; a drawing may have at most "
                              f"{MAX_POINTS}")
    if not all(_point(p) for stroke in drawing for p in stroke):
        raise bad_stroke
    return [np.asarray(stroke, np.float64) for stroke in drawing]


def _point(p):
    """Whether p is [x, y] with x and y within +/-MAX_COORD (NaN and infinities are not; the
    body's numbers are all floats, see ``Handler._read_json``)."""
    return isinstance(p, list) and len(p) == 2 and all(
        isinstance(v, float) and abs(v) <= MAX_COORD for v in p)


def _image(x):
    """28 rows of 28 ints, 0 ink and 1 background, from a (28, 28, 1) input."""
    return x[..., 0].astype(int).tolist()


def _static_name(path):
    """The file of static/ a GET path asks for ("/" is the page), or None."""
    name = "index.html" if path == "/" else path[len("/static/"):]
    return name if (path == "/" or path.startswith("/static/")) and name in FILES else None


def _route(target):
    """A request target's path, without its query; BadRequest (400) if urlsplit cannot read
    it (e.g. "http://[x/", an IPv6 address never closed)."""
    try:
        return urlsplit(target).path
    except ValueError:
        raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad request target {_shown(target)}") from None


def _reject_constant(name):
    raise BadRequest(400, f"the request body is not valid JSON ({name} is not a number)")


def _shown(value):
    """A header's value for a one-line message: quoted, at most 40 characters of it."""
    return repr(value[:40])


def _check_caller(headers, port):
    """BadRequest (403) unless the request is addressed to this server by a local name (Host)
    and, when it comes from a web page, from this server's own (Origin).

    A page of another site can make the browser send requests here: to its own DNS name
    rebound to 127.0.0.1 (Host is then that name), or to 127.0.0.1 directly (Origin is then
    that site: browsers send Origin with every POST and every cross-site fetch).
    """
    host = headers.get("Host", "")
    if host.lower() not in {name + tail for name in LOCAL_NAMES for tail in ("", f":{port}")}:
        raise BadRequest(HTTPStatus.FORBIDDEN, f"Host {_shown(host)} refused: this server "
                                               f"answers http://{HOST}:{port}/ only")
    own = f":{port}" if port != 80 else ""          # browsers leave the default port out
    origin = headers.get("Origin")
    if origin is not None and origin.lower() not in {f"http://{name}{own}"
                                                      for name in LOCAL_NAMES}:
        raise BadRequest(HTTPStatus.FORBIDDEN, f"requests from {_shown(origin)} refused: only "
                                               f"this server's own page may send them")


class DeadlineReader(io.RawIOBase):
    """A socket's incoming bytes, due by a deadline (a ``time.monotonic()``): each read waits
    only for the time left, then raises TimeoutError. A timeout per read alone would let a
    client sending one byte a second hold its connection (and a thread) for ever."""

    def __init__(self, sock, deadline):
        self.sock, self.deadline = sock, deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not come in time")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class Handler(BaseHTTPRequestHandler):
    """The endpoints of the module docstring; ``self.server`` is the ``DemoServer``."""

    server_version = "minireptile-demo"
    posts = {"/learn": "learn", "/preview": "preview"}

    def setup(self):
        """http.server's setup, with a reader that needs the request within the deadline."""
        super().setup()
        self.rfile.close()                  # http.server's reader, which has none
        deadline = time.monotonic() + self.server.deadline
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, deadline))

    def parse_request(self):
        """http.server's reading of the request line and headers, then the refusals they
        decide: a foreign Host or Origin (403), a target urlsplit cannot read (400). The
        target's path, without its query, is ``self.route``."""
        if not super().parse_request():
            return False
        try:
            _check_caller(self.headers, self.server.server_address[1])
            self.route = _route(self.path)
        except BadRequest as exc:
            self.send_error(exc.status, str(exc))
            return False
        return True

    def do_GET(self):
        name = _static_name(self.route)
        if self.route == "/config":
            self._send_json(HTTPStatus.OK, self.server.app.config())
        elif name:
            with open(os.path.join(STATIC, name), "rb") as f:
                self._send(HTTPStatus.OK, f.read(), FILES[name] + "; charset=utf-8")
        else:
            self._refuse()

    def do_POST(self):
        if self.route not in self.posts:
            return self._refuse()
        try:
            reply = getattr(self.server.app, self.posts[self.route])(self._read_json())
        except BadRequest as exc:
            return self.send_error(exc.status, str(exc))
        except UserError as exc:            # e.g. a shape the model refuses
            return self.send_error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:            # a bug: answer, log, and keep serving
            self.log_error("%s", traceback.format_exc())
            return self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR,
                                   f"internal error ({type(exc).__name__}: {exc})")
        if self.route == "/learn":
            self.log_message("learn: %.3f s; meta-learned says class %d, scratch class %d",
                             reply["seconds"], reply["meta"]["predicted"] + 1,
                             reply["scratch"]["predicted"] + 1)
        self._send_json(HTTPStatus.OK, reply)

    def _refuse(self):
        """405 for a known path asked with the wrong method, 404 for any other."""
        path = self.route
        if path in self.posts or path == "/config" or _static_name(path):
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} {path} is not "
                                                           f"supported")
        else:
            self.send_error(HTTPStatus.NOT_FOUND, f"no page at {path}")

    do_PUT = do_DELETE = do_PATCH = _refuse

    def handle(self):
        """Serve one connection; a client that hangs up or stalls only ends its own."""
        try:
            super().handle()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def _read_json(self):
        """The body, parsed with every number a float (an integer too large for one becomes
        infinity, which drawings refuse). BadRequest: 415 if the body is not declared JSON
        (checked first: nothing else needs it), 411, 413, 400 for its length, 408 if it does
        not come within the deadline, 400 if it does not parse."""
        if self.headers.get_content_type() != "application/json":
            raise BadRequest(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                             "a POST body must be sent as Content-Type: application/json")
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length")
        if not re.fullmatch("[0-9]{1,20}", length):     # ASCII digits: int() takes others
            raise BadRequest(HTTPStatus.BAD_REQUEST, f"bad Content-Length {_shown(length)}")
        if int(length) > MAX_BODY:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,     # the body is not read
                             f"request body of {int(length)} bytes; at most {MAX_BODY}")
        try:
            data = self.rfile.read(int(length))
        except TimeoutError:
            raise BadRequest(HTTPStatus.REQUEST_TIMEOUT, f"the request did not come within "
                                                         f"{self.server.deadline:g} s")
        try:
            return json.loads(data, parse_int=float, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the request body is not valid JSON")

    def send_error(self, code, message=None, explain=None):
        """Every refusal as {"error": one line}, http.server's own too (a malformed request
        line, a method it does not know), instead of its HTML page."""
        self._send_json(code, {"error": message or self.responses[code][0]})

    def _send_json(self, status, obj):
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status, data, content_type):
        """Send the answer. The client has the deadline again for each write (a socket's
        timeout bounds a whole ``sendall``): one that reads nothing cannot hold the thread."""
        self.connection.settimeout(self.server.deadline)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        print(f"[{time.strftime('%H:%M:%S')}] {format % args}", file=sys.stdout, flush=True)


class DemoServer(ThreadingHTTPServer):
    """The demo's HTTP server on address, answering app: a thread per connection, at most
    threads at a time; one more is answered 503 at once by the accepting thread, and closed.
    deadline: the seconds a client has to send its request (see ``Handler``)."""

    daemon_threads = True

    def __init__(self, address, app, deadline, threads):
        super().__init__(address, Handler)
        self.app, self.deadline = app, deadline
        self.slots = threading.BoundedSemaphore(threads)
        body = json.dumps({"error": f"the demo server is busy ({threads} connections); "
                                    f"try again"}).encode()
        self.busy = (f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n\r\n"
                     ).encode() + body

    def process_request(self, request, client_address):
        if self.slots.acquire(blocking=False):
            super().process_request(request, client_address)
        else:
            self.turn_away(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def turn_away(self, request):
        """Send the 503 answer unread and close. The socket does not block: the accepting
        thread never waits on a client (a full buffer, a client gone: closing says enough)."""
        request.setblocking(False)
        try:
            request.sendall(self.busy)
        except OSError:
            pass
        self.shutdown_request(request)


def make_server(app, port=None, tries=20, deadline=DEADLINE, threads=THREADS):
    """A DemoServer for app on 127.0.0.1: on port, or the first free one from 8000 on.

    A given port that is taken raises UserError (one line).
    """
    ports = [port] if port is not None else range(8000, 8000 + tries)
    for p in ports:
        try:
            return DemoServer((HOST, p), app, deadline, threads)
        except OSError as exc:
            if port is not None:
                raise UserError(f"port {p} on {HOST} is in use or not allowed ({exc.strerror}); "
                                f"pass another --port") from None
    raise UserError(f"ports 8000-{8000 + tries - 1} on {HOST} are all in use; pass --port")
