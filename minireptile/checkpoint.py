"""Training checkpoints: one ``.npz`` of plain arrays plus the JSON configuration, no pickle.

A checkpoint folder holds ``checkpoint.npz`` (theta, the inner Adam's state, the random
generator's state, the iteration, the configuration) and ``log.jsonl`` (one JSON line per
evaluation). ``save`` writes a temporary file and renames it, so an interrupted write never
leaves a half-written checkpoint; ``load`` checks everything and raises ``UserError`` with
one line naming the file for anything wrong (a corrupt file, another model, another format).
"""
import json
import os
import sys
import zipfile

import numpy as np

from .errors import UserError
from .files import atomic_write, process_name

FORMAT = "minireptile-checkpoint"
FORMAT_VERSION = 1
FILENAME = "checkpoint.npz"
LOGNAME = "log.jsonl"
_UNREADABLE = (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError)   # a bad .npz


def save(folder, theta, optimizer_state, rng, iteration, config):
    """Write folder/checkpoint.npz atomically (theta and states as host arrays); config
    names its kind (``kind``)."""
    os.makedirs(folder, exist_ok=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "iteration": int(iteration),
            "config": config, "rng": rng.bit_generator.state, "writer": process_name()}
    arrays = {"theta": np.asarray(theta), "meta": np.array(json.dumps(meta))}
    arrays.update({f"opt_{k}": np.asarray(v) for k, v in optimizer_state.items()})
    atomic_write(os.path.join(folder, FILENAME), lambda f: np.savez(f, **arrays))


KINDS = {"fewshot": "a few-shot training checkpoint (minireptile train)",
         "sine": "a sine checkpoint (minireptile theory)"}


def kind(config):
    """What wrote a checkpoint, from its configuration: 'fewshot' or 'sine'."""
    return config.get("kind") or ("fewshot" if "dataset" in config else "sine")


def load(folder, expect=None):
    """(theta, optimizer_state, rng, iteration, config) from folder/checkpoint.npz.

    Raises UserError naming the file when it is missing, corrupt, not a checkpoint, or (with
    expect, a key of KINDS) of another kind, naming both.
    """
    path = os.path.join(folder, FILENAME)
    if not os.path.exists(path):
        raise UserError(f"{path}: no checkpoint there")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            theta = z["theta"]
            state = {k[4:]: z[k] for k in z.files if k.startswith("opt_")}
    except _UNREADABLE as exc:
        raise UserError(f"{path}: corrupt checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or \
            meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: not a minireptile checkpoint of format version "
                        f"{FORMAT_VERSION}")
    iteration, config = meta.get("iteration"), meta.get("config")
    if type(iteration) is not int or iteration < 0 or not isinstance(config, dict) or \
            theta.ndim != 1 or not np.issubdtype(theta.dtype, np.floating):
        raise UserError(f"{path}: malformed checkpoint (its iteration, configuration or "
                        f"theta is not what minireptile writes)")
    if expect is not None and kind(config) != expect:
        raise UserError(f"{path}: {KINDS[kind(config)]}, not {KINDS[expect]}")
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = meta["rng"]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: malformed checkpoint (its random generator's state)") \
            from None
    return theta, state, rng, iteration, config


def writer(folder):
    """The process that wrote folder's checkpoint ("pid P on HOST"); None when there is
    none, it is unreadable, or it predates this field."""
    try:
        with np.load(os.path.join(folder, FILENAME), allow_pickle=False) as z:
            return json.loads(str(z["meta"])).get("writer")
    except (*_UNREADABLE, AttributeError):              # AttributeError: meta not a dict
        return None


def exists(folder):
    return folder is not None and os.path.exists(os.path.join(folder, FILENAME))


def append_log(folder, record):
    """Append one JSON line to folder/log.jsonl."""
    with open(os.path.join(folder, LOGNAME), "a") as f:
        f.write(json.dumps(record) + "\n")


def read_log(folder, upto=None):
    """The evaluation records of folder/log.jsonl (those with iteration <= upto).

    A last line cut short (a crash while appending) is dropped with a warning on stderr;
    a broken line before the last is a UserError naming the file and the line."""
    path = os.path.join(folder, LOGNAME)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for n, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or type(record.get("iteration")) is not int:
                raise ValueError("no iteration")
        except ValueError:
            if n == len(lines):
                print(f"warning: {path}: its last line is cut short (a crash's); dropped",
                      file=sys.stderr)
                break
            raise UserError(f"{path}: line {n} is not an evaluation record") from None
        records.append(record)
    return [r for r in records if upto is None or r["iteration"] <= upto]


def truncate_log(folder, upto):
    """Drop log lines written after the checkpoint at iteration upto (a resumed run redoes them)."""
    records = read_log(folder, upto)
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(os.path.join(folder, LOGNAME), lambda f: f.write(text.encode()))
