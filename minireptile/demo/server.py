"""The demo's local web server, on ``http.server``: its pages and its apps' JSON endpoints.

    GET  /, /explore      the pages (static/index.html, static/explore.html)
    GET  /static/NAME     their stylesheets and scripts (only the files shipped in static/)
    GET or POST /NAME     an app's JSON endpoint: the drawing page's (``drawing.py``) and the
                          explore page's (``explore.py``); a POST's body is a JSON object

Errors are {"error": one line} with a 4xx status: 400 for input the page can show (an empty
canvas, a wrong number of drawings, a number out of range, not JSON), 403 a foreign Host or
Origin, 404 an unknown path, 405 a wrong method, 408 a body that came too slowly, 411 no
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
- numbers in a body are read as floats (an integer too large for one becomes infinity, which
  the apps refuse), and each app caps what a request may ask for (drawings, tasks, steps);
- the apps' CPU work runs under one lock, one request at a time;
- a client has DEADLINE seconds from connecting to send its whole request (headers and body;
  a slow one is dropped, with a 408 if its headers came), and as long for each write of the
  answer;
- at most THREADS connections are served at once, a thread each; one more is answered 503
  at once, and closed.

Each connection carries one request (HTTP/1.0). ``make_server`` takes the apps, the deadline
and the number of threads (the tests use a short deadline).
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

from ..errors import UserError

HOST = "127.0.0.1"
LOCAL_NAMES = (HOST, "localhost", "[::1]")  # the names this server answers to, in Host
MAX_BODY = 1 << 20          # bytes: a busy drawing is a few kB per canvas
DEADLINE = 10.0             # seconds a client has to send its request
THREADS = 8                 # connections served at once
STATIC = os.path.join(os.path.dirname(__file__), "static")
PAGES = {"/": "index.html", "/explore": "explore.html"}
FILES = {"index.html": "text/html", "demo.css": "text/css", "demo.js": "text/javascript",
         "explore.html": "text/html", "explore.js": "text/javascript",
         "common.js": "text/javascript"}


class BadRequest(Exception):
    """A request the server refuses: status (4xx) and a one-line message for the page."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def field(body, name):
    """body[name] of a POST's JSON object; BadRequest (400) when it has none."""
    if not isinstance(body, dict) or name not in body:
        raise BadRequest(400, f"the request needs a JSON object with '{name}'")
    return body[name]


def _static_name(path):
    """The file of static/ a GET path asks for (a page or /static/NAME), or None."""
    name = PAGES.get(path) or (path[len("/static/"):] if path.startswith("/static/") else "")
    return name if name in FILES and os.path.exists(os.path.join(STATIC, name)) else None


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
        if name:
            with open(os.path.join(STATIC, name), "rb") as f:
                self._send(HTTPStatus.OK, f.read(), FILES[name] + "; charset=utf-8")
        else:
            self._answer(lambda: None)

    def do_POST(self):
        self._answer(self._read_json)

    def _answer(self, body):
        """The app's answer to this request, body() its parsed body, as JSON."""
        answer = self.server.routes.get((self.command, self.route))
        if answer is None:
            return self._refuse()
        try:
            reply = answer(body())
        except BadRequest as exc:
            return self.send_error(exc.status, str(exc))
        except UserError as exc:            # e.g. a shape the model refuses
            return self.send_error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:            # a bug: answer, log, and keep serving
            self.log_error("%s", traceback.format_exc())
            return self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR,
                                   f"internal error ({type(exc).__name__}: {exc})")
        if isinstance(reply, dict) and "seconds" in reply:
            self.log_message("%s %s: %.3f s", self.command, self.route, reply["seconds"])
        self._send_json(HTTPStatus.OK, reply)

    def _refuse(self):
        """405 for a known path asked with the wrong method, 404 for any other."""
        path = self.route
        if any(p == path for _, p in self.server.routes) or _static_name(path):
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
    """The demo's HTTP server on address, answering the apps' routes (each app's ``routes()``:
    {(method, path): answer(body)}): a thread per connection, at most threads at a time; one
    more is answered 503 at once by the accepting thread, and closed. deadline: the seconds
    a client has to send its request (see ``Handler``)."""

    daemon_threads = True

    def __init__(self, address, apps, deadline, threads):
        super().__init__(address, Handler)
        self.routes = {key: answer for app in apps for key, answer in app.routes().items()}
        self.deadline = deadline
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


def make_server(apps, port=None, tries=20, deadline=DEADLINE, threads=THREADS):
    """A DemoServer for the apps (one, or a list) on 127.0.0.1: on port, or the first free one
    from 8000 on.

    A given port that is taken raises UserError (one line).
    """
    ports = [port] if port is not None else range(8000, 8000 + tries)
    for p in ports:
        try:
            return DemoServer((HOST, p), apps if isinstance(apps, (list, tuple)) else [apps],
                              deadline, threads)
        except OSError as exc:
            if port is not None:
                raise UserError(f"port {p} on {HOST} is in use or not allowed ({exc.strerror}); "
                                f"pass another --port") from None
    raise UserError(f"ports 8000-{8000 + tries - 1} on {HOST} are all in use; pass --port")
