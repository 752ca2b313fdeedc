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
    is drawn in the window of pixels its width can reach.
    """
    ink, r = np.zeros((size, size), bool), width / 2
    for s in strokes:
        s = thin(s, 1.0)
        for a, b in zip(s, s[1:]) if len(s) > 1 else [(s[0], s[0])]:
            x0, y0 = np.maximum(np.floor(np.minimum(a, b) - r), 0).astype(int)
            x1, y1 = np.minimum(np.ceil(np.maximum(a, b) + r), size).astype(int)
            if x0 >= x1 or y0 >= y1:
                continue                                    # outside the image
            py, px = np.mgrid[y0:y1, x0:x1] + 0.5           # pixel centres of the window
            d = b - a
            t = np.clip(((px - a[0]) * d[0] + (py - a[1]) * d[1]) / max(d @ d, 1e-12), 0, 1)
            ink[y0:y1, x0:x1] |= (px - a[0] - t * d[0]) ** 2 + (py - a[1] - t * d[1]) ** 2 \
                <= r * r
    return ink


def thin(points, spacing):
    """The points (n, 2) without those closer than spacing to the last one kept (the last
    point is always kept): the same line within spacing, with fewer segments."""
    keep, last = [0], points[0]
    for i in range(1, len(points)):
        if np.abs(points[i] - last).max() >= spacing or i == len(points) - 1:
            keep.append(i)
            last = points[i]
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
