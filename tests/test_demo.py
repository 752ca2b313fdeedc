"""`minireptile demo`: preprocessing, the learner, the server's answers, the page in Chromium.

The browser test draws held-out Omniglot characters (the real 105x105 originals, thinned to
centre lines and traced into strokes) on the page with pointer events, presses "learn" and
reads the predicted class; it needs Chromium, chromedriver and Selenium (`apt-get install
chromium chromium-driver`, `pip install selenium`), and skips with a reason without them.
With MINIREPTILE_DEMO_SCREENSHOTS=DIR it saves the page's screenshots there (docs/ holds them).
"""
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minireptile import backend
from minireptile.cli import main
from minireptile.cli.demo import SHIPPED, load_learner
from minireptile.data import embedded_omniglot, load_dataset
from minireptile.demo import preprocess
from minireptile.demo.server import MAX_BODY, DemoApp, make_server

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
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
    backend.set_threads(1)
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

@pytest.fixture(scope="module")
def server(shipped):
    learner, classes, model = shipped
    httpd = make_server(DemoApp(learner, classes, 1, model), port=0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def request(port, path, body=None, method=None, headers=None):
    """(status, JSON reply) of one request; body: bytes sent as they are."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method,
                                 headers=headers or {})
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
])
def test_bad_requests_get_a_4xx_answer_and_the_server_keeps_serving(server, path, body,
                                                                    method, status, message):
    got, reply = request(server, path, body, method)
    assert (got, message in reply["error"]) == (status, True), reply
    assert request(server, "/config")[0] == 200


def test_oversized_and_unsized_bodies_are_refused_unread(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.putrequest("POST", "/learn")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders(b"{}")                                  # the rest never comes
    reply = conn.getresponse()
    assert reply.status == 413 and "at most" in json.load(reply)["error"]
    conn.close()
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    conn.putrequest("POST", "/preview")
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


def browser():
    """Headless Chromium driven by Selenium, or a skip saying what is missing."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium and chromedriver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--window-size=1000,1300"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


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


def screenshot(driver, name, width):
    """Save the whole page, width CSS pixels wide, in $MINIREPTILE_DEMO_SCREENSHOTS, if set,
    once the replay of the steps has ended."""
    from selenium.webdriver.support.ui import WebDriverWait
    folder = os.environ.get("MINIREPTILE_DEMO_SCREENSHOTS")
    if folder:
        WebDriverWait(driver, 10).until(lambda d: d.find_element("id", "step-label").text
                                        == d.find_element("id", "step").get_attribute("max"))
        frame = driver.execute_script("return window.outerHeight - window.innerHeight")
        height = driver.execute_script("return document.querySelector('footer')"
                                       ".getBoundingClientRect().bottom + window.scrollY + 16")
        driver.set_window_size(width, int(height) + frame)
        tmp = Path(folder) / f".{name}.tmp.png"
        tmp.write_bytes(driver.get_screenshot_as_png())
        os.replace(tmp, Path(folder) / name)


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
        screenshot(driver, "demo-page.png", 1000)
        driver.set_window_size(390, 844)                                 # a phone
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(driver, "demo-phone.png", 390)
    finally:
        driver.quit()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
