"""Datasets for few-shot classification (Section 6.1): packed HDF5 files and task sampling.

``pack_omniglot`` / ``pack_miniimagenet`` turn the original archives or folders into one
HDF5 file (layout in ``format.py``); ``embedded_omniglot()`` is the path of the one shipped in
the package; ``load_dataset`` reads and checks a file; ``sample_tasks`` draws N-way K-shot
tasks and ``inner_batches`` the inner loop's mini-batches.
"""
from .format import FORMAT_VERSION, Dataset, load_dataset, write_dataset
from .miniimagenet import pack_miniimagenet
from .omniglot import embedded_omniglot, pack_omniglot
from .sampler import inner_batches, sample_tasks

__all__ = ["FORMAT_VERSION", "Dataset", "load_dataset", "write_dataset", "embedded_omniglot",
           "pack_omniglot", "pack_miniimagenet", "sample_tasks", "inner_batches"]
