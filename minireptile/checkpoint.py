"""Training checkpoints: one ``.npz`` of plain arrays plus the JSON configuration, no pickle.

A checkpoint folder holds ``checkpoint.npz`` (theta, the inner Adam's state, the random
generator's state, the iteration, the configuration) and ``log.jsonl`` (one JSON line per
evaluation). ``save`` writes a temporary file and renames it, so an interrupted write never
leaves a half-written checkpoint; ``load`` checks everything and raises ``UserError`` with
one line naming the file for anything wrong (a corrupt file, another model, another format).
"""
import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import UserError

FORMAT = "minireptile-checkpoint"
FORMAT_VERSION = 1
FILENAME = "checkpoint.npz"
LOGNAME = "log.jsonl"


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside path, then rename it to path."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(folder, theta, optimizer_state, rng, iteration, config):
    """Write folder/checkpoint.npz atomically (theta and states as host arrays)."""
    os.makedirs(folder, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "iteration": int(iteration),
            "config": config, "rng": rng.bit_generator.state}
    arrays = {"theta": np.asarray(theta), "meta": np.array(json.dumps(meta))}
    arrays.update({f"opt_{k}": np.asarray(v) for k, v in optimizer_state.items()})
    atomic_write(os.path.join(folder, FILENAME), lambda f: np.savez(f, **arrays))


def load(folder):
    """(theta, optimizer_state, rng, iteration, config) from folder/checkpoint.npz.

    Raises UserError naming the file when it is missing, corrupt or not a checkpoint.
    """
    path = os.path.join(folder, FILENAME)
    if not os.path.exists(path):
        raise UserError(f"{path}: no checkpoint there")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            theta = z["theta"]
            state = {k[4:]: z[k] for k in z.files if k.startswith("opt_")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path}: corrupt checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not a minireptile checkpoint of format version "
                        f"{FORMAT_VERSION}")
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]
    return theta, state, rng, meta["iteration"], meta["config"]


def exists(folder):
    return folder is not None and os.path.exists(os.path.join(folder, FILENAME))


def append_log(folder, record):
    """Append one JSON line to folder/log.jsonl."""
    with open(os.path.join(folder, LOGNAME), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(folder, upto=None):
    """The evaluation records of folder/log.jsonl (those with iteration <= upto)."""
    path = os.path.join(folder, LOGNAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if upto is None or r["iteration"] <= upto]


def truncate_log(folder, upto):
    """Drop log lines written after the checkpoint at iteration upto (a resumed run redoes them)."""
    records = read_log(folder, upto)
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(os.path.join(folder, LOGNAME), lambda f: f.write(text.encode()))
