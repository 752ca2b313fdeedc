"""Packed datasets (format, Omniglot and Mini-ImageNet packers, `pack`/`info`) and the sampler."""
import io
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

import minireptile.cli as cli
import minireptile.data.format as format_module
from conftest import make_miniimagenet, make_omniglot
from minireptile.backend import make_rng
from minireptile.data import (FORMAT_VERSION, embedded_omniglot, inner_batches, load_dataset,
                              pack_miniimagenet, pack_omniglot, sample_tasks, write_dataset)
from minireptile.errors import UserError

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
needs_omniglot = pytest.mark.skipif(not (OMNIGLOT / "images_background.zip").is_file(),
                                    reason=f"real Omniglot data not found at {OMNIGLOT}")


def run_cli(argv):
    """`minireptile ARGV`; the exit status."""
    return cli.main([str(a) for a in argv])


def only(folder, *names):
    """The folder holds exactly these file names (no output, no temporary file left)."""
    assert sorted(p.name for p in Path(folder).iterdir()) == sorted(names)


# ---------------------------------------------------------------- real Omniglot

@pytest.fixture(scope="module")
def full_pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "omniglot.h5"
    pack_omniglot([OMNIGLOT / "images_evaluation.zip", OMNIGLOT / "images_background.zip"], out)
    return out


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "small.h5"
    stats = pack_omniglot([OMNIGLOT / "images_background_small1.zip",
                           OMNIGLOT / "images_background_small2.zip"], out, num_train=180)
    return out, stats


@pytest.mark.slow
@needs_omniglot
def test_full_pack_is_the_papers_dataset(full_pack):
    ds = load_dataset(full_pack)
    assert ds.images.shape == (32460, 28, 28, 1) and ds.images.dtype == np.uint8
    assert len(ds.class_names) == 1623 and set(ds.class_sizes) == {20}
    assert len(ds.splits["train"]) == 1200 and len(ds.splits["test"]) == 423
    assert sorted(ds.splits["train"] + ds.splits["test"]) == list(range(1623))
    assert set(np.unique(ds.images)) == {0, 255}
    assert (ds.images == 255).mean() > 0.8                      # strokes 0 on a white ground
    assert ds.attrs["source"] == ["images_background.zip", "images_evaluation.zip"]
    assert ds.attrs["split_seed"] == 0 and ds.attrs["format_version"] == FORMAT_VERSION


@pytest.mark.slow
@needs_omniglot
def test_embedded_asset_equals_a_fresh_pack(full_pack):
    """Packing is deterministic (whatever the order of SRC) and rebuilds the shipped asset."""
    fresh, asset = load_dataset(full_pack), load_dataset(embedded_omniglot())
    assert np.array_equal(fresh.images, asset.images)
    assert np.array_equal(fresh.offsets, asset.offsets)
    assert fresh.class_names == asset.class_names and fresh.splits == asset.splits
    assert fresh.attrs == asset.attrs
    with h5py.File(full_pack) as a, h5py.File(embedded_omniglot()) as b:
        assert list(a["image_names"][()]) == list(b["image_names"][()])
    assert (REPO / "minireptile" / "assets" / "OMNIGLOT_LICENSE").read_text().startswith(
        "The MIT License")


def test_embedded_omniglot_is_the_shipped_full_dataset():
    path = embedded_omniglot()
    assert Path(path).parts[-3:] == ("minireptile", "assets", "omniglot.h5")
    ds = load_dataset(path)
    assert ds.kind == "omniglot" and ds.images.shape == (32460, 28, 28, 1)
    assert len(ds.splits["train"]) == 1200 and len(ds.splits["test"]) == 423


@pytest.mark.slow
@needs_omniglot
def test_small_subsets_keep_shared_alphabets_once(small_pack):
    out, stats = small_pack
    ds = load_dataset(out)
    assert len(ds.class_names) == 242 and len(ds.images) == 4840
    assert stats["duplicates"] == 1000                          # Greek 24 + Latin 26 characters
    assert len({c.split("/")[0] for c in ds.class_names}) == 8
    assert len(ds.splits["train"]) == 180 and len(ds.splits["test"]) == 62


@pytest.mark.slow
@needs_omniglot
def test_pixels_match_pillows_nearest_resize(small_pack):
    member = "images_background_small1/Balinese/character01/0108_05.png"
    with zipfile.ZipFile(OMNIGLOT / "images_background_small1.zip") as z:
        original = Image.open(io.BytesIO(z.read(member)))
        expected = np.array(original.resize((28, 28), resample=Image.NEAREST))   # bool, 1 white
    ds = load_dataset(small_pack[0])
    c = ds.class_names.index("Balinese/character01")
    with h5py.File(small_pack[0]) as f:
        names = [n.decode() for n in f["image_names"][ds.offsets[c]:ds.offsets[c + 1]]]
    stored = ds.images[ds.offsets[c] + names.index("0108_05.png"), :, :, 0]
    assert expected.dtype == bool and np.array_equal(stored, expected * 255)


