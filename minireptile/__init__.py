"""minireptile: Reptile, first-order MAML and exact MAML in NumPy/CuPy, written by hand.

Nichol, Achiam, Schulman, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999.
The command line is ``minireptile`` (see ``minireptile --help``); the modules map to the
paper as listed in README.md.
"""
__version__ = "0.1.0"
