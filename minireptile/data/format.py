"""The packed-dataset file: one HDF5 file per dataset, written atomically, read with checks.

Layout (format version 1), readable with plain h5py::

    /images        uint8  (N, H, W, C)  all images, sorted by class (0 = black, 255 = white)
    /labels        int32  (N,)          class index of each image (non-decreasing)
    /offsets       int64  (M + 1,)      class c is images[offsets[c]:offsets[c + 1]]
    /class_names   str    (M,)          e.g. "Greek/character07" or "n01532829"
    /image_names   str    (N,)          file name of each image in its source, e.g. "0394_11.png"
    /split/train   int64  (M_train,)    class indices of the training classes (ascending)
    /split/test    int64  (M_test,)     ... of the test classes
    /split/val     int64  (M_val,)      ... of the validation classes (Mini-ImageNet only)
    attributes of /: format = "minireptile-dataset", format_version = 1, kind ("omniglot" or
    "miniimagenet"), source (the source file names), image_size (H, W, C), split_seed,
    split_by, num_train.

The paper's code reads image folders (Section 6.1, "few-shot classification"); packing them
once into this file makes loading a dataset one read of a few MB to a few GB.
"""
import os

import numpy as np

from ..errors import UserError
from ..files import atomic_path

FORMAT = "minireptile-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def _h5py():
    import h5py
    return h5py


def write_dataset(path, images, offsets, class_names, image_names, splits, attrs,
                  compression_level=9, chunk_images=256):
    """Write a packed dataset atomically: a temporary file in the same folder, then os.replace.

    images: uint8 (N, H, W, C) sorted by class; offsets: (M + 1,) class boundaries;
    class_names: M strings; image_names: N strings; splits: {"train": [...], "test": [...]}
    class indices; attrs: extra root attributes (kind, source, split_seed, ...).
    A failure (or Ctrl-C, or SIGTERM under the CLI) removes the temporary file and leaves any
    existing `path` untouched; temporary files of killed earlier writes to `path` are removed
    (``files.atomic_path``). Datasets are chunked and gzip-compressed, without timestamps,
    so packing the same input twice gives byte-identical files.
    """
    h5py = _h5py()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"{path}: output folder {folder} does not exist")
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder; give the file to write, e.g. "
                        f"{os.path.join(path, attrs.get('kind', 'dataset') + '.h5')}")
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            _fill(f, images, offsets, class_names, image_names, splits, attrs,
                  compression_level, chunk_images)
    except OSError as exc:                       # no permission, disk full
        reason = str(exc).split("\n")[0]
        raise UserError(f"{path}: cannot write it ({reason})") from None


def _fill(f, images, offsets, class_names, image_names, splits, attrs, level, chunk_images):
    h5py = _h5py()
    offsets = np.asarray(offsets, np.int64)
    labels = np.repeat(np.arange(len(offsets) - 1, dtype=np.int32), np.diff(offsets))
    strings = h5py.string_dtype("utf-8")
    gz = dict(compression="gzip", compression_opts=level, shuffle=True, track_times=False)
    chunk = (min(chunk_images, len(images)),) + images.shape[1:]
    f.create_dataset("images", data=images, chunks=chunk, **gz)
    f.create_dataset("labels", data=labels, **gz)
    f.create_dataset("offsets", data=offsets, track_times=False)
    f.create_dataset("class_names", data=np.array(class_names, dtype=object), dtype=strings,
                     **gz)
    f.create_dataset("image_names", data=np.array(image_names, dtype=object), dtype=strings,
                     **gz)
    group = f.create_group("split")
    for name, classes in splits.items():
        group.create_dataset(name, data=np.asarray(classes, np.int64), track_times=False)
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["image_size"] = np.asarray(images.shape[1:], np.int64)
    for key, value in attrs.items():
        f.attrs[key] = value


