"""Reading image files for the packers: Pillow, imported only when packing.

Reading a packed file and sampling tasks need only numpy and h5py; Pillow is the
optional extra ``minireptile[data]``.
"""
import io

import numpy as np

from ..errors import UserError


def pillow():
    """The PIL.Image module, or a one-line UserError saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise UserError("packing images needs Pillow: pip install 'minireptile[data]'") from None
    return Image


def decode(data, name, size, mode, resample):
    """Decode image bytes, resize to `size` (W, H) with `resample`, return uint8 (H, W, C).

    name: "archive.zip:member" or a path, for the error message of an unreadable image.
    mode: "L" (one channel, 0 black .. 255 white) or "RGB". Pixels are converted to `mode`
    before resizing; with nearest-neighbour resampling (Omniglot) the order does not matter,
    so a 1-bit PNG gives exactly the pixels of the paper's ``Image.open(f).resize((28, 28))``.
    """
    Image = pillow()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert(mode)
            if img.size != size:
                img = img.resize(size, resample=resample)
            x = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{name}: unreadable image ({exc})") from None
    return x.reshape(size[1], size[0], -1)


def read_bytes(path):
    """The bytes of an image file, or a one-line UserError naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
