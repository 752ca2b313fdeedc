"""The drawing page's endpoints: N-way K-shot drawings in, the learner's results out.

    GET  /config          {"classes": N, "shots": K, "eval_iters": k, "model": text}
    POST /preview         {"drawing": D}                    -> {"image": 28 x 28 of 0/1}
    POST /learn           {"support": [D] * (N*K), "query": D}
                          -> {"support": images, "query": image, "meta": result,
                              "scratch": result, "seconds": time of the request}

A drawing D is a list of strokes, a stroke a list of [x, y] points; the support drawings come
class by class (class 0's K shots first). A result is ``Learner.learn``'s (the probabilities
after every inner step, the predicted class). A drawing has at most MAX_STROKES strokes and
MAX_POINTS points in all, x and y within +/-MAX_COORD (else 400, BadRequest); the server
reads numbers as floats, so an integer too large for one is refused like Infinity and NaN.
The CPU work (checking and converting the drawings, the learning) runs under the app's lock,
one request at a time.
"""
import threading
import time

import numpy as np

from .preprocess import drawing_to_input
from .server import BadRequest, field

MAX_STROKES = 100           # strokes in a drawing: a character has a handful
MAX_POINTS = 2000           # points in a drawing: the page keeps one per 1/200 of a pad's width
MAX_COORD = 1e6             # |x| and |y|: the page sends fractions of a pad's width


class DrawingApp:
    """What the endpoints answer: N-way K-shot drawings in, the learner's results out.

    learner: a ``Learner``; classes, shots: N and K (the page's canvases); model: a line
    describing the checkpoint, shown on the page. A request's drawings are checked, converted
    and learned from under ``lock`` (shared with the explore page's app when given): the CPU
    work runs one request at a time.
    """

    def __init__(self, learner, classes, shots, model, lock=None):
        self.learner, self.classes, self.shots, self.model = learner, classes, shots, model
        self.lock = lock or threading.Lock()

    def routes(self):
        """{(method, path): answer(body)} for the server."""
        return {("GET", "/config"): lambda body: self.config(),
                ("POST", "/preview"): self.preview, ("POST", "/learn"): self.learn}

    def config(self):
        return {"classes": self.classes, "shots": self.shots,
                "eval_iters": self.learner.cfg.eval_iters, "model": self.model}

    def preview(self, body):
        """The /preview answer: the drawing as the model sees it."""
        drawing = field(body, "drawing")
        with self.lock:
            return {"image": _image(drawing_to_input(_drawing(drawing, "drawing")))}

    def learn(self, body):
        """The /learn answer, timed from the parsed body to the last probability."""
        t0 = time.perf_counter()
        support, query = field(body, "support"), field(body, "query")
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
