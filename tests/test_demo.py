"""`minireptile demo`: preprocessing, the learner, the server's answers and protections, the page
in Chromium.

The browser test draws held-out Omniglot characters (the real 105x105 originals, thinned to
centre lines and traced into strokes) on the page with pointer events, presses "learn" and
reads the predicted class; it needs Chromium, chromedriver and Selenium (`apt-get install
chromium chromium-driver`, `pip install selenium`), and skips with a reason without them.
With MINIREPTILE_DEMO_SCREENSHOTS=DIR it saves the page's screenshots there (docs/ holds them).
"""
import contextlib
import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import browser, screenshot, serving

from minireptile import backend, parallel
from minireptile.cli import main
from minireptile.cli.demo import SHIPPED, load_learner
from minireptile.data import embedded_omniglot, load_dataset
from minireptile.demo import drawing as demo_drawing, preprocess
from minireptile.demo.drawing import MAX_POINTS, MAX_STROKES, DrawingApp
from minireptile.demo.server import MAX_BODY, THREADS

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
needs_omniglot = pytest.mark.skipif(not (OMNIGLOT / "images_evaluation.zip").is_file(),
                                    reason=f"real Omniglot data not found at {OMNIGLOT}")


# ---------------------------------------------------------------- Omniglot strokes

def centre_lines(ink):
    """Zhang-Suen thinning of a boolean image: the strokes' one-pixel centre lines."""
    img = np.pad(ink, 1).astype(np.uint8)
    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            ring = [img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:],   # N NE E SE
                    img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]]  # S SW W NW
            n, e, s, w = ring[0], ring[2], ring[4], ring[6]
            count = sum(ring)
            crossings = sum((ring[i] == 0) & (ring[(i + 1) % 8] == 1) for i in range(8))
            side = (n * e * s == 0) & (e * s * w == 0) if step == 0 else \
                (n * e * w == 0) & (n * s * w == 0)
            remove = (c == 1) & (count >= 2) & (count <= 6) & (crossings == 1) & side
            changed |= bool(remove.any())
            c[remove] = 0
    return img[1:-1, 1:-1].astype(bool)


