"""What a crash, a full disk or a planted file does to minireptile's writes and reads.

Each test makes the accident happen for real: a file-size limit (ulimit -f) while a checkpoint
is saved, symlinks planted at the temporary names, a log line cut short by a crash, a
corrupt compressed chunk inside a packed dataset, and a finished run started again.
"""
import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from minireptile import checkpoint, files
from minireptile.cli import main
from minireptile.data import load_dataset, write_dataset
from minireptile.errors import UserError

TINY = ["--eval-samples", "2", "--eval-iters", "2", "--threads", "1"]


def train(folder, iters, *extra):
    return main(["train", "omniglot", "--checkpoint", str(folder), "--meta-iters", str(iters),
                 "--checkpoint-interval", "1", *TINY, *extra])


def test_a_write_that_fails_is_one_line_and_keeps_the_checkpoint(tmp_path):
    """Under a file-size limit smaller than a checkpoint (ulimit -f), resuming a run fails
    to save: one line naming the file, exit 2, and the previous checkpoint intact."""
    folder = tmp_path / "run"
    assert train(folder, 2) == 0
    before = (folder / "checkpoint.npz").read_bytes()

    def limit():                                     # 100 kB: a checkpoint is about 450 kB
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    p = subprocess.run([sys.executable, "-m", "minireptile", "train", "omniglot",
                        "--checkpoint", str(folder), "--meta-iters", "4",
                        "--checkpoint-interval", "1", *TINY],
                       capture_output=True, text=True, preexec_fn=limit, timeout=600)
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(errors) == 1 and "checkpoint.npz: cannot write it" in errors[0], p.stderr
    assert "previous content is kept" in errors[0]
    assert (folder / "checkpoint.npz").read_bytes() == before
    assert checkpoint.load(str(folder))[3] == 2
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]      # no temporary left


def test_symlinks_planted_at_the_temporary_names_are_never_written_through(tmp_path):
    """The temporary name is created exclusively (O_EXCL): a symlink planted at any name the
    writer could pick is skipped, never followed, so the file it points to is untouched."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "results.json"
    for n in range(5):                         # the first names this process would pick
        name = f".results.json.{files._HOST}-{os.getpid()}-{n}.tmp"
        os.symlink(victim, tmp_path / name)
    for _ in range(3):
        files.write_json(str(target), {"answer": 42})
    assert victim.read_text() == "precious"
    assert json.loads(target.read_text()) == {"answer": 42}


def test_a_log_line_cut_short_by_a_crash_is_dropped_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "run"
    assert train(folder, 2, "--eval-interval", "1", "--eval-tasks-during", "1") == 0
    with open(folder / "log.jsonl", "a") as f:
        f.write('{"iteration": 3, "loss": 1.2, "tr')              # what a SIGKILL leaves
    capsys.readouterr()
    assert train(folder, 3, "--eval-interval", "1", "--eval-tasks-during", "1") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "last line is cut short" in err
    assert [r["iteration"] for r in checkpoint.read_log(str(folder))] == [1, 2, 3]


def test_a_corrupt_compressed_chunk_is_one_line_naming_the_file_and_record(tmp_path):
    import h5py
    path = str(tmp_path / "data.h5")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)   # incompressible noise
    write_dataset(path, images, np.arange(0, 41, 4), [f"A/c{i}" for i in range(10)],
                  [f"i{i}" for i in range(40)], {"train": list(range(5)),
                                                 "test": list(range(5, 10))},
                  {"kind": "omniglot"}, chunk_images=8)
    with h5py.File(path, "r") as f:
        chunk = f["images"].id.get_chunk_info(1)                 # the second chunk's bytes
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(os.urandom(64))
    with pytest.raises(UserError, match=r"data.h5: damaged dataset, record 'images'") as info:
        load_dataset(path)
    assert "\n" not in str(info.value)
    lazy = load_dataset(path, lazy=True)                         # read per task: the same
    with pytest.raises(UserError, match="record 'images'"):
        lazy.read(np.arange(40))
    lazy.close()


def test_starting_a_finished_run_again_says_so(tmp_path, capsys):
    folder = tmp_path / "run"
    assert train(folder, 2) == 0
    capsys.readouterr()
    assert train(folder, 2) == 0
    out = capsys.readouterr()
    assert "already trained to iteration 2" in out.out + out.err
    assert "nan" not in (out.out + out.err).lower()


def test_a_folder_made_by_another_rank_meanwhile_is_not_a_file_in_the_way(tmp_path,
                                                                          monkeypatch):
    """Two MPI ranks make the same --out folder: the other rank's mkdir lands between any
    look at the path and this rank's own mkdir. Emulated by making the folder at this
    process's first look at the path. make_folder succeeds; a file in the way still gets
    its one line, and a folder under a file cannot be made."""
    folder = tmp_path / "2"
    looks = {"isdir": os.path.isdir, "exists": os.path.exists}

    def late(name):
        def look(path):
            seen = looks[name](path)
            if os.fspath(path) == os.fspath(folder) and not folder.exists():
                os.mkdir(folder)                     # the other rank, just now
            return seen
        return look
    for name in looks:
        monkeypatch.setattr(os.path, name, late(name))
    files.make_folder(folder, "--out")
    monkeypatch.undo()
    assert folder.is_dir()
    (tmp_path / "file").write_text("kept")
    with pytest.raises(UserError, match=r"--out .*file: exists and is not a folder"):
        files.make_folder(tmp_path / "file", "--out")
    with pytest.raises(UserError, match=r"cannot be made"):
        files.make_folder(tmp_path / "file" / "sub", "--out")
    assert (tmp_path / "file").read_text() == "kept"
