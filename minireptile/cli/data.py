"""``minireptile pack`` and ``minireptile info``: build and inspect packed datasets."""
import sys
import time

from .. import files
from ..data import load_dataset, pack_miniimagenet, pack_omniglot
from ..errors import UserError
from ..progress import Progress


def register(sub):
    """Add the `pack` and `info` sub-commands."""
    pack = sub.add_parser(
        "pack", help="pack Omniglot or Mini-ImageNet into one HDF5 file",
        description="Pack the original Omniglot zips (or folders of <Alphabet>/characterNN/"
                    "*.png) or a Mini-ImageNet folder into one HDF5 dataset file. The output "
                    "is written to a temporary file and renamed at the end, so a failed pack "
                    "leaves no output and never overwrites a good file.")
    pack.add_argument("kind", choices=("omniglot", "miniimagenet"), help="dataset to pack")
    pack.add_argument("sources", nargs="+", metavar="SRC",
                      help="omniglot: zips such as images_background.zip "
                           "images_evaluation.zip, or folders in the same layout, several at "
                           "once (images found twice are kept once); miniimagenet: one folder "
                           "with train/ val/ test/ of WordNet-id folders, or images/ with "
                           "train.csv val.csv test.csv")
    pack.add_argument("-o", "--output", required=True, metavar="FILE.h5",
                      help="the dataset file to write")
    pack.add_argument("--seed", type=int, default=None,
                      help="omniglot: seed of the shuffle that splits characters into train "
                           "and test (default 0, the paper's split)")
    counts = pack.add_mutually_exclusive_group()
    counts.add_argument("--num-train", type=int, default=None, metavar="N",
                        help="omniglot: number of training characters (default 1200, the "
                             "paper's); the rest are test")
    counts.add_argument("--train-fraction", type=float, default=None, metavar="F",
                        help="omniglot: fraction of the characters used for training, instead "
                             "of --num-train (e.g. 0.75 for the small subsets)")
    pack.add_argument("--split-by", choices=("character", "alphabet"), default=None,
                      help="omniglot: shuffle characters (default, the paper's protocol) or "
                           "whole alphabets, so no alphabet is in both train and test")
    pack.set_defaults(func=run_pack)

    info = sub.add_parser("info", help="describe a packed dataset file",
                          description="Print the classes, images per class, split sizes, "
                                      "image shape, source and format version of a dataset.")
    info.add_argument("file", metavar="FILE.h5", help="a file written by `minireptile pack`")
    info.set_defaults(func=run_info)


def run_pack(args):
    files.output_file(args.output, "-o")               # before any image is read
    start = time.perf_counter()
    bar = Progress(0, label="decoding images", unit="images", every=5.0)

    def progress(done, total):       # a terminal's line is redrawn, a log gets one every 5 s
        bar.total = total            # which only the packer knows
        bar.update(done, force=done == total)

    try:
        stats = _pack(args, progress)
    finally:
        bar.close()                  # what follows (the summary or an error) gets its own line
    print(f"packed {stats['images']} images of {stats['classes']} classes "
          f"({stats['duplicates']} duplicates kept once) in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    print(describe(args.output))


def _pack(args, progress):
    if args.kind == "omniglot":
        return pack_omniglot(args.sources, args.output,
                             seed=0 if args.seed is None else args.seed,
                             num_train=1200 if args.num_train is None else args.num_train,
                             train_fraction=args.train_fraction,
                             split_by=args.split_by or "character", progress=progress)
    _miniimagenet_flags(args)
    return pack_miniimagenet(args.sources[0], args.output, progress=progress)


def _miniimagenet_flags(args):
    if len(args.sources) != 1:
        raise UserError(f"pack miniimagenet takes one folder, got {len(args.sources)}")
    given = [flag for flag, value in (("--seed", args.seed), ("--num-train", args.num_train),
                                      ("--train-fraction", args.train_fraction),
                                      ("--split-by", args.split_by)) if value is not None]
    if given:
        raise UserError(f"pack miniimagenet takes its split from the source folders; "
                        f"drop {', '.join(given)}")


def run_info(args):
    print(describe(args.file))


def describe(path):
    """The `info` text: format, source, image shape, classes, images per class, splits."""
    ds = load_dataset(path, lazy=True)
    with ds:
        sizes, a = ds.class_sizes, ds.attrs
        per_class = (f"{sizes.min()}" if sizes.min() == sizes.max() else
                     f"{sizes.min()}-{sizes.max()} (mean {sizes.mean():.1f})")
        lines = [f"{path}: minireptile dataset, format version {a['format_version']}",
                 f"  kind:         {ds.kind}",
                 f"  source:       {', '.join(a.get('source', []))}",
                 f"  image shape:  {'x'.join(map(str, ds.image_shape))} uint8, "
                 f"{len(ds.images)} images",
                 f"  classes:      {len(ds.class_names)}, {per_class} images per class "
                 f"(e.g. {ds.class_names[0]})"]
        for name, classes in ds.splits.items():
            lines.append(f"  split {name + ':':7s} {len(classes)} classes, "
                         f"{int(sizes[classes].sum())} images")
        if "split_seed" in a:
            lines.append(f"  split by {a['split_by']}, seed {a['split_seed']}")
        else:
            lines.append(f"  split by {a.get('split_by', '?')}")
    return "\n".join(lines)