@needs_omniglot
def test_rot90_is_pillows_rotate():
    """The sampler's np.rot90(k) is the paper's Image.rotate(90 k) on a 28x28 image."""
    with zipfile.ZipFile(OMNIGLOT / "images_background_small1.zip") as z:
        img = Image.open(io.BytesIO(z.read(
            "images_background_small1/Balinese/character02/0109_01.png"))).resize((28, 28))
    for k in range(4):
        assert np.array_equal(np.array(img.rotate(90 * k)), np.rot90(np.array(img), k))


@pytest.mark.slow
@needs_omniglot
def test_info_and_default_num_train_error(small_pack, tmp_path, capsys):
    assert run_cli(["info", small_pack[0]]) == 0
    text = capsys.readouterr().out
    for part in ("format version 1", "omniglot", "242, 20 images per class", "28x28x1",
                 "4840 images", "train:  180 classes", "test:   62 classes",
                 "images_background_small1.zip, images_background_small2.zip"):
        assert part in text
    out = tmp_path / "small.h5"
    assert run_cli(["pack", "omniglot", OMNIGLOT / "images_background_small1.zip",
                    OMNIGLOT / "images_background_small2.zip", "-o", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "242 characters, cannot put 1200 in train" in err and "--train-fraction" in err
    only(tmp_path)


# ---------------------------------------------------------------- generated Omniglot folders

def test_folder_pack_and_split_by_alphabet(tmp_path, capsys):
    src = make_omniglot(tmp_path / "src")
    out = tmp_path / "out.h5"
    assert run_cli(["pack", "omniglot", src, "-o", out, "--num-train", "5",
                    "--split-by", "alphabet"]) == 0
    ds = load_dataset(out)
    assert ds.images.shape == (60, 28, 28, 1) and ds.class_names[0] == "Alpha0/character01"
    alphabets = {k: {ds.class_names[c].split("/")[0] for c in v} for k, v in ds.splits.items()}
    assert not alphabets["train"] & alphabets["test"]
    assert len(ds.splits["train"]) == 8                         # two whole alphabets >= 5
    assert "split by alphabet, seed 0" in capsys.readouterr().out


def test_seed_changes_split_and_fraction(tmp_path):
    src = make_omniglot(tmp_path / "src")
    splits = []
    for seed in (0, 0, 1):
        pack_omniglot([src], tmp_path / "o.h5", seed=seed, train_fraction=0.75)
        splits.append(load_dataset(tmp_path / "o.h5").splits)
    assert splits[0] == splits[1] != splits[2] and len(splits[0]["train"]) == 9


# ---------------------------------------------------------------- Mini-ImageNet

@pytest.mark.parametrize("csv_layout", [False, True])
def test_miniimagenet_pack(tmp_path, csv_layout):
    src = make_miniimagenet(tmp_path / "mini", csv_layout)
    out = tmp_path / "mini.h5"
    assert run_cli(["pack", "miniimagenet", src, "-o", out]) == 0
    ds = load_dataset(out)
    assert ds.images.shape == (28, 84, 84, 3) and ds.kind == "miniimagenet"
    assert ds.splits == {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]}
    assert ds.class_names == ["n01", "n02", "n03", "n04", "n05", "n06", "n07"]
    folder = src / "images" if csv_layout else src / "train" / "n01"
    expected = np.array(Image.open(folder / "n0100000001.jpg").convert("RGB"))   # 84x84 as is
    assert np.array_equal(ds.images[1], expected)
    x, y, xq, yq = sample_tasks(ds, "val", make_rng(0), 2, 2, 3, num_query=1)
    assert x.shape == (2, 6, 84, 84, 3) and xq.shape == (2, 2, 84, 84, 3)


def test_miniimagenet_rejects_split_flags(tmp_path, capsys):
    src = make_miniimagenet(tmp_path / "mini")
    assert run_cli(["pack", "miniimagenet", src, "-o", tmp_path / "m.h5", "--num-train", "3"]) == 2
    assert "drop --num-train" in capsys.readouterr().err
    shutil.rmtree(src / "test")
    with pytest.raises(UserError, match="no 'test' classes"):
        pack_miniimagenet(src, tmp_path / "m.h5")
    only(tmp_path, "mini")


# ---------------------------------------------------------------- sampler

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """An 'omniglot' file of 10 classes x 6 random 5x5 images; train 0-5, test 6-9."""
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (60, 5, 5, 1), dtype=np.uint8)
    path = tmp_path_factory.mktemp("syn") / "syn.h5"
    write_dataset(path, images, np.arange(0, 61, 6), [f"A/character{c:02d}" for c in range(10)],
                  [f"{i}.png" for i in range(60)], {"train": range(6), "test": range(6, 10)},
                  {"kind": "omniglot", "source": ["generated"], "split_seed": 0,
                   "split_by": "character", "num_train": 6})
    lookup = {np.rot90(img, k).tobytes(): (i, k) for i, img in enumerate(images)
              for k in range(4)}
    return path, lookup


