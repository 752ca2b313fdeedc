"""Pack Mini-ImageNet (Vinyals et al. 2016; Ravi & Larochelle's 64/16/20 class split).

The paper (Section 6.1) reads 84x84x3 JPEGs from ``train/``, ``val/`` and ``test/``, one
sub-folder per WordNet id (supervised-reptile's miniimagenet.py). Two source layouts pack:

    SRC/train/n01532829/*.jpg, SRC/val/..., SRC/test/...        (the paper's code)
    SRC/images/*.jpg + SRC/train.csv, val.csv, test.csv         (Ravi & Larochelle's files,
                                                                 columns filename,label)

Images not already 84x84 are resized with Pillow's Lanczos filter (as the usual
Mini-ImageNet preparation script does); all are stored as uint8 RGB. Classes are ordered
train, val, test, each sorted by WordNet id; images of a class sorted by file name.
"""
import csv
import os

import numpy as np

from ..errors import UserError
from .format import SPLITS, write_dataset
from .images import decode, pillow, read_bytes

SIZE = 84
EXTENSIONS = (".jpg", ".jpeg", ".png")


def pack_miniimagenet(source, output, progress=None):
    """Pack a Mini-ImageNet folder (either layout above) into `output`.

    The split comes from the source (train and test are required, val optional).
    progress: optional callable(done, total) called while decoding.
    Returns {"classes": M, "images": N, "duplicates": 0}.
    """
    Image = pillow()
    source = os.fspath(source)
    if not os.path.isdir(source):
        raise UserError(f"{source}: not a folder (expected train/ val/ test/ or images/ "
                        "with train.csv val.csv test.csv)")
    classes = _csv_layout(source) if os.path.isdir(os.path.join(source, "images")) \
        else _folder_layout(source)
    for split in ("train", "test"):
        if not any(s == split for s, _, _ in classes):
            raise UserError(f"{source}: no '{split}' classes found")
    total = sum(len(paths) for _, _, paths in classes)
    images, image_names, offsets, splits = [], [], [0], {}
    for index, (split, wnid, paths) in enumerate(classes):
        splits.setdefault(split, []).append(index)
        for path in paths:
            images.append(decode(read_bytes(path), path, (SIZE, SIZE), "RGB", Image.LANCZOS))
            image_names.append(os.path.basename(path))
            if progress:
                progress(len(images), total)
        offsets.append(len(images))
    attrs = {"kind": "miniimagenet", "source": [os.path.basename(os.path.normpath(source))],
             "split_by": "source folders", "num_train": len(splits["train"]),
             "resize": "Pillow Lanczos where not 84x84"}
    write_dataset(output, np.stack(images), offsets, [w for _, w, _ in classes], image_names,
                  splits, attrs, compression_level=4, chunk_images=16)
    return {"classes": len(classes), "images": len(images), "duplicates": 0}


def _folder_layout(source):
    """[(split, wnid, sorted image paths)] from SRC/{train,val,test}/<wnid>/*.jpg."""
    classes, owner = [], {}
    for split in SPLITS:
        folder = os.path.join(source, split)
        if not os.path.isdir(folder):
            continue
        for wnid in sorted(os.listdir(folder)):
            class_dir = os.path.join(folder, wnid)
            if not os.path.isdir(class_dir) or wnid.startswith("."):
                continue
            _claim(owner, wnid, split, source)
            paths = sorted(os.path.join(class_dir, f) for f in os.listdir(class_dir)
                           if f.lower().endswith(EXTENSIONS) and not f.startswith("."))
            if not paths:
                raise UserError(f"{class_dir}: no JPEG images")
            classes.append((split, wnid, paths))
    if not classes:
        raise UserError(f"{source}: no Mini-ImageNet classes (expected train/<wnid>/*.jpg, "
                        "val/, test/, or images/ with train.csv val.csv test.csv)")
    return classes


def _csv_layout(source):
    """[(split, wnid, sorted image paths)] from SRC/images/ and SRC/{train,val,test}.csv."""
    classes, owner = [], {}
    for split in SPLITS:
        path = os.path.join(source, f"{split}.csv")
        if not os.path.isfile(path):
            continue
        by_class = {}
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
                raise UserError(f"{path}: expected a header 'filename,label'")
            for line, row in enumerate(rows, start=2):
                if len(row) < 2:
                    raise UserError(f"{path}:{line}: expected 'filename,label'")
                by_class.setdefault(row[1].strip(), []).append(row[0].strip())
        for wnid in sorted(by_class):
            _claim(owner, wnid, split, source)
            classes.append((split, wnid, sorted(os.path.join(source, "images", name)
                                                for name in by_class[wnid])))
    if not classes:
        raise UserError(f"{source}: images/ found but no train.csv, val.csv or test.csv")
    return classes


def _claim(owner, wnid, split, source):
    if wnid in owner:
        raise UserError(f"{source}: class {wnid} is in both '{owner[wnid]}' and '{split}'")
    owner[wnid] = split