def trace(lines):
    """Strokes (lists of (x, y) pixel centres) that walk every edge between 8-neighbours of
    the centre lines once, starting at end points; isolated pixels are dots."""
    nodes = {tuple(p) for p in np.argwhere(lines)}

    def neighbours(p):
        return [(p[0] + dy, p[1] + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if (dy or dx) and (p[0] + dy, p[1] + dx) in nodes]

    edges = {frozenset((p, q)) for p in nodes for q in neighbours(p)}
    strokes = [[p] for p in sorted(nodes) if not neighbours(p)]
    while edges:
        free = {p: [q for q in neighbours(p) if frozenset((p, q)) in edges] for p in nodes}
        odd = [p for p in sorted(nodes) if len(free[p]) % 2]
        path = [odd[0] if odd else min(p for e in edges for p in e)]
        while free[path[-1]]:
            q = free[path[-1]].pop(0)
            free[q].remove(path[-1])
            edges.discard(frozenset((path[-1], q)))
            path.append(q)
        strokes.append(path)
    return [[(x + 0.5, y + 0.5) for y, x in s] for s in strokes]


@pytest.fixture(scope="module")
def originals():
    """read(class_name, k): the k-th 105x105 original of a character, as boolean ink."""
    zips = [zipfile.ZipFile(OMNIGLOT / f"{root}.zip")
            for root in ("images_background", "images_evaluation")]
    members = {}
    for z in zips:
        for m in sorted(z.namelist()):
            if m.endswith(".png"):
                members.setdefault(m.split("/", 1)[1].rsplit("/", 1)[0], []).append((z, m))

    def read(class_name, k):
        z, m = members[class_name][k]
        return np.asarray(Image.open(io.BytesIO(z.read(m))).convert("L")) < 128
    yield read
    for z in zips:
        z.close()


# ---------------------------------------------------------------- preprocessing

def test_downsample_picks_the_pixels_pillow_nearest_picks(rng):
    image = (rng.random((105, 105)) < 0.5).astype(np.uint8) * 255
    pillow = np.asarray(Image.fromarray(image).resize((28, 28), Image.NEAREST))
    np.testing.assert_array_equal(preprocess.downsample(image), pillow)


def test_drawing_is_cropped_centred_and_drawn_with_omniglots_width():
    """An L of two strokes: its ink spans BOX pixels, centred, strokes WIDTH pixels wide."""
    strokes = [[(10, 10), (10, 50.3)], [(10, 50.3), (40, 50.3)]]        # any units, any place
    ink = preprocess.render(preprocess.fit_to_frame(strokes))
    rows, cols = np.nonzero(ink)
    assert rows.max() - rows.min() + 1 == preprocess.BOX                  # long side: 40 -> 64
    assert abs((rows.max() + rows.min() + 1) / 2 - 105 / 2) <= 0.5        # centred
    assert abs((cols.max() + cols.min() + 1) / 2 - 105 / 2) <= 0.5
    middle_row, middle_col = (rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2
    assert abs(ink[middle_row].sum() - preprocess.WIDTH) <= 1             # across the stem
    assert abs(ink[:, middle_col].sum() - preprocess.WIDTH) <= 1          # across the bar


def test_the_model_sees_black_strokes_on_white_wherever_and_however_large_it_was_drawn():
    strokes = [[(0, 0), (30, 45), (60, 0)], [(15, 22), (45, 22)], [(70, 40)]]
    x = preprocess.drawing_to_input(strokes)
    assert x.shape == (28, 28, 1) and x.dtype == np.float32
    assert set(np.unique(x)) == {0.0, 1.0} and (x == 1).mean() > 0.7     # mostly background
    moved = [[(3.7 * a + 250, 3.7 * b - 80) for a, b in s] for s in strokes]
    np.testing.assert_array_equal(preprocess.drawing_to_input(moved), x)


def render_segment_by_segment(strokes, size=105, r=2.5):
    """render's definition, a segment at a time (as it was first written): the strokes
    thinned to 1-pixel steps, each segment's window of pixels tested on its own."""
    ink = np.zeros((size, size), bool)
    for s in strokes:
        keep = [0]
        for i in range(1, len(s)):
            if np.abs(s[i] - s[keep[-1]]).max() >= 1 or i == len(s) - 1:
                keep.append(i)
        s = s[keep]
        for a, b in zip(s, s[1:]) if len(s) > 1 else [(s[0], s[0])]:
            x0, y0 = np.maximum(np.floor(np.minimum(a, b) - r), 0).astype(int)
            x1, y1 = np.minimum(np.ceil(np.maximum(a, b) + r), size).astype(int)
            if x0 >= x1 or y0 >= y1:
                continue                                        # off the image
            py, px = np.mgrid[y0:y1, x0:x1] + 0.5
            d = b - a
            t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
            ink[y0:y1, x0:x1] |= (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 \
                <= r * r
    return ink


def test_render_inks_the_pixels_a_segment_at_a_time_would(rng):
    """The vectorised render, pixel for pixel: dots, repeated points, strokes long and short,
    in the frame and across its edges."""
    for _ in range(60):
        strokes = []
        for _ in range(rng.integers(1, 5)):
            points = rng.integers(1, 40)
            if rng.random() < 0.5:                           # scattered: long segments
                s = rng.uniform(-20, 125, (points, 2))
            else:                                            # a walk: short ones, repeats
                s = 50 + np.cumsum(np.round(rng.normal(0, 2, (points, 2)), 1), axis=0)
            strokes.append(s)
        np.testing.assert_array_equal(preprocess.render(strokes),
                                      render_segment_by_segment(strokes))


@needs_omniglot
def test_traced_omniglot_characters_redraw_their_originals(originals):
    """Centre lines drawn back at WIDTH cover the original strokes: the same stroke width."""
    ds = load_dataset(embedded_omniglot())
    for c in ds.splits["test"][:5]:
        ink = originals(ds.class_names[c], 0)
        redrawn = preprocess.render([np.asarray(s) for s in trace(centre_lines(ink))])
        assert 0.85 < redrawn.sum() / ink.sum() < 1.15
        assert (redrawn & ink).sum() / (redrawn | ink).sum() > 0.8        # intersection/union


# ---------------------------------------------------------------- the learner

@pytest.fixture(scope="module")
def shipped():
    """(Learner, N, description) of the shipped checkpoint, on one BLAS thread as the CLI has it."""
    backend.set_backend("cpu")
    parallel.set_threads(1)
    return load_learner(SHIPPED, None, 1, None, seed=0)


def test_learner_watches_every_step_and_predicts_as_evaluate_does(shipped):
    learner, classes, _ = shipped
    ds = load_dataset(embedded_omniglot())
    images = ds.read([ds.offsets[c] for c in ds.splits["test"][:classes]])
    images = images.astype(np.float32) / 255
    result = learner.learn(images, np.arange(classes), images[1])         # query: class 1
    for name in ("meta", "scratch"):
        steps = np.array(result[name]["steps"])
        assert steps.shape == (learner.cfg.eval_iters + 1, classes)
        np.testing.assert_allclose(steps.sum(axis=1), 1, rtol=1e-5)
        assert result[name]["predicted"] == steps[-1].argmax()           # evaluate's rule
    assert result["meta"]["predicted"] == 1                               # its own shot
    assert not np.allclose(result["meta"]["steps"][0], result["scratch"]["steps"][0])


# ---------------------------------------------------------------- the server's answers

def serving_shipped(shipped, **options):
    """A demo server (make_server's options) of the shipped learner, 3-way 1-shot, on a free
    port, serving in a thread while the block runs."""
    learner, classes, model = shipped
    return serving(DrawingApp(learner, classes, 1, model), **options)


@pytest.fixture(scope="module")
def httpd(shipped):
    with serving_shipped(shipped) as httpd:
        yield httpd


@pytest.fixture(scope="module")
def server(httpd):
    """The port of the module's demo server."""
    return httpd.server_address[1]


JSON = {"Content-Type": "application/json"}


def request(port, path, body=None, method=None, headers=JSON):
    """(status, JSON reply) of one request; body: bytes sent as they are."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


DOT, LINE = [[[5, 5]]], [[[0, 0], [10, 10]]]


@pytest.mark.parametrize("path, body, method, status, message", [
    ("/nothing", None, "GET", 404, "no page at /nothing"),
    ("/static/../server.py", None, "GET", 404, "no page at"),
    ("/nothing", b"{}", "POST", 404, "no page at /nothing"),
    ("/learn", None, "GET", 405, "GET /learn is not supported"),
    ("/learn", b"{}", "PUT", 405, "PUT /learn is not supported"),
    ("/learn", b"{not json", "POST", 400, "not valid JSON"),
    ("/learn", b"\xff\xfe", "POST", 400, "not valid JSON"),
    ("/learn", b'{"support": [NaN], "query": []}', "POST", 400, "NaN is not a number"),
    ("/learn", b"[1, 2]", "POST", 400, "JSON object with 'support'"),
    ("/learn", json.dumps({"support": [LINE, [], LINE], "query": LINE}).encode(), "POST", 400,
     "class 2: the canvas is empty; draw a character there"),
    ("/learn", json.dumps({"support": [LINE] * 3, "query": []}).encode(), "POST", 400,
     "query: the canvas is empty"),
    ("/learn", json.dumps({"support": [LINE] * 2, "query": LINE}).encode(), "POST", 400,
     "'support' must be a list of 3 drawings (3 classes x 1 each), got 2"),
    ("/learn", json.dumps({"support": [LINE, [[[0, "a"]]], LINE], "query": LINE}).encode(),
     "POST", 400, "class 2: a stroke must be a non-empty list of [x, y] points"),
    ("/learn", b'{"support": [[[[0, 0]]], [[[0, 0]]], [[[0, 1e999]]]], "query": [[[0, 0]]]}',
     "POST", 400, "class 3: a stroke must be"),
    ("/preview", json.dumps({"drawing": [[[1, 2, 3]]]}).encode(), "POST", 400,
     "drawing: a stroke must be"),
    pytest.param("/learn", json.dumps({"support": [LINE] * 3, "query": DOT * 101}).encode(),
                 "POST", 400, "query: 101 strokes; a drawing may have at most 100",
                 id="learn-query-of-101-strokes"),
    ("/learn", None, "OPTIONS", 501, "Unsupported method ('OPTIONS')"),   # no CORS preflight
])
def test_bad_requests_get_a_4xx_answer_and_the_server_keeps_serving(server, path, body,
                                                                    method, status, message):
    got, reply = request(server, path, body, method)
    assert (got, message in reply["error"]) == (status, True), reply
    assert request(server, "/config")[0] == 200


def test_oversized_and_unsized_bodies_are_refused_unread(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.putrequest("POST", "/learn")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders(b"{}")                                  # the rest never comes
    reply = conn.getresponse()
    assert reply.status == 413 and "at most" in json.load(reply)["error"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.putrequest("POST", "/preview")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    reply = conn.getresponse()
    assert reply.status == 411 and "Content-Length" in json.load(reply)["error"]
    conn.close()


def test_preview_and_learn_answer_with_what_the_model_sees(server):
    status, reply = request(server, "/preview", json.dumps({"drawing": LINE}).encode())
    assert status == 200
    np.testing.assert_array_equal(reply["image"], preprocess.drawing_to_input(LINE)[..., 0])
    drawings = [LINE, [[[0, 0], [10, 0]], [[5, 0], [5, 10]]], DOT]
    status, reply = request(server, "/learn", json.dumps({"support": drawings,
                                                          "query": LINE}).encode())
    assert status == 200
    for image, drawing in zip(reply["support"] + [reply["query"]], drawings + [LINE]):
        np.testing.assert_array_equal(image, preprocess.drawing_to_input(drawing)[..., 0])
    assert reply["meta"]["predicted"] == 0 and reply["seconds"] > 0      # its own drawing


# ---------------------------------------------------------------- the server's protections

def exchange(port, method, path, headers, body=None):
    """(status, JSON reply) of one request with exactly these headers, Host included (values
    str, or bytes sent as they are); body: bytes, with its Content-Length unless headers
    have one."""
    if body is not None and "Content-Length" not in headers:
        headers = {**headers, "Content-Length": str(len(body))}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    with contextlib.closing(conn):
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        reply = conn.getresponse()
        return reply.status, json.load(reply)


DOT_BODY = json.dumps({"drawing": DOT}).encode()


def short(value):
    """A test's id for a parameter: itself, or its start and length if it is long."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}...({len(text)})"


@pytest.mark.parametrize("host, status", [
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("[::1]:{port}", 200),
    ("localhost", 200), ("LocalHost:{port}", 200),
    ("evil.example", 403), ("evil.example:{port}", 403),            # a name rebound to us
    ("127.0.0.1.evil.example:{port}", 403), ("localhost:1{port}", 403), (None, 403),
])
def test_only_requests_to_a_local_name_are_answered(server, host, status):
    """DNS rebinding: a page whose name now points at 127.0.0.1 sends that name in Host; it
    can neither read the answers (GET /config) nor drive the model (POST /preview)."""
    headers = {} if host is None else {"Host": host.format(port=server)}
    got = [exchange(server, "GET", "/config", headers),
           exchange(server, "POST", "/preview", {**headers, **JSON}, DOT_BODY)]
    assert [status for status, _ in got] == [status, status], got
    assert status == 200 or all("refused" in reply["error"] for _, reply in got)
    assert request(server, "/config")[0] == 200


@pytest.mark.parametrize("origin, status", [
    ("http://127.0.0.1:{port}", 200), ("http://localhost:{port}", 200),
    ("http://[::1]:{port}", 200), (None, 200),
    ("http://evil.example", 403), ("http://evil.example:{port}", 403), ("null", 403),
    ("https://127.0.0.1:{port}", 403), ("http://localhost:1{port}", 403),
])
def test_requests_from_other_pages_are_refused(server, origin, status):
    """A page of another site that posts here directly: the browser says where from (Origin)."""
    headers = {"Host": f"127.0.0.1:{server}", **JSON}
    if origin is not None:
        headers["Origin"] = origin.format(port=server)
    got = [exchange(server, "POST", "/preview", headers, DOT_BODY),
           exchange(server, "GET", "/config", headers)]
    assert [status for status, _ in got] == [status, status], got
    assert status == 200 or all("refused" in reply["error"] for _, reply in got)
    assert request(server, "/config")[0] == 200


@pytest.mark.parametrize("content_type, status", [
    ("application/json", 200), ("application/json; charset=utf-8", 200),
    ("Application/JSON", 200),
    ("text/plain", 415), ("text/plain; charset=utf-8", 415),          # a form or fetch may
    ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
    (None, 415),
])
def test_posts_must_be_declared_json(server, content_type, status):
    """The content types another site's page may post without a CORS preflight are refused."""
    headers = {"Host": f"127.0.0.1:{server}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    got, reply = exchange(server, "POST", "/preview", headers, DOT_BODY)
    assert got == status, reply
    assert status == 200 or "Content-Type: application/json" in reply["error"]
    assert request(server, "/config")[0] == 200


def zigzag(n):
    """A stroke of n points, none repeated next to its neighbour."""
    return [[i % 2, i % 3] for i in range(n)]


@pytest.mark.parametrize("drawing, status, message", [
    ([[[i, 0]] for i in range(MAX_STROKES)], 200, None),
    ([[[i, 0]] for i in range(MAX_STROKES + 1)], 400,
     f"drawing: {MAX_STROKES + 1} strokes; a drawing may have at most {MAX_STROKES}"),
    ([zigzag(MAX_POINTS)], 200, None),
    ([zigzag(MAX_POINTS + 1)], 400,
     f"drawing: {MAX_POINTS + 1} points; a drawing may have at most {MAX_POINTS}"),
    ([zigzag(1000), zigzag(MAX_POINTS - 999)], 400, f"{MAX_POINTS + 1} points"),
    ([[[0, 0]] * 172_550], 400, "172550 points"),     # the review's 1 MiB drawing (48 s once)
], ids=["100-strokes", "101-strokes", "2000-points", "2001-points", "2001-in-2-strokes",
        "172550-points"])
def test_drawings_over_the_caps_are_refused(server, drawing, status, message):
    body = json.dumps({"drawing": drawing}, separators=(",", ":")).encode()
    assert len(body) <= MAX_BODY
    got, reply = request(server, "/preview", body)
    assert got == status, reply
    assert status == 200 or reply["error"] == message or message in reply["error"]
    assert request(server, "/config")[0] == 200


@pytest.mark.parametrize("number, status, message", [
    ("1e6", 200, None), ("-1000000", 200, None),
    ("1" + "0" * 400, 400, "a stroke must be"),           # 10**400: no float holds it
    ("-1" + "0" * 400, 400, "a stroke must be"),
    ("9" * 5000, 400, "a stroke must be"),                # more digits than int() reads
    ("1e308", 400, "a stroke must be"), ("-1e308", 400, "a stroke must be"),
    ("1000000.5", 400, "a stroke must be"), ("1e999", 400, "a stroke must be"),
    ("Infinity", 400, "Infinity is not a number"), ("-Infinity", 400, "is not a number"),
    ("NaN", 400, "NaN is not a number"), ("true", 400, "a stroke must be"),
], ids=short)
def test_numbers_out_of_range_are_refused(server, number, status, message):
    """Coordinates are floats within +/-1e6; anything else is a 400, not a 500 (an integer
    too large for a float) nor a blank image (+/-1e308: a bounding box of infinite size)."""
    body = b'{"drawing": [[[-1e6, 0], [%s, %s]]]}' % (number.encode(), number.encode())
    got, reply = request(server, "/preview", body)
    assert got == status, reply
    assert status == 200 or message in reply["error"]
    assert request(server, "/config")[0] == 200


def test_a_request_target_with_no_path_is_refused(server):
    """An absolute target whose address, an IPv6 one, is never closed: urlsplit raises."""
    got, reply = exchange(server, "GET", "http://[x/config", {"Host": f"127.0.0.1:{server}"})
    assert (got, reply) == (400, {"error": "bad request target 'http://[x/config'"})
    assert request(server, "/config")[0] == 200


@pytest.mark.parametrize("length", ["\u0661\u0662".encode(), "\u00b2".encode("latin-1"),
                                    b"1" * 5000, b"-1", b"0x10", b"12abc", b""], ids=short)
def test_malformed_content_lengths_are_refused(server, length):
    """Only ASCII digits: int() also reads Arabic-Indic digits and fails on a superscript two
    (which str.isdigit() allows) and on 5000 digits."""
    headers = {"Host": f"127.0.0.1:{server}", **JSON, "Content-Length": length}
    got, reply = exchange(server, "POST", "/preview", headers, b"{}")
    assert (got, "bad Content-Length" in reply["error"]) == (400, True), reply
    assert request(server, "/config")[0] == 200


def test_drawings_are_checked_converted_and_learned_from_under_the_lock(httpd, server,
                                                                        monkeypatch):
    """Requests in other threads wait for the one doing CPU work: each step holds the lock."""
    app, held = httpd.routes[("POST", "/learn")].__self__, []

    def watched(fn):
        def call(*args):
            held.append(app.lock.locked())
            return fn(*args)
        return call
    for name in ("_drawing", "drawing_to_input"):
        monkeypatch.setattr(demo_drawing, name, watched(getattr(demo_drawing, name)))
    monkeypatch.setattr(app.learner, "learn", watched(app.learner.learn))
    assert request(server, "/preview", DOT_BODY)[0] == 200
    assert request(server, "/learn", json.dumps({"support": [LINE, DOT, LINE],
                                                 "query": DOT}).encode())[0] == 200
    assert held == [True] * (2 + 4 + 4 + 1)        # preview: check, convert; learn: 4 + 4 + 1


def trickle(port, head, tail, every=0.1, limit=20):
    """Send head, then tail a byte every `every` seconds, until the server closes the
    connection: (what it answered, seconds from connecting to the close), or (answer, None)
    if it has not closed after limit seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=every) as sock:
        start, answer, sent = time.monotonic(), b"", 0
        sock.sendall(head)
        while time.monotonic() - start < limit:
            try:
                if sent < len(tail):
                    sock.sendall(tail[sent:sent + 1])
                    sent += 1
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except ConnectionError:
                break
            if not chunk:
                break
            answer += chunk
        else:
            return answer, None
        return answer, time.monotonic() - start


@pytest.mark.parametrize("slow", ["headers", "body"])
def test_a_client_too_slow_to_send_its_request_is_cut_off(shipped, slow):
    """A byte every 0.1 s keeps any timeout per read happy; the request as a whole has a
    deadline (1 s here): slow headers are dropped, a slow body gets a 408."""
    with serving_shipped(shipped, deadline=1) as httpd:
        port = httpd.server_address[1]
        head = (f"POST /preview HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                f"application/json\r\nContent-Length: 400\r\n").encode()
        if slow == "headers":
            tail = b"X-Slow: " + b"a" * 400
        else:
            head, tail = head + b"\r\n", b" " * 400
        answer, seconds = trickle(port, head, tail)
        assert seconds is not None, f"still connected after 20 s (deadline 1 s): {answer}"
        if slow == "headers":
            assert answer == b""
        else:
            assert answer.startswith(b"HTTP/1.0 408 ") and answer.endswith(
                b'{"error": "the request did not come within 1 s"}'), answer
        assert request(port, "/config")[0] == 200


def test_a_connection_beyond_the_threads_is_answered_503(server):
    """THREADS clients that connect and send nothing hold every thread (until the deadline);
    one more is answered 503 at once and closed. When they hang up, requests are served."""
    idle = [socket.create_connection(("127.0.0.1", server), timeout=30) for _ in range(THREADS)]
    try:
        with socket.create_connection(("127.0.0.1", server), timeout=30) as extra:
            answer = b"".join(iter(lambda: extra.recv(4096), b""))
    finally:
        for sock in idle:
            sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 503 "), answer
    assert json.loads(body) == {"error": f"the demo server is busy ({THREADS} connections); "
                                         f"try again"}
    start = time.monotonic()
    while request(server, "/config")[0] == 503 and time.monotonic() - start < 30:
        time.sleep(0.05)                                # their threads are ending
    assert request(server, "/config")[0] == 200


def test_a_port_in_use_is_one_line_and_exit_2(server, capsys):
    assert main(["demo", "--port", str(server)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"port {server} on 127.0.0.1 is in use" in err


def test_flags_the_checkpoint_cannot_serve_are_refused(capsys):
    assert main(["demo", "--classes", "5", "--port", "0"]) == 2
    assert "trained for 3-way tasks" in capsys.readouterr().err


def start_demo(*flags):
    """`minireptile demo --port 0 FLAGS` in a subprocess; (process, its URL). SIGINT is
    restored for it: a test run started with SIGINT ignored (`cmd &` in a script) would
    pass that on, and Ctrl-C is how the tests stop the server."""
    proc = subprocess.Popen([sys.executable, "-m", "minireptile", "demo", "--port", "0",
                             *flags], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        match = re.search(r"serving (http://127\.0\.0\.1:\d+/)", line)
        if match:
            return proc, match.group(1)
    proc.kill()
    pytest.fail(f"the demo did not start: {proc.stderr.read()}")


def test_ctrl_c_stops_the_server_cleanly():
    proc, url = start_demo()
    with urllib.request.urlopen(url + "config", timeout=30) as reply:
        assert json.load(reply)["classes"] == 3
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (130, "minireptile: interrupted\n")


# ---------------------------------------------------------------- the page in Chromium

TRIALS = 4              # tasks of 3 held-out characters, each character the query once


def draw(driver, pad, strokes, kind):
    """Draw strokes given in 105x105 pixels on a pad with a mouse, pen or touch pointer."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    size = pad.size["width"]
    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=0)
    for stroke in strokes:
        points = [(round((x / 105 - 0.5) * 0.95 * size), round((y / 105 - 0.5) * 0.95 * size))
                  for x, y in stroke[::3] + stroke[-1:]]              # moves from the centre
        actions.pointer_action.move_to(pad, *points[0]).pointer_down()
        for p in points[1:]:
            actions.pointer_action.move_to(pad, *p)
        actions.pointer_action.pointer_up()
    actions.perform()


def press_learn(driver):
    """Click "learn", wait for the page's answer (or error); {init: predicted class}."""
    from selenium.webdriver.support.ui import WebDriverWait
    body = driver.find_element("tag name", "body")
    done = int(body.get_attribute("data-learned") or 0)
    driver.find_element("id", "learn").click()
    WebDriverWait(driver, 60).until(lambda d: body.get_attribute("data-learned") == str(done + 1))
    return {init: driver.find_element("id", init).get_attribute("data-predicted")
            for init in ("meta", "scratch")}


def replayed(driver):
    """The page's replay of the adaptation steps has ended (its slider at the last step)."""
    return (driver.find_element("id", "step-label").text
            == driver.find_element("id", "step").get_attribute("max"))


@pytest.mark.slow
@needs_omniglot
def test_the_page_learns_held_out_characters_drawn_with_pointers(originals, capsys):
    """TRIALS tasks of 3 held-out characters: one drawer's image of each on the class pads,
    another drawer's of each in turn on the query pad. Pointers: mouse, pen, touch in turn."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver = browser()
    proc, url = start_demo()
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element("tag name", "body").get_attribute("data-ready"))
        pads = driver.find_elements("css selector", "canvas.pad")
        assert len(pads) == 4                                    # 3 classes x 1 shot, query
        clear_query = driver.find_elements("css selector", "button.clear")[3]
        press_learn(driver)                                      # nothing drawn yet
        message = driver.find_element("id", "message")
        assert message.text == "class 1: the canvas is empty; draw a character there"
        assert "error" in message.get_attribute("class")

        ds = load_dataset(embedded_omniglot())
        rng = np.random.default_rng(0)
        right, seconds = {"meta": 0, "scratch": 0}, []
        for trial in range(TRIALS):
            chars = [ds.class_names[c] for c in rng.choice(ds.splits["test"], 3, replace=False)]
            drawers = [rng.choice(20, 2, replace=False) for _ in chars]   # shot, query
            kind = ("mouse", "pen", "touch")[trial % 3]
            driver.find_element("id", "clear-all").click()
            for pad, char, (shot, _) in zip(pads, chars, drawers):
                draw(driver, pad, trace(centre_lines(originals(char, shot))), kind)
            for label, (char, (_, query)) in enumerate(zip(chars, drawers)):
                clear_query.click()
                draw(driver, pads[3], trace(centre_lines(originals(char, query))), kind)
                predicted = press_learn(driver)
                assert message.text == ""
                for init in right:
                    right[init] += predicted[init] == str(label)
                seconds.append(float(re.search(r"Learned in ([\d.]+) s",
                                               driver.find_element("id", "timing").text)[1]))
        n = TRIALS * 3
        with capsys.disabled():
            print(f"\ndemo in Chromium: held-out characters classified correctly: meta-learned "
                  f"{right['meta']}/{n}, random initialisation {right['scratch']}/{n} (chance "
                  f"1/3); server {np.mean(seconds):.2f} s per learn request (min "
                  f"{min(seconds):.2f}, max {max(seconds):.2f})")
        assert right["meta"] >= 9                     # chance gives >= 9 of 12 with p < 0.4%
        screenshot(driver, "demo-page.png", 1000, replayed)
        driver.set_window_size(390, 844)                                 # a phone
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(driver, "demo-phone.png", 390, replayed)
    finally:
        driver.quit()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