def identify(x, lookup):
    """(image index, rotation k) of each sampled image, shape x.shape[:-3] + (2,)."""
    flat = np.rint(x * 255).astype(np.uint8).reshape(-1, *x.shape[-3:])
    return np.array([lookup[img.tobytes()] for img in flat]).reshape(*x.shape[:-3], 2)


def test_task_shapes_labels_and_no_repeats(synthetic):
    ds = load_dataset(synthetic[0])
    x, y, xq, yq = sample_tasks(ds, "train", make_rng(0), 8, 5, 4, num_query=2)
    assert x.shape == (8, 20, 5, 5, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert xq.shape == (8, 10, 5, 5, 1) and yq.shape == (8, 10)
    assert 0 <= x.min() and x.max() <= 1
    assert np.array_equal(y[3], np.repeat(np.arange(5), 4))
    assert np.array_equal(yq[3], np.repeat(np.arange(5), 2))
    ids = identify(np.concatenate([x, xq], axis=1), synthetic[1])          # (T, 30, 2)
    labels = np.concatenate([y, yq], axis=1)
    for task, label in zip(ids, labels):
        pairs = {tuple(p) for p in task}
        assert len(pairs) == 30                                 # no image twice in a task
        for n in range(5):                                      # one class, one rotation each
            members = task[label == n]
            assert len({i // 6 for i in members[:, 0]}) == 1 and len(set(members[:, 1])) == 1
        classes = [(task[label == n][0, 0] // 6, task[label == n][0, 1]) for n in range(5)]
        assert len(set(classes)) == 5


def test_rotations_only_for_training_classes(synthetic):
    ds = load_dataset(synthetic[0])
    train = identify(sample_tasks(ds, "train", make_rng(1), 40, 3, 1)[0], synthetic[1])
    test = identify(sample_tasks(ds, "test", make_rng(1), 40, 3, 1)[0], synthetic[1])
    assert set(train[..., 1].ravel()) == {0, 1, 2, 3} and set(train[..., 0].ravel() // 6) <= \
        set(range(6))
    assert set(test[..., 1].ravel()) == {0} and set(test[..., 0].ravel() // 6) <= {6, 7, 8, 9}
    plain = identify(sample_tasks(ds, "train", make_rng(1), 40, 3, 1, augment=False)[0],
                     synthetic[1])
    assert set(plain[..., 1].ravel()) == {0}
    x = sample_tasks(ds, "train", make_rng(1), 1, 24, 1)[0]     # 6 classes x 4 rotations
    assert x.shape == (1, 24, 5, 5, 1)


def test_sampling_is_deterministic_and_lazy_agrees(synthetic):
    ds = load_dataset(synthetic[0])
    a = sample_tasks(ds, "train", make_rng(7), 4, 3, 2, num_query=1)
    with load_dataset(synthetic[0], lazy=True) as lazy:
        b = sample_tasks(lazy, "train", make_rng(7), 4, 3, 2, num_query=1)
    c = sample_tasks(ds, "train", make_rng(8), 4, 3, 2, num_query=1)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_inner_batches_cycle_and_replacement():
    b = inner_batches(10, make_rng(0), 3, 7)                    # 21 indices: 2 passes + 1
    assert b.shape == (7, 3) and b.dtype == np.int64
    flat = b.ravel()
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])           # reshuffled after a pass
    assert np.array_equal(b, inner_batches(10, make_rng(0), 3, 7))
    r = inner_batches(10, make_rng(0), 4, 50, replacement=True)
    assert r.shape == (50, 4) and all(len(set(row)) == 4 for row in r)
    assert len(set(r.ravel())) == 10
    t = inner_batches(6, make_rng(0), 2, 3, num_tasks=5)
    assert t.shape == (5, 3, 2) and all(sorted(task.ravel()) == list(range(6)) for task in t)
    with pytest.raises(UserError, match="--inner-batch 11 with --replacement"):
        inner_batches(10, make_rng(0), 11, 2, replacement=True)


def test_impossible_tasks(synthetic):
    ds = load_dataset(synthetic[0])
    with pytest.raises(UserError, match=r"5-way tasks need 5 classes, the 'test' split of "
                                        r".*syn.h5 has 4"):
        sample_tasks(ds, "test", make_rng(0), 1, 5, 1)
    with pytest.raises(UserError, match=r"has 24 \(6 x 4 rotations\)"):
        sample_tasks(ds, "train", make_rng(0), 1, 25, 1)
    with pytest.raises(UserError, match="5 shots \\+ 2 query = 7 images per class, but class "
                                        "A/character06 of the 'test' split .* has only 6"):
        sample_tasks(ds, "test", make_rng(0), 1, 2, 5, num_query=2)
    with pytest.raises(UserError, match="no 'val' split"):
        sample_tasks(ds, "val", make_rng(0), 1, 2, 1)


# ---------------------------------------------------------------- bad input

@pytest.fixture
def tiny_zip(tmp_path):
    src = make_omniglot(tmp_path / "tiny", alphabets=2, characters=2, drawers=3)
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(src.rglob("*.png")):
            z.write(path, "tiny/" + path.relative_to(src).as_posix())
    shutil.rmtree(src)
    return archive


def test_bad_archives(tmp_path, tiny_zip, capsys):
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    data = tiny_zip.read_bytes()
    cases = {"truncated.zip": (data[: len(data) // 2], "not a zip archive or truncated"),
             "text.zip": (b"hello\n", "not a zip archive or truncated"),
             "crc.zip": (data[:200] + bytes(b ^ 0xFF for b in data[200:260]) + data[260:],
                         "corrupt zip member")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        assert run_cli(["pack", "omniglot", tmp_path / name, "-o", out, "--num-train", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert message in err and name in err, err
        only(out.parent)


def test_bad_folders_and_images(tmp_path):
    out = tmp_path / "o.h5"
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(UserError, match=r"empty: no Omniglot images \(<Alphabet>"):
        pack_omniglot([tmp_path / "empty"], out)
    src = make_omniglot(tmp_path / "src", alphabets=1, characters=3, drawers=2)
    bad = src / "Alpha0" / "character02" / "0001_02.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UserError, match=f"{bad}: unreadable image"):
        pack_omniglot([src], out, num_train=2)
    with pytest.raises(UserError, match="missing: no such file or folder"):
        pack_omniglot([tmp_path / "missing"], out)
    only(tmp_path, "empty", "src")


def test_failed_pack_keeps_good_file(tmp_path, tiny_zip, monkeypatch):
    out = tmp_path / "o.h5"
    pack_omniglot([tiny_zip], out, num_train=2)
    before = out.read_bytes()
    with pytest.raises(UserError, match="4 characters, cannot put 9 in train"):
        pack_omniglot([tiny_zip], out, num_train=9)

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack_omniglot([tiny_zip], out, num_train=2, progress=interrupt)

    def fill_then_interrupt(*args):
        fill(*args)
        raise KeyboardInterrupt                                 # killed while writing

    fill = format_module._fill
    monkeypatch.setattr(format_module, "_fill", fill_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pack_omniglot([tiny_zip], out, num_train=2)

    class InterruptedWhileFinalized:
        def __del__(self):                      # h5py's weakref callbacks are such places
            raise KeyboardInterrupt             # Python prints and drops it

    def fill_then_interrupt_in_a_finalizer(*args):
        fill(*args)
        InterruptedWhileFinalized()

    monkeypatch.setattr(format_module, "_fill", fill_then_interrupt_in_a_finalizer)
    with pytest.raises(KeyboardInterrupt):                       # kept, and no rename
        pack_omniglot([tiny_zip], out, num_train=2)
    assert out.read_bytes() == before
    only(tmp_path, "o.h5", "tiny.zip")


def test_bad_dataset_files(tmp_path, tiny_zip, capsys):
    good = tmp_path / "good.h5"
    pack_omniglot([tiny_zip], good, num_train=2)
    (tmp_path / "text.h5").write_text("hello")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    shutil.copy(good, tmp_path / "v2.h5")
    with h5py.File(tmp_path / "v2.h5", "a") as f:
        f.attrs["format_version"] = 2
    for name, message in [("text.h5", "not an HDF5 file"), ("other.h5", "not a minireptile"),
                          ("v2.h5", "format version 2, this minireptile reads version 1"),
                          ("none.h5", "no such dataset file")]:
        with pytest.raises(UserError, match=message):
            load_dataset(tmp_path / name)
        assert run_cli(["info", tmp_path / name]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err and message in err


def test_pack_without_pillow(tmp_path, tiny_zip, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(UserError, match=r"packing images needs Pillow: pip install "
                                        r"'minireptile\[data\]'"):
        pack_omniglot([tiny_zip], tmp_path / "o.h5", num_train=2)
    only(tmp_path, "tiny.zip")


# ---------------------------------------------------------------- progress, stopped packs

class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_pack_progress_redraws_a_terminal_line_and_logs_lines(tmp_path, tiny_zip, monkeypatch,
                                                              capsys):
    args = ["pack", "omniglot", tiny_zip, "-o", tmp_path / "o.h5", "--num-train", "2"]
    assert run_cli(args) == 0
    log = capsys.readouterr().err.splitlines(keepends=True)    # stderr is not a terminal here
    assert not any("\r" in line or "\033" in line for line in log)
    assert all(line.startswith("decoding images ") for line in log[:-1])
    assert log[-2].startswith("decoding images 12/12 ") and log[-1].startswith("packed 12 ")
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run_cli(args) == 0
    assert re.search(r"\rdecoding images 12/12 [^\n]*\npacked 12 images", terminal.getvalue())


def test_pack_into_a_folder_is_a_one_line_error(tmp_path, tiny_zip, capsys):
    (tmp_path / "out").mkdir()
    assert run_cli(["pack", "omniglot", tiny_zip, "-o", tmp_path / "out", "--num-train", "2"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("minireptile: error: ") and "out: is a folder" in err
    only(tmp_path / "out")


BLOCKED_PACK = '''
import signal, sys, time
import minireptile.cli as cli
import minireptile.data.format as format_module

fill = format_module._fill


def fill_then_block(*args):              # the temporary file is written, not yet renamed
    fill(*args)
    print("READY", flush=True)
    time.sleep(3600)


format_module._fill = fill_then_block
signal.signal(signal.SIGINT, signal.default_int_handler)    # even when started with it ignored
sys.exit(cli.main(sys.argv[1:]))
'''


@pytest.fixture
def blocked_pack(tmp_path):
    """Start `minireptile pack omniglot SRC -o OUT` in a child process that blocks (prints READY
    and sleeps) once its temporary file is written: a test signals it at a known point, however
    busy the machine. Children still running at the end are killed."""
    script, children = tmp_path / "blocked_pack.py", []
    script.write_text(BLOCKED_PACK)

    def start(source, out):
        child = subprocess.Popen([sys.executable, str(script), "pack", "omniglot", str(source),
                                  "-o", str(out), "--num-train", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        children.append(child)
        ready = child.stdout.readline()
        if ready != "READY\n":
            child.kill()
            pytest.fail(f"the pack did not reach its rename: {ready!r} {child.communicate()}")
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.communicate()


def temporaries(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("sig,status,word", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")],
                         ids=["SIGTERM", "SIGINT"])
def test_stopped_pack_removes_its_temporary_file(sig, status, word, tmp_path, tiny_zip,
                                                 blocked_pack):
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    pack_omniglot([tiny_zip], out, num_train=2)
    before = out.read_bytes()
    child = blocked_pack(tiny_zip, out)
    assert len(temporaries(out.parent)) == 1                     # stopped in the middle
    child.send_signal(sig)
    _, err = child.communicate(timeout=300)
    assert child.returncode == status
    assert err.splitlines()[-1] == f"minireptile: {word}" and "Traceback" not in err
    only(out.parent, "o.h5")
    assert out.read_bytes() == before


def test_next_pack_removes_the_temporary_files_of_killed_packs_only(tmp_path, tiny_zip,
                                                                    blocked_pack):
    out = tmp_path / "out" / "o.h5"
    out.parent.mkdir()
    killed = blocked_pack(tiny_zip, out)
    left = temporaries(out.parent)
    killed.kill()                                                # SIGKILL: no clean-up
    killed.communicate()
    assert len(left) == 1 and temporaries(out.parent) == left
    running = blocked_pack(tiny_zip, out)                        # removed the dead one's file
    mine = temporaries(out.parent)
    assert len(mine) == 1 and mine != left
    assert run_cli(["pack", "omniglot", tiny_zip, "-o", out, "--num-train", "2"]) == 0
    assert temporaries(out.parent) == mine                       # a live pack's file is kept
    running.terminate()
    running.communicate(timeout=300)
    only(out.parent, "o.h5")
    assert load_dataset(out).images.shape == (12, 28, 28, 1)
