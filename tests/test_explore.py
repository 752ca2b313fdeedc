"""`minireptile demo`'s /explore page: its answers against the meta core computed here on the
same tasks, its refusals, the lock it shares with the drawing page, and the page in Chromium.

The browser test needs Chromium, chromedriver and Selenium (as tests/test_demo.py's) and skips
with a reason without them. With MINIREPTILE_DEMO_SCREENSHOTS=DIR it saves the page's
screenshot there as demo-explore.png (docs/ holds it).
"""
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import browser, screenshot, serving

from minireptile.cli import demo as cli_demo, main
from minireptile.demo import explore
from minireptile.layers import Linear, Tanh
from minireptile.losses import MSE
from minireptile.meta import ALGOS, delta_rule, inner_steps, tile
from minireptile.metabatch import meta_update
from minireptile.models import Sequential
from minireptile.optim import SGD, Adam

MODEL = Sequential([Linear(1, 1), Tanh()], MSE(), (1,))        # theta = (w, b)
TOL = 1e-12


class Server:
    """make_server's stand-in for `minireptile demo`: serves nothing, returns at once."""
    server_address = ("127.0.0.1", 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def serve_forever(self):
        pass


@pytest.fixture(scope="module")
def httpd():
    with serving(explore.ExploreApp()) as httpd:
        yield httpd


@pytest.fixture(scope="module")
def port(httpd):
    return httpd.server_address[1]


def request(port, path, body):
    """(status, JSON reply) of a POST; body: an object sent as JSON, or bytes as they are."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


# ---------------------------------------------------------------- the core, computed here

def batches_of(reply):
    """The tasks' train and test batches (x (n, B, 1), y (n, B, 1)) from an answer's points."""
    def batch(part):
        return tuple(np.array([t[part][v] for t in reply["tasks"]])[..., None] for v in "xy")
    return batch("train"), batch("test")


def inner(s):
    return SGD(s["alpha"]) if s.get("optimizer", "sgd") == "sgd" else Adam(s["alpha"], beta1=0)


def core_update(algo, theta, train, test, s, optimizer):
    """theta + epsilon mean_i Delta_i: metabatch.meta_update with meta.delta_rule, on the
    train points k times, then (all but Reptile) the test points."""
    batches = [train] * s["k"] + ([] if algo == "reptile" else [test])
    rule = delta_rule(algo, imaml={"lam": s.get("lam", 1.0), "cg_steps": 2})
    return meta_update(rule, MODEL, np.array(theta), batches, optimizer, s["epsilon"])[0]


def mean_train_gradient(theta, train):
    """mean_i L_i'(theta), L_i = mean_j (tanh(w x_j + b) - y_j)^2, by hand (not the library)."""
    x, y = train[0][..., 0], train[1][..., 0]                            # (n, B)
    t = np.tanh(theta[0] * x + theta[1])
    d = 2 * (t - y) * (1 - t * t)                                        # dL/dz per point
    return np.array([(d * x).mean(axis=1).mean(), d.mean(axis=1).mean()])


SETTINGS = [
    {"theta": [0.7, -0.3], "k": 1, "alpha": 0.1, "epsilon": 1.0, "tasks": 3, "points": 1,
     "seed": 0, "grid": True},
    {"theta": [-1.2, 0.8], "k": 7, "alpha": 0.25, "epsilon": 0.5, "lam": 2.0, "tasks": 8,
     "points": 5, "seed": 12345},
    {"theta": [2.0, 1.5], "k": 4, "alpha": 0.05, "epsilon": 1.5, "optimizer": "adam",
     "tasks": 2, "points": 2, "seed": 7},
]


@pytest.mark.parametrize("s", SETTINGS, ids=["k1-grid", "k7-8tasks", "adam"])
def test_state_is_the_core_on_the_same_tasks(port, s):
    """Every number of /explore/state against meta.inner_steps, meta.delta_rule +
    metabatch.meta_update, the model's gradients and Hessian-vector products, and the loss by
    hand, on the answer's own points (which are the seed's and fit y = tanh(a x + c)): 1e-12."""
    status, r = request(port, "/explore/state", s)
    assert status == 200, r
    train, test = batches_of(r)
    tasks = explore.draw_tasks(s["seed"], s["tasks"], s["points"])
    for mine, theirs in zip((train, test), (tasks.train, tasks.test)):
        np.testing.assert_array_equal(mine, theirs)
    a, c = (np.array([t[v] for t in r["tasks"]])[:, None, None] for v in "ac")
    np.testing.assert_allclose(train[1], np.tanh(a * train[0] + c), rtol=0, atol=TOL)
    theta, n = np.array(s["theta"]), s["tasks"]
    steps = inner_steps(MODEL, tile(theta, n), [train] * s["k"], inner(s))
    phis = [tile(theta, n)] + [step.phi for step in steps]
    np.testing.assert_allclose([t["trajectory"] for t in r["tasks"]], np.stack(phis, axis=1),
                               rtol=0, atol=TOL)
    for algo in ALGOS:
        if s.get("optimizer") == "adam" and algo in ("maml", "imaml"):
            assert "SGD" in r["updates"][algo]["error"]
            continue
        want = core_update(algo, theta, train, test, s, inner(s))
        np.testing.assert_allclose(r["updates"][algo]["end"], want, rtol=0, atol=TOL)
    if s.get("optimizer") == "adam":
        assert "SGD" in r["section51"]["error"]
        return
    k, alpha, eps, o = s["k"], s["alpha"], s["epsilon"], r["section51"]
    g = MODEL.grad(tile(theta, n), *train)
    avg, inner_term = g.mean(axis=0), MODEL.hvp(tile(theta, n), *train, g).mean(axis=0)
    np.testing.assert_allclose(o["avg_grad"], mean_train_gradient(theta, train), atol=TOL)
    np.testing.assert_allclose(o["avg_grad_inner"], inner_term, rtol=0, atol=TOL)
    assert o["coefficients"] == {"reptile": [k, -k * (k - 1) / 2 * alpha],     # Eq. (41)
                                 "fomaml": [1, -k * alpha],                    # (39), k + 1
                                 "maml": [1, -2 * k * alpha]}                  # (37), k + 1
    terms = [-eps * alpha * k * avg, eps * alpha * k * (k - 1) / 2 * alpha * inner_term]
    np.testing.assert_allclose(o["terms"], terms, rtol=0, atol=TOL)
    np.testing.assert_allclose(o["predicted"], theta + terms[0] + terms[1], rtol=0, atol=TOL)
    if k == 1:                          # Reptile = theta - epsilon alpha mean_i g_i, Eqs. (6)-(7)
        np.testing.assert_allclose(r["updates"]["reptile"]["end"], o["predicted"], atol=TOL)
    if s.get("grid"):
        axis = np.linspace(-4, 4, 41)
        np.testing.assert_array_equal(r["grid"]["axis"], axis)
        w, b = axis[None, None, :, None], axis[None, :, None, None]     # [task, b, w, point]
        x, y = train[0][:, None, None, :, 0], train[1][:, None, None, :, 0]
        losses = ((np.tanh(w * x + b) - y) ** 2).mean(axis=-1)          # (n, 41, 41)
        np.testing.assert_allclose(r["grid"]["tasks"], losses, rtol=0, atol=TOL)
        np.testing.assert_allclose(r["grid"]["mean"], losses.mean(axis=0), rtol=0, atol=TOL)
    else:
        assert "grid" not in r
    assert r["seconds"] > 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_run_paths_are_meta_updates_and_k1_reptile_is_sgd_on_the_mean_loss(port, optimizer):
    """/explore/run: each path is meta_update after meta_update (the inner optimizer's state
    carried along), 1e-12; with k = 1 and SGD, Reptile's path is SGD on the mean train loss,
    theta <- theta - epsilon alpha mean_i L_i'(theta) with the gradient by hand (Eqs. 6-7)."""
    s = {"theta": [1.0, -0.5], "k": 3, "alpha": 0.2, "epsilon": 0.8, "tasks": 3, "points": 2,
         "seed": 3, "steps": 5, "optimizer": optimizer}
    status, r = request(port, "/explore/run", s)
    assert status == 200, r
    tasks = explore.draw_tasks(s["seed"], s["tasks"], s["points"])
    for algo in ALGOS:
        if optimizer == "adam" and algo in ("maml", "imaml"):
            assert "SGD" in r["paths"][algo]["error"]
            continue
        opt, path = inner(s), [np.array(s["theta"])]
        for _ in range(s["steps"]):
            path.append(core_update(algo, path[-1], tasks.train, tasks.test, s, opt))
        np.testing.assert_allclose(r["paths"][algo]["path"], path, rtol=0, atol=TOL)
        end = tile(path[-1], s["tasks"])
        assert r["paths"][algo]["train_loss"] == pytest.approx(
            MODEL.loss(end, *tasks.train).mean(), abs=TOL)
    status, r = request(port, "/explore/run", {**s, "k": 1, "optimizer": "sgd"})
    path = [np.array(s["theta"])]
    for _ in range(s["steps"]):
        g = mean_train_gradient(path[-1], tasks.train)
        path.append(path[-1] - s["epsilon"] * s["alpha"] * g)
    np.testing.assert_allclose(r["paths"]["reptile"]["path"], path, rtol=0, atol=TOL)


@pytest.mark.parametrize("path, body, message", [
    ("/explore/state", {"k": 0}, "k must be a whole number from 1 to 20"),
    ("/explore/state", {"k": 21}, "k must be a whole number from 1 to 20"),
    ("/explore/state", {"k": 2.5}, "k must be a whole number from 1 to 20"),
    ("/explore/state", {"k": True}, "k must be a whole number"),
    ("/explore/state", {"tasks": 9}, "tasks must be a whole number from 1 to 8"),
    ("/explore/state", {"points": 6}, "points must be a whole number from 1 to 5"),
    ("/explore/run", {"steps": 201}, "steps must be a whole number from 1 to 200"),
    ("/explore/run", {"steps": 0}, "steps must be a whole number from 1 to 200"),
    ("/explore/state", {"seed": -1}, "seed must be a whole number from 0 to 2147483647"),
    ("/explore/state", {"alpha": 0}, "alpha must be a number from 0.001 to 2"),
    ("/explore/state", b'{"alpha": 1e999}', "alpha must be a number"),
    ("/explore/state", b'{"alpha": NaN}', "NaN is not a number"),
    ("/explore/run", b'{"epsilon": -Infinity}', "-Infinity is not a number"),
    ("/explore/state", {"epsilon": 2.5}, "epsilon must be a number from 0 to 2"),
    ("/explore/state", {"lam": 1000}, "lam must be a number from 0.01 to 100"),
    ("/explore/state", {"theta": [1, 2, 3]}, "theta must be [w, b], two numbers from -10 to 10"),
    ("/explore/state", {"theta": [10.5, 0]}, "theta must be [w, b]"),
    ("/explore/run", {"theta": ["1", 0]}, "theta must be [w, b]"),
    ("/explore/state", b'{"theta": [1e400, 0]}', "theta must be [w, b]"),
    ("/explore/state", {"optimizer": "rmsprop"}, "optimizer must be sgd or adam"),
    ("/explore/state", {"grid": "yes"}, "grid must be true or false"),
    ("/explore/state", {"grid": 1}, "grid must be true or false"),
    ("/explore/state", {"size": 401}, "unknown setting 'size'"),
    ("/explore/state", [1, 2], "the request needs a JSON object of settings"),
], ids=lambda v: v if isinstance(v, str) and v.startswith("/") else None)
def test_refusals_are_400_one_liners_and_the_server_goes_on(port, path, body, message):
    status, r = request(port, path, body)
    assert (status, message in r["error"], "\n" in r["error"]) == (400, True, False), r
    assert request(port, "/explore/state", {})[0] == 200


def test_the_work_runs_under_the_lock_the_drawing_page_shares(httpd, port, monkeypatch,
                                                              capsys):
    """Each core call of a request holds the app's lock; `minireptile demo` gives the drawing
    page's app and this one the same lock."""
    app, held = httpd.routes[("POST", "/explore/state")].__self__, []

    def watched(fn):
        def call(*args, **kwargs):
            held.append(app.lock.locked())
            return fn(*args, **kwargs)
        return call
    for name in ("meta_update", "inner_steps", "draw_tasks", "settings"):
        monkeypatch.setattr(explore, name, watched(getattr(explore, name)))
    assert request(port, "/explore/state", {"grid": True})[0] == 200
    assert request(port, "/explore/run", {"steps": 1})[0] == 200
    assert held == [True] * (3 + 4 + 2 + 4)   # state: settings, tasks, trajectories, 4
    made = []                                 # updates; run: settings, tasks, 4 paths
    monkeypatch.setattr(cli_demo, "make_server", lambda apps, port: made.append(apps) or Server())
    assert main(["demo", "--port", "0", "--threads", "1"]) == 0
    (drawing, explorer), = made
    assert drawing.lock is explorer.lock and isinstance(explorer, explore.ExploreApp)
    assert "http://127.0.0.1:0/explore" in capsys.readouterr().out


# ---------------------------------------------------------------- the page in Chromium


def settled(driver, act):
    """Do act(), then wait until the page has drawn the server's answer for its controls;
    the settings that answer was computed with."""
    from selenium.webdriver.support.ui import WebDriverWait

    def body(name):
        return driver.find_element("tag name", "body").get_attribute(name)
    drawn = int(body("data-state") or 0)
    act()
    WebDriverWait(driver, 60).until(lambda d: body("data-settled") == "true"
                                    and int(body("data-state") or 0) > drawn)
    return json.loads(driver.find_element("id", "plane").get_attribute("data-settings"))


def drag(driver, kind, to):
    """Drag theta with a mouse or touch pointer to `to`, pixels from the plane's centre."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    plane = driver.find_element("id", "plane")
    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind), duration=50)
    actions.pointer_action.move_to(plane, 0, 0).pointer_down()
    for f in (0.3, 0.7, 1.0):
        actions.pointer_action.move_to(plane, round(f * to[0]), round(f * to[1]))
    actions.pointer_action.pointer_up()
    actions.perform()


def on_page(driver, element_id):
    """An element's data-x, data-y: the point it marks, in parameters."""
    e = driver.find_element("id", element_id)
    return np.array([float(e.get_attribute("data-x")), float(e.get_attribute("data-y"))])


def check_arrows(driver, s):
    """The page's four arrow ends against the core on the same tasks (1e-6), MAML's and
    iMAML's only with SGD; with k = 1 and SGD, Reptile's end against theta - epsilon alpha
    mean_i L_i'(theta), the train losses' gradients by hand (Eqs. 6-7). Returns theta."""
    theta = on_page(driver, "theta")
    np.testing.assert_array_equal(theta, s["theta"])
    tasks = explore.draw_tasks(s["seed"], s["tasks"], s["points"])
    for algo in ALGOS:
        if s["optimizer"] == "sgd" or algo in ("reptile", "fomaml"):
            want = core_update(algo, theta, tasks.train, tasks.test, s, inner(s))
            np.testing.assert_allclose(on_page(driver, "arrow-" + algo), want, rtol=0,
                                       atol=1e-6)
    if s["k"] == 1 and s["optimizer"] == "sgd":
        sgd = theta - s["epsilon"] * s["alpha"] * mean_train_gradient(theta, tasks.train)
        np.testing.assert_allclose(on_page(driver, "arrow-reptile"), sgd, rtol=0, atol=1e-6)
    return theta


@pytest.mark.slow
def test_the_page_draws_the_cores_updates_as_theta_is_dragged(httpd, port):
    """Drag theta with a mouse, then set k = 1, drag with touch, set k = 5: after each, every
    arrow's end on the page is the core's (``check_arrows``); then the section 5.1 overlay's
    end, the run's four path ends against meta_update run here, each task's contours, and a
    phone's width (390 CSS pixels: no horizontal scrolling)."""
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
    driver = browser()
    try:
        start = settled(driver, lambda: driver.get(f"http://127.0.0.1:{port}/explore"))
        assert driver.find_element("css selector", "a[href='/']")
        before = check_arrows(driver, start)
        plane = driver.find_element("id", "plane")
        s = settled(driver, lambda: drag(driver, "mouse", (-0.25 * plane.size["width"],
                                                           -0.2 * plane.size["width"])))
        moved = check_arrows(driver, s) - before          # 8 / 446 parameters per pixel
        assert moved[0] < -1.2 and moved[1] > 0.9, moved
        k = driver.find_element("id", "k")
        s = settled(driver, lambda: k.send_keys(Keys.HOME))
        assert s["k"] == 1
        check_arrows(driver, s)
        s = settled(driver, lambda: drag(driver, "touch", (0.193 * plane.size["width"],
                                                           0.056 * plane.size["width"])))
        assert s["k"] == 1 and s["theta"][0] > 1.2 and s["theta"][1] < 0, s["theta"]
        check_arrows(driver, s)
        s = settled(driver, lambda: k.send_keys(*[Keys.RIGHT] * 4))
        assert s["k"] == 5
        theta = check_arrows(driver, s)
        driver.find_element("id", "overlay-toggle").click()
        tasks = explore.draw_tasks(s["seed"], s["tasks"], s["points"])
        terms = explore.section51(theta, tasks, s)                     # tested above
        np.testing.assert_allclose(on_page(driver, "overlay-avg-grad-inner"), terms["predicted"],
                                   rtol=0, atol=1e-6)
        body = driver.find_element("tag name", "body")
        driver.find_element("id", "run").click()
        WebDriverWait(driver, 60).until(lambda d: body.get_attribute("data-runs") == "1")
        steps = int(driver.find_element("id", "steps").get_attribute("value"))
        for algo in ALGOS:
            opt, end = inner(s), theta
            for _ in range(steps):
                end = core_update(algo, end, tasks.train, tasks.test, s, opt)
            shown = driver.find_element("css selector", f"#path-{algo} .path-end")
            np.testing.assert_allclose([float(shown.get_attribute("data-x")),
                                        float(shown.get_attribute("data-y"))], end, atol=1e-6)
        assert driver.find_element("id", "message").text == ""
        Select(driver.find_element("id", "contour-mode")).select_by_value("tasks")
        contours = driver.find_elements("css selector", "#contours path.task")
        assert len({c.get_attribute("stroke") for c in contours}) == s["tasks"]
        screenshot(driver, "demo-explore.png", 1000)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
        assert driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        driver.quit()