class Dataset:
    """A loaded dataset: images (uint8, in memory or lazily on disk), classes and split.

    images: (N, H, W, C) uint8 numpy array, or an open h5py dataset when lazy;
    offsets: (M + 1,) int64; class_names: list of M str; splits: {"train": [...], ...} lists of
    class indices; image_shape: (H, W, C); kind: "omniglot" or "miniimagenet"; attrs: all
    root attributes; path: the file.
    """

    def __init__(self, path, images, offsets, class_names, splits, attrs, file=None):
        self.path, self.images, self.offsets = path, images, offsets
        self.class_names, self.splits, self.attrs = class_names, splits, attrs
        self.image_shape = tuple(int(n) for n in images.shape[1:])
        self.kind = str(attrs.get("kind", ""))
        self._file = file

    @property
    def class_sizes(self):
        """(M,) number of images of each class."""
        return np.diff(self.offsets)

    def read(self, indices):
        """uint8 images at the given global indices (any shape of index array, any order)."""
        indices = np.asarray(indices, np.int64)
        if self._file is None:
            return self.images[indices]
        unique, inverse = np.unique(indices, return_inverse=True)    # h5py wants sorted
        return _record(self.path, "images", lambda: self.images[unique])[
            inverse.reshape(indices.shape)]

    def close(self):
        """Close the file of a lazy dataset (no-op in memory)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_dataset(path, lazy=False):
    """Open a packed dataset and check it; lazy=True keeps images on disk (read per task).

    Raises UserError naming the file when it is missing, not HDF5, not a minireptile
    dataset, of another format version, or inconsistent.
    """
    h5py = _h5py()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such dataset file")
    try:
        f = h5py.File(path, "r", rdcc_nbytes=64 << 20)     # 64 MB chunk cache when lazy
    except OSError:
        raise UserError(f"{path}: not an HDF5 file (or truncated); "
                        "pack one with `minireptile pack`") from None
    try:
        ds = _read(path, f, lazy)
    except BaseException:
        f.close()
        raise
    if not lazy:
        f.close()
    return ds


def _read(path, f, lazy):
    if f.attrs.get("format") != FORMAT:
        raise UserError(f"{path}: HDF5 file but not a minireptile dataset "
                        "(no format='minireptile-dataset' attribute)")
    version = f.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path}: dataset format version {version}, this minireptile reads "
                        f"version {FORMAT_VERSION}; re-pack it with `minireptile pack`")
    missing = [k for k in ("images", "offsets", "class_names", "split") if k not in f]
    if missing:
        raise UserError(f"{path}: damaged dataset, missing {', '.join(missing)}")
    images = f["images"] if lazy else _record(path, "images", lambda: f["images"][()])
    offsets = _integers(path, "offsets", f["offsets"])
    class_names = _record(path, "class_names", lambda: [
        s.decode() if isinstance(s, bytes) else str(s) for s in f["class_names"][()]])
    if not isinstance(f["split"], _h5py().Group):
        raise UserError(f"{path}: damaged dataset, 'split' is not a group of class lists")
    splits = {k: [int(c) for c in _integers(path, f"split/{k}", f["split"][k])]
              for k in SPLITS if k in f["split"]}
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    _check(path, images, offsets, class_names, splits)
    return Dataset(path, images, offsets, class_names, splits, attrs, f if lazy else None)


def _record(path, name, read):
    """read() of one record of the file, its damage (a corrupt compressed chunk, a wrong
    type) a UserError naming the file and the record."""
    try:
        return read()
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"{path}: damaged dataset, record '{name}' cannot be read "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                        ) from None


def _integers(path, name, dataset):
    """An integer record as int64, or a UserError naming it (strings, floats, damage)."""
    values = _record(path, name, lambda: np.asarray(dataset[()]))
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise UserError(f"{path}: damaged dataset, record '{name}' holds {values.dtype} "
                        f"{tuple(values.shape)}, expected a list of integers")
    return values.astype(np.int64)


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    return value.item() if isinstance(value, np.generic) else value


def _check(path, images, offsets, class_names, splits):
    m = len(class_names)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise UserError(f"{path}: damaged dataset, images are {images.dtype} "
                        f"{tuple(images.shape)}, expected uint8 (N, H, W, C)")
    if (offsets.shape != (m + 1,) or offsets[0] != 0 or offsets[-1] != len(images)
            or np.any(np.diff(offsets) <= 0)):
        raise UserError(f"{path}: damaged dataset, offsets do not cut {len(images)} images "
                        f"into {m} non-empty classes")
    for name, classes in splits.items():
        if any(not 0 <= c < m for c in classes):
            raise UserError(f"{path}: damaged dataset, split '{name}' names a class "
                            f"outside 0..{m - 1}")
