"""Shared fixtures and helpers; test modules import helpers from here, never from each other.

``xp`` runs a test on NumPy and, where a GPU is visible, on CuPy; ``rng`` is a seeded host
generator; ``make_omniglot`` and ``make_miniimagenet`` write small source folders to pack;
``serving`` runs a demo server in a thread and ``browser`` starts headless Chromium (the
demo's two pages' tests).
"""
import contextlib
import os
import shutil
import threading

import numpy as np
import pytest

from minireptile import parallel

# One BLAS thread, as the command line sets it: OpenBLAS's own threads spin while they wait,
# and on a busy machine that makes in-process training many times slower.
parallel.set_threads(1)


def _cupy_or_reason():
    """(cupy, None) when CuPy imports and sees a GPU, else (None, why not)."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return None, "CuPy sees no GPU"
    except Exception as exc:  # no driver, no device
        return None, f"CuPy sees no GPU ({type(exc).__name__})"
    return cupy, None


@pytest.fixture(params=["numpy", "cupy"])
def xp(request):
    """The array module under test: numpy, then cupy (skipped without CuPy and a GPU).

    Tests generate inputs on the host with NumPy and move them with ``xp.asarray``, so both
    backends see the same numbers and CuPy's results can be compared with NumPy's.
    """
    if request.param == "numpy":
        return np
    cupy, reason = _cupy_or_reason()
    if cupy is None:
        pytest.skip(reason)
    return cupy


@pytest.fixture
def rng():
    """A seeded host generator (fresh per test, so tests do not depend on their order)."""
    return np.random.default_rng(1234)


def make_omniglot(root, alphabets=3, characters=4, drawers=5, seed=0):
    """root/<Alphabet>/characterNN/IIII_DD.png: random 105x105 1-bit images."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for a in range(alphabets):
        for c in range(characters):
            folder = root / f"Alpha{a}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(drawers):
                pixels = rng.random((105, 105)) > 0.2
                Image.fromarray(pixels).save(folder / f"{a * characters + c:04d}_{d + 1:02d}.png")
    return root


def make_miniimagenet(root, csv_layout=False):
    """3 train, 2 val, 2 test classes of 4 JPEGs (some 84x84, some larger)."""
    from PIL import Image
    rng = np.random.default_rng(1)
    classes = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
    (root / "images").mkdir(parents=True)
    for split, wnids in classes.items():
        rows = ["filename,label"]
        for wnid in wnids:
            for i in range(4):
                size = (84, 84) if i % 2 else (120, 100)
                img = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
                name = f"{wnid}{i:08d}.jpg"
                if csv_layout:
                    img.save(root / "images" / name)
                    rows.append(f"{name},{wnid}")
                else:
                    (root / split / wnid).mkdir(parents=True, exist_ok=True)
                    img.save(root / split / wnid / name)
        if csv_layout:
            (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    if not csv_layout:
        (root / "images").rmdir()
    return root


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@contextlib.contextmanager
def serving(apps, **options):
    """A demo server of apps (``make_server``'s options) on a free port, serving in a thread
    while the block runs."""
    from minireptile.demo.server import make_server
    httpd = make_server(apps, port=0, **options)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


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


def screenshot(driver, name, width, ready=None):
    """Save the whole page, width CSS pixels wide, as $MINIREPTILE_DEMO_SCREENSHOTS/name if
    that is set (written through a temporary name), once ready(driver) holds (10 s at most)."""
    folder = os.environ.get("MINIREPTILE_DEMO_SCREENSHOTS")
    if not folder:
        return
    if ready is not None:
        from selenium.webdriver.support.ui import WebDriverWait
        WebDriverWait(driver, 10).until(ready)
    frame = driver.execute_script("return window.outerHeight - window.innerHeight")
    height = driver.execute_script("return document.querySelector('footer')"
                                   ".getBoundingClientRect().bottom + window.scrollY + 16")
    driver.set_window_size(width, int(height) + frame)
    tmp = os.path.join(folder, f".{name}.tmp.png")
    with open(tmp, "wb") as f:
        f.write(driver.get_screenshot_as_png())
    os.replace(tmp, os.path.join(folder, name))
