"""Every command over a table of malformed inputs: one line, no traceback, a non-zero exit,
and nothing destroyed.

Each row runs ``minireptile ARGS`` (the command line's own ``main``, in this process) on a
folder of fixtures: a real few-shot checkpoint, one of another kind, corrupt and malformed
ones, a diverged one, damaged dataset files, a plain file where a folder is wanted. A row
passes when the command exits non-zero, prints exactly one line naming an error (argparse's
own usage errors are its usage line plus one), raises nothing, and leaves every fixture file
byte for byte as it was. The table's size is ``len(CASES)``.
"""
import hashlib
import json
import os

import numpy as np
import pytest

from minireptile import checkpoint
from minireptile.cli import main
from minireptile.data import write_dataset

TINY = ["--meta-iters", "2", "--eval-samples", "2", "--eval-iters", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """The fixture folder: {name: path}; every file in it is checked after every row."""
    root = tmp_path_factory.mktemp("fuzz")
    paths = {name: str(root / name) for name in
             ("run", "sine", "corrupt", "malformed", "nan", "text", "strings", "file")}
    assert main(["train", "omniglot", "--checkpoint", paths["run"], *TINY]) == 0
    theta, state, rng, iteration, config = checkpoint.load(paths["run"])
    checkpoint.save(paths["sine"], np.zeros(10), {}, rng, 3, {"kind": "sine", "model": "sine"})
    checkpoint.save(paths["nan"], np.full_like(theta, np.nan), state, rng, iteration, config)
    os.makedirs(paths["corrupt"])
    (root / "corrupt" / "checkpoint.npz").write_bytes(os.urandom(2000))
    os.makedirs(paths["malformed"])
    np.savez(root / "malformed" / "checkpoint.npz", theta=theta, meta=np.array(json.dumps(
        {"format": "minireptile-checkpoint", "format_version": 1, "iteration": "many",
         "config": [], "rng": {}})))
    (root / "text").write_text("not an HDF5 file\n")
    (root / "file").write_text("a file where a folder is wanted\n")
    images = np.zeros((12, 28, 28, 1), np.uint8)
    write_dataset(paths["strings"], images, np.arange(0, 13, 3), [f"A/c{i}" for i in range(4)],
                  [f"i{i}" for i in range(12)], {"train": [0, 1], "test": [2, 3]},
                  {"kind": "omniglot"})
    import h5py
    with h5py.File(paths["strings"], "a") as f:                 # offsets stored as strings
        del f["offsets"]
        f["offsets"] = np.array([b"0", b"3", b"6", b"9", b"12"])
    return paths


CASES = [  # (name, arguments with {fixture} placeholders, a word the error line must hold)
    ("train: checkpoint is a file", "train omniglot --checkpoint {file}", "not a folder"),
    ("train: checkpoint under a file", "train omniglot --checkpoint {file}/x", "cannot be made"),
    ("train: out is a folder", "train omniglot --out {run}", "is a folder"),
    ("train: out under a file", "train omniglot --out {file}/r.json", "not a folder"),
    ("train: missing data", "train omniglot --data {run}/nope.h5", "no such dataset"),
    ("train: data not HDF5", "train omniglot --data {text}", "not an HDF5"),
    ("train: offsets as strings", "train omniglot --data {strings}", "offsets"),
    ("train: 1 class", "train omniglot --classes 1", "2 classes"),
    ("train: 0 shots", "train omniglot --shots 0", "--shots"),
    ("train: negative iterations", "train omniglot --meta-iters -5", "negative"),
    ("train: NaN step", "train omniglot --learning-rate nan", "--learning-rate"),
    ("train: negative step", "train omniglot --learning-rate -1", "--learning-rate"),
    ("train: combination without SGD", "train omniglot --combination sum", "--sgd"),
    ("train: combination weights", "train omniglot --sgd --combination 1,2", "weights"),
    ("train: maml without SGD", "train omniglot --algo maml", "--sgd"),
    ("train: tail too large", "train omniglot --algo fomaml --foml-tail 20", "--foml-tail"),
    ("train: 0 threads", "train omniglot --threads 0", "--threads"),
    ("train: held offsets with Reptile", "train omniglot --bn-offsets-outer", "--bn-offsets"),
    ("train: outer eps 0", "train omniglot --outer adam --outer-eps 0", "--outer-eps"),
    ("train: outer eps NaN", "train omniglot --outer adam --outer-eps nan", "--outer-eps"),
    ("train: Finn et al. for 7 classes", "train omniglot --defaults maml --classes 7", "7"),
    ("train: maml network on miniimagenet", "train miniimagenet --network maml", "Omniglot"),
    ("train: pretrained without checkpoint", "train omniglot --pretrained", "--pretrained"),
    ("train: pretrained, another kind", "train omniglot --pretrained --checkpoint {sine}",
     "sine"),
    ("train: resume a corrupt checkpoint", "train omniglot --checkpoint {corrupt}", "corrupt"),
    ("train: resume malformed metadata", "train omniglot --checkpoint {malformed}", "malformed"),
    ("train: resume another run", "train omniglot --checkpoint {run} --meta-iters 2 "
     "--inner-iters 3", "another run"),
    ("train: resume another kind", "train omniglot --checkpoint {sine}", "sine"),
    ("train: unknown flag", "train omniglot --meta-itres 3", "unrecognized"),
    ("eval: no checkpoint", "eval --checkpoint {run}/nope", "no checkpoint"),
    ("eval: corrupt", "eval --checkpoint {corrupt}", "corrupt"),
    ("eval: malformed", "eval --checkpoint {malformed}", "malformed"),
    ("eval: another kind", "eval --checkpoint {sine}", "sine"),
    ("eval: diverged", "eval --checkpoint {nan}", "finite"),
    ("eval: classes", "eval --checkpoint {run} --classes 3", "fixed by the checkpoint"),
    ("eval: out is a folder", "eval --checkpoint {run} --out {run}", "is a folder"),
    ("eval: 0 tasks", "eval --checkpoint {run} --eval-samples 0", "--eval-samples"),
    ("eval: bad split", "eval --checkpoint {run} --split nope", "invalid choice"),
    ("eval: data not HDF5", "eval --checkpoint {run} --data {text}", "not an HDF5"),
    ("plot: no log", "plot {corrupt}", "no log.jsonl"),
    ("sine: out is a file", "sine --out {file}", "not a folder"),
    ("sine: 0 iterations", "sine --meta-iters 0", "--meta-iters"),
    ("sine: 0 step", "sine --inner-lr 0", "--inner-lr"),
    ("sine: Reptile's tail", "sine --shared-tail", "--shared-tail"),
    ("gradcheck: json is a folder", "gradcheck --json {run}", "is a folder"),
    ("gradcheck: json under a file", "gradcheck --json {file}/g.json", "not a folder"),
    ("gradcheck: unknown model", "gradcheck --model nope", "invalid choice"),
    ("theory: json under a file", "theory coefficients --json {file}/t.json", "not a folder"),
    ("theory: sine checkpoint of another kind", "theory coefficients --checkpoint {run}",
     "few-shot"),
    ("reproduce: out is a file", "reproduce fig1 --budget tiny --out {file}", "cannot be made"),
    ("reproduce: 0 jobs", "reproduce fig1 --budget tiny --jobs 0 --out {run}/rp", "--jobs"),
    ("reproduce: partial fig1", "reproduce fig1 --partial --out {run}/rp", "--partial"),
    ("reproduce: ways of fig1", "reproduce fig1 --ways 5 --out {run}/rp", "--ways"),
    ("pack: missing source", "pack omniglot {run}/nope -o {run}/o.h5", "nope"),
    ("pack: output is a folder", "pack omniglot {text} -o {run}", "is a folder"),
    ("pack: output under a file", "pack omniglot {text} -o {file}/o.h5", "not a folder"),
    ("info: not HDF5", "info {text}", "not an HDF5"),
    ("demo: another kind", "demo --checkpoint {sine}", "sine"),
    ("demo: diverged", "demo --checkpoint {nan}", "finite"),
    ("demo: bad port", "demo --checkpoint {run} --port 70000", "--port"),
]
try:                                        # without CuPy (CI): --device cuda is one line too
    import cupy  # noqa: F401
except ImportError:
    CASES += [("train: cuda without CuPy", "train omniglot --device cuda", "CuPy"),
              ("reproduce: cuda without CuPy",
               "reproduce fig1 --budget tiny --device cuda --out {run}/rp", "CuPy")]


def snapshot(root):
    """{path: sha256} of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("name, args, word", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_gets_one_line_and_destroys_nothing(fixtures, capsys, name, args,
                                                            word):
    root = os.path.dirname(fixtures["run"])
    before = snapshot(root)
    argv = args.format(**fixtures).split()
    try:
        code = main(argv)
    except SystemExit as exc:                                   # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and
             not line.startswith(("usage:", " ", "warning:"))]
    assert code not in (0, None), f"{name}: exit {code}"
    assert "Traceback" not in err, err
    assert len(lines) == 1 and "error" in lines[0], f"{name}: {err!r}"
    assert word.format(**fixtures) in lines[0], f"{name}: {lines[0]!r}"
    after = snapshot(root)
    assert {p: h for p, h in after.items() if p in before} == before, f"{name}: changed files"
