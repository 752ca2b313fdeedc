"""Case ``cost``: time and peak memory of one Omniglot 5-way 1-shot meta-iteration, each
algorithm at its own paper's settings (issue 24's "cost of second order").

    omniglot-finn   Finn et al.'s settings (``--defaults maml``): exact MAML keeping its
                    step's passes, exact MAML recomputing them (``--maml-recompute``), FOMAML
    omniglot-imaml  Rajeswaran et al.'s (``--defaults imaml``): iMAML, 16 steps, 5 CG steps
    omniglot        the paper's Reptile (n = 5 tasks, k = 5 Adam steps of 10 images)

Each row is one configuration in a fresh process (``case_inner_steps.child``: the batched
meta-iteration timed, peak RSS or CuPy's pool high-water mark). Random images: the cost does
not depend on them.
"""
from bench import cases
from bench.case_inner_steps import one_config

RUNS = (("omniglot-finn", "maml", {"algo": "maml"}),
        ("omniglot-finn", "maml-recompute", {"algo": "maml", "reuse": False}),
        ("omniglot-finn", "fomaml", {"algo": "fomaml"}),
        ("omniglot-imaml", "imaml", {"algo": "imaml"}),
        ("omniglot", "reptile", {"algo": "reptile"}))


def run(rep, mode, args):
    """A row per algorithm at its settings, each from its own process."""
    rep.note("cost: one meta-iteration per algorithm at its own paper's Omniglot 5-way 1-shot "
             "settings, each row a fresh process (peak_mb, base_mb as in inner_steps)")
    for model, label, algo in RUNS:
        one_config(rep, args, label, {"model": model, "k": cases.SETTINGS[model].k, **algo},
                   case="cost")
