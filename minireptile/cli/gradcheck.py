"""``minireptile gradcheck``: finite-difference checks of every pass and meta-gradient."""
from .. import backend, files, gradcheck
from . import add_device_flags


def register(subparsers):
    parser = subparsers.add_parser(
        "gradcheck",
        help="check gradients and Hessian-vector products against finite differences",
        description="Compare every layer's, loss's and model's backward pass with float64 "
                    "central differences (h = 1e-5), the R-operator passes and hvp with "
                    "differences of gradients, and check u.Hv == v.Hu and that T tasks in one "
                    "batched call match T separate calls; then the meta-gradients of meta.py: "
                    "exact MAML against differences of the unrolled loss (k = 1..3), FOMAML "
                    "and Reptile against their definitions, and the Taylor expansion of Eqs. "
                    "(25)-(27) (its error falls 4-fold when alpha halves). Prints one row per "
                    "check and exits with status 1 if any check fails. Always float64.")
    parser.add_argument("--model", choices=gradcheck.FAMILIES + ("all",), default="mlp",
                        help="which components to check: mlp (Linear, ReLU, Tanh, MSE, "
                             "softmax cross-entropy, the 1-64-64-1 sine MLP, a classifier "
                             "MLP), omniglot or miniimagenet (conv layers, batch norm, "
                             "pooling and small versions of the paper's CNNs), or all "
                             "(default mlp)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON here")
    add_device_flags(parser, dtype=False)
    parser.set_defaults(func=run)


def run(args):
    backend.set_backend(args.device, dtype="float64")
    if args.json:
        files.output_file(args.json, "--json")
    families = gradcheck.FAMILIES if args.model == "all" else (args.model,)
    rows = gradcheck.run_checks(families, xp=backend.xp(), seed=args.seed)
    print(f"minireptile gradcheck: {', '.join(families)} on {backend.device()}, "
          f"seed {args.seed}")
    print(gradcheck.format_table(rows))
    if args.json:
        table = {"device": backend.device(), "seed": args.seed, "families": list(families),
                 "rows": [r._asdict() for r in rows]}
        files.write_json(args.json, table)
    return 0 if all(r.passed for r in rows) else 1
