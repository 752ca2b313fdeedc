"""Case ``imaml_k``: memory and time of one Omniglot meta-iteration against k inner steps.

iMAML's meta-gradient needs Hessian-vector products at the adapted weights only (the
conjugate-gradient solve of ``meta.imaml_gradient``), so its memory should not grow with k;
exact MAML keeps each step's passes (``maml``, O(k x activations)) or each step's weights
(``maml-recompute``, O(k P)); FOMAML keeps nothing. Each row is one configuration in a fresh
process (``case_inner_steps.child``: peak RSS, or CuPy's pool high-water mark on the GPU),
k = 1, 2, 5, 10, 20, 50, 100 (1 and 5 with --quick), the Omniglot CNN with n = 5 tasks of
10 images per step and a test batch of 5, SGD steps (iMAML: lambda 1, 5 CG steps).
"""
from bench.case_inner_steps import one_config
from minireptile import backend

KS = {"full": (1, 2, 5, 10, 20, 50, 100), "quick": (1, 5)}
RUNS = (("imaml", {"algo": "imaml"}), ("maml", {"algo": "maml"}),
        ("maml-recompute", {"algo": "maml", "reuse": False}), ("fomaml", {"algo": "fomaml"}))


def run(rep, mode, args):
    """A row per algorithm and k, each from its own process."""
    what = "CuPy pool high-water mark" if backend.device() == "cuda" else "peak RSS"
    rep.note(f"imaml_k: each row in a fresh process; peak_mb = {what}, delta_mb = peak_mb - "
             f"base_mb (the same before the first meta-iteration)")
    for label, algo in RUNS:
        for k in KS[mode]:
            one_config(rep, args, label, {"model": "omniglot", "k": k, **algo}, case="imaml_k")
