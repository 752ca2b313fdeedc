"""Drawings to model inputs: strokes -> a 105x105 Omniglot-like image -> 28x28, as packed.

Omniglot's originals are 105x105, black strokes on white, about 5 pixels wide; a character's
bounding box has a long side of 64 pixels (median; 49-82 for 80% of them) and sits in the
middle of the frame (measured on 300 images of images_evaluation.zip). A drawing made in the
browser is brought to that form:

    1. crop and centre: scale the strokes' points so that the long side of their bounding box,
       strokes included, is BOX pixels, and put the box's centre at the frame's centre;
    2. render: a pixel is ink when its centre is within WIDTH / 2 of a stroke's centre line
       (the segments between consecutive points; a single point is a dot);
    3. downsample 105 -> 28 by nearest neighbour, as the packer does it (Pillow's
       ``Image.NEAREST``: output pixel i reads source pixel floor((i + 0.5) * 105 / 28));
    4. strokes 0, background 1, float32 (H, W, 1): the sampler's 0/1 floats, not inverted.

A drawing is a list of strokes, a stroke a list of (x, y) points in any unit (canvas pixels):
only the shape matters, not where or how large it was drawn.
"""
import numpy as np

FRAME = 105         # Omniglot's original images: 105 x 105
BOX = 64            # long side of a character's bounding box in the frame (Omniglot's median)
WIDTH = 5.0         # stroke width in the frame (Omniglot's, measured as the narrowest ink run)
SIZE = 28           # the model's input (the packer's 28 x 28)
CHUNK = 1 << 15     # pixels render measures at once: float arrays of 256 kB stay in cache


def fit_to_frame(strokes):
    """Crop and centre: the strokes as float arrays (n_i, 2) of (x, y) in frame pixels.

    The bounding box of the points grows by WIDTH (the strokes' own width) and is scaled to a
    long side of BOX, centred at FRAME / 2. A drawing of one point stays one dot.
    """
    strokes = [np.asarray(s, np.float64).reshape(-1, 2) for s in strokes]
    points = np.concatenate(strokes)
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = (hi - lo).max()
    scale = (BOX - WIDTH) / extent if extent > 0 else 1.0
    centre = (lo + hi) / 2
    return [(s - centre) * scale + FRAME / 2 for s in strokes]


def render(strokes, size=FRAME, width=WIDTH):
    """Boolean ink image (size, size): pixels whose centre lies within width/2 of a segment.

    strokes: float arrays (n_i, 2) of (x, y) in pixels, (0, 0) the image's top-left corner.
    Distance from pixel centre p to segment a-b: |p - (a + t (b - a))| with
    t = clip((p - a).(b - a) / |b - a|^2, 0, 1); a segment with a = b is a dot. Each segment
    is measured in the window of pixels its width can reach; windows of similar size are
    measured together, in NumPy arrays of at most CHUNK pixels.
    """
    a, b = segments(strokes)
    r = width / 2
    lo = np.maximum(np.floor(np.minimum(a, b) - r), 0).astype(np.int64)   # windows: [lo, hi)
    hi = np.minimum(np.ceil(np.maximum(a, b) + r), size).astype(np.int64)
    on = np.flatnonzero((hi > lo).all(axis=1))                             # on the image
    ink = np.zeros(size * size, bool)
    for group in groups((hi - lo)[on].max(axis=1), CHUNK):
        i = on[group]
        ink[window_ink(a[i], b[i], lo[i], hi[i], r, size)] = True
    return ink.reshape(size, size)


def segments(strokes):
    """The segments the strokes are drawn with, as end points a, b (m, 2): consecutive points
    of each stroke thinned to 1-pixel steps; a stroke left with one point is a dot (a = b)."""
    ends = []
    for s in strokes:
        s = thin(s, 1.0)
        ends.append((s[:-1], s[1:]) if len(s) > 1 else (s, s))
    return np.concatenate([e[0] for e in ends]), np.concatenate([e[1] for e in ends])


def groups(sides, limit):
    """Indices of windows measured together: those whose long side rounds up to the same
    multiple of 8, side, as many as limit pixels hold when each is padded to side x side."""
    rounded = -(-sides // 8) * 8
    for side in np.unique(rounded):
        members = np.flatnonzero(rounded == side)
        step = max(limit // int(side) ** 2, 1)
        for start in range(0, len(members), step):
            yield members[start:start + step]


def window_ink(a, b, lo, hi, r, size):
    """Flat indices (y * size + x) of the pixels inked by segments a-b (m, 2) in their windows
    [lo, hi) (m, 2), all measured at once in windows padded to the largest width and height.

    A padded window is moved back where it would cross the image's edge; its extra pixels lie
    at least r + 1/2 from the segment, so render's test, the same arithmetic, leaves them blank.
    """
    w, h = (hi - lo).max(axis=0)
    x = np.minimum(lo[:, 0], size - w)[:, None, None] + np.arange(w)              # (m, 1, w)
    y = np.minimum(lo[:, 1], size - h)[:, None, None] + np.arange(h)[:, None]     # (m, h, 1)
    px, py = x + 0.5, y + 0.5                                                     # centres
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = b[:, 0, None, None] - ax, b[:, 1, None, None] - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0, 1)
    near = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2 <= r * r
    return (y * size + x)[near]


def thin(points, spacing):
    """The points (n, 2) without those closer than spacing to the last one kept (the last
    point is always kept): the same line within spacing, with fewer segments. A loop over
    Python floats: each point's fate depends on the last one kept."""
    xy = points.tolist()
    keep, (last_x, last_y) = [0], xy[0]
    for i in range(1, len(xy)):
        x, y = xy[i]
        if max(abs(x - last_x), abs(y - last_y)) >= spacing or i == len(xy) - 1:
            keep.append(i)
            last_x, last_y = x, y
    return points[keep]


def nearest_indices(src, dst):
    """Source rows (or columns) of a nearest-neighbour resize src -> dst, as Pillow picks them:
    floor((i + 0.5) * src / dst) for output i."""
    return np.floor((np.arange(dst) + 0.5) * src / dst).astype(np.int64)


def downsample(image, size=SIZE):
    """Nearest-neighbour resize of a square image (H, H, ...) to (size, size, ...)."""
    idx = nearest_indices(image.shape[0], size)
    return image[idx][:, idx]


def drawing_to_input(strokes):
    """A drawing as the model sees it: float32 (28, 28, 1), strokes 0 on a background of 1."""
    ink = downsample(render(fit_to_frame(strokes)))
    return np.where(ink, 0, 1).astype(np.float32)[..., None]
