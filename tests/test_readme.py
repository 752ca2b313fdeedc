"""Every ```python block of README.md runs as written in a fresh interpreter.

Each block runs alone (`python block.py`) in an empty temporary folder, as a reader would
paste it after `pip install .`: it may use only what it imports itself and files it finds
through the package (``minireptile.data.embedded_omniglot()``).
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    """(line number, code) of each ```python block of README.md."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S)]


BLOCKS = python_blocks()


def test_readme_has_python_blocks():
    """The extraction works: the Data section's two blocks at least (h5py, sampling)."""
    codes = [code for _, code in BLOCKS]
    assert any("import h5py" in code for code in codes)
    assert any("sample_tasks(" in code for code in codes)


@pytest.mark.parametrize("line,code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, code, tmp_path):
    (tmp_path / "block.py").write_text(code, encoding="utf-8")
    run = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"README.md line {line}:\n{code}\n{run.stderr}"
