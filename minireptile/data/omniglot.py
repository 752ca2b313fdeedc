"""Pack Omniglot (Lake et al. 2015) from its original zips or folders into one HDF5 file.

What the paper's code does, kept here (Section 6.1; supervised-reptile's omniglot.py):
- every 105x105 image is resized to 28x28 by Pillow's nearest-neighbour resampling; strokes
  stay 0 (black) on a background of 1 (white), not inverted. Stored as uint8 0/255, one channel;
  the sampler divides by 255, giving the paper's 0/1 floats;
- the characters of all given archives, sorted by "Alphabet/characterNN", are shuffled with
  Python's ``random.Random(seed).shuffle``, exactly the paper's ``random.seed(seed);
  random.shuffle(...)``, and the first ``num_train`` (1200) are train, the rest test. With
  both full archives and seed 0 this is the paper's own split;
- the rotations by 0/90/180/270 degrees of training classes are made by the sampler, not here.
"""
import os
import random
import zipfile
import zlib

import numpy as np

from ..errors import UserError
from .format import write_dataset
from .images import decode, pillow, read_bytes

SIZE = 28


def embedded_omniglot():
    """The path of the Omniglot dataset shipped in the package: minireptile/assets/omniglot.h5.

    All 1623 characters (32460 images, 28x28), the paper's split (1200 train, seed 0), packed
    by ``pack_omniglot`` from images_background.zip and images_evaluation.zip; read it with
    ``load_dataset(embedded_omniglot())``.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package, "assets", "omniglot.h5")


def pack_omniglot(sources, output, seed=0, num_train=1200, train_fraction=None,
                  split_by="character", progress=None):
    """Pack Omniglot archives (zips or folders, several at once) into `output`.

    sources: paths of ``images_background.zip``-style zips or folders of
    ``<Alphabet>/characterNN/*.png``; images found in several sources (same alphabet, character
    and file name, e.g. the Greek and Latin of the two small subsets) are kept once, and must
    have identical pixels. train_fraction, when given, replaces num_train by
    round(train_fraction * characters). split_by "alphabet" keeps whole alphabets on one side:
    shuffled alphabets go to train until it holds at least num_train characters.
    progress: optional callable(done, total) called while decoding.
    Returns {"classes": M, "images": N, "duplicates": images seen twice and kept once}.
    """
    Image = pillow()
    files, duplicates = _collect(sources)
    class_names = sorted(files, key=lambda name: name.split("/"))     # the paper's order
    train, test = split_classes(class_names, seed, num_train, train_fraction, split_by,
                                ", ".join(map(str, sources)))
    total = sum(len(files[c]) for c in class_names) + len(duplicates)
    images, image_names, seen = [], [], {}
    for name in class_names:
        for file_name in sorted(files[name]):
            label, data = files[name][file_name]
            images.append(decode(data(), label, (SIZE, SIZE), "L", Image.NEAREST))
            image_names.append(file_name)
            seen[(name, file_name)] = len(images) - 1
            if progress:
                progress(len(images), total)
    for done, (key, label, data) in enumerate(duplicates, start=len(images) + 1):
        if progress:
            progress(done, total)
        if not np.array_equal(decode(data(), label, (SIZE, SIZE), "L", Image.NEAREST),
                              images[seen[key]]):
            raise UserError(f"{label}: same alphabet, character and file name as an image of "
                            "another source, but different pixels")
    offsets = np.concatenate([[0], np.cumsum([len(files[c]) for c in class_names])])
    attrs = {"kind": "omniglot", "source": sorted(os.path.basename(os.path.normpath(s))
                                                  for s in map(os.fspath, sources)),
             "split_seed": seed, "split_by": split_by, "num_train": len(train),
             "resize": "Pillow nearest-neighbour, 105x105 -> 28x28"}
    write_dataset(output, np.stack(images), offsets, class_names, image_names,
                  {"train": train, "test": test}, attrs)
    return {"classes": len(class_names), "images": len(images), "duplicates": len(duplicates)}


def split_classes(class_names, seed, num_train, train_fraction, split_by, where):
    """(train, test) sorted class indices: the paper's shuffle of characters (or alphabets).

    class_names: sorted "Alphabet/characterNN" names; where: the sources, for error messages.
    """
    n = len(class_names)
    if train_fraction is not None:
        if not 0 < train_fraction < 1:
            raise UserError(f"--train-fraction {train_fraction} must be between 0 and 1")
        num_train = round(train_fraction * n)
    if not 0 < num_train < n:
        raise UserError(f"{where}: {n} characters, cannot put {num_train} in train and "
                        f"keep some for test; pass --num-train N with 0 < N < {n}, "
                        "or --train-fraction F")
    if split_by == "character":
        order = list(range(n))
        random.Random(seed).shuffle(order)
        return sorted(order[:num_train]), sorted(order[num_train:])
    if split_by != "alphabet":
        raise UserError(f"--split-by {split_by!r}: expected 'character' or 'alphabet'")
    alphabets = sorted({c.split("/")[0] for c in class_names})
    random.Random(seed).shuffle(alphabets)
    train_alphabets, count = set(), 0
    for alphabet in alphabets:
        if count >= num_train:
            break
        train_alphabets.add(alphabet)
        count += sum(c.split("/")[0] == alphabet for c in class_names)
    if len(train_alphabets) == len(alphabets):
        raise UserError(f"{where}: --split-by alphabet with --num-train {num_train} puts all "
                        f"{len(alphabets)} alphabets in train; pass a smaller --num-train")
    in_train = [c.split("/")[0] in train_alphabets for c in class_names]
    return ([i for i in range(n) if in_train[i]], [i for i in range(n) if not in_train[i]])


def _collect(sources):
    """{"Alphabet/characterNN": {file name: (label, read bytes)}} and the duplicates."""
    if not sources:
        raise UserError("pack omniglot: give at least one archive or folder")
    files, duplicates = {}, []
    for source in sorted(map(os.fspath, sources)):
        entries = list(_entries(source))
        if not entries:
            raise UserError(f"{source}: no Omniglot images (<Alphabet>/characterNN/*.png) "
                            "found")
        for alphabet, character, file_name, label, data in entries:
            name = f"{alphabet}/{character}"
            if file_name in files.setdefault(name, {}):
                duplicates.append(((name, file_name), label, data))
            else:
                files[name][file_name] = (label, data)
    return files, duplicates


def _entries(source):
    """(alphabet, character, file name, label, read bytes) for every PNG of a zip or folder."""
    if os.path.isdir(source):
        for root, dirs, names in os.walk(source):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__MACOSX"))]
            rel = os.path.relpath(root, source).split(os.sep)
            for name in names:
                if name.lower().endswith(".png") and not name.startswith("."):
                    if len(rel) >= 2:
                        path = os.path.join(root, name)
                        yield rel[-2], rel[-1], name, path, lambda path=path: read_bytes(path)
        return
    if not os.path.exists(source):
        raise UserError(f"{source}: no such file or folder")
    try:
        archive = zipfile.ZipFile(source)
        members = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{source}: not a zip archive or truncated ({exc})") from None
    for member in members:
        parts = member.split("/")
        if (member.lower().endswith(".png") and len(parts) >= 3
                and not any(p.startswith((".", "__MACOSX")) for p in parts)):
            label = f"{source}:{member}"
            yield parts[-3], parts[-2], parts[-1], label, _zip_reader(archive, member, label)


def _zip_reader(archive, member, label):
    def read():
        try:
            return archive.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise UserError(f"{label}: corrupt zip member ({exc})") from None
    return read
