"""README.md and the pages of docs/ say what the code does.

- Every ```python block of README.md and docs/*.md runs as written in a fresh interpreter:
  alone (`python block.py`) in an empty temporary folder, as a reader would paste it after
  `pip install .`. It may use only what it imports itself and files it finds through the
  package (``minireptile.data.embedded_omniglot()``).
- Every relative link (and its #anchor) points to a file (and a heading) that exists.
- The README is a front door: its two commands are the ones `.ci/run` and the first-time
  user run, it stays short, and it quotes no commit hashes or load averages.
- The `resolved:` line quoted in docs/training.md is what `minireptile train omniglot` prints.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def name(path):
    return path.relative_to(ROOT).as_posix()


def python_blocks():
    """(page:line, code) of each ```python block of README.md and docs/*.md."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        blocks += [(f"{name(page)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1))
                   for m in re.finditer(r"^```python\n(.*?)^```$", text, re.M | re.S)]
    return blocks


BLOCKS = python_blocks()


def test_pages_have_python_blocks():
    """The extraction works: the README's MAML example, docs/data.md's h5py and sampling."""
    codes = {where.split(":")[0]: [] for where, _ in BLOCKS}
    for where, code in BLOCKS:
        codes[where.split(":")[0]].append(code)
    assert any("meta_update(" in code for code in codes.get("README.md", []))
    assert any("import h5py" in code for code in codes.get("docs/data.md", []))
    assert any("sample_tasks(" in code for code in codes.get("docs/data.md", []))


@pytest.mark.parametrize("where,code", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_python_block_runs(where, code, tmp_path):
    (tmp_path / "block.py").write_text(code, encoding="utf-8")
    run = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, f"{where}:\n{code}\n{run.stderr}"


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    """The #anchors of a Markdown file's headings (a repeated one gets -1, -2, ...)."""
    seen, found = {}, set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", page.read_text("utf-8")), re.M):
        base = slug(m.group(1))
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


def links(page):
    """Every link target of a page, outside code blocks and code spans."""
    text = re.sub(r"`[^`\n]*`", "code", FENCE.sub("", page.read_text("utf-8")))
    return LINK.findall(text)


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):          # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{name(page)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{name(page)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_link_checker_sees_links():
    """The checker is not vacuous: it finds the README's links to every docs page."""
    targets = set(links(README))
    for page in ("training", "reproduce", "theory", "performance", "data", "distributed",
                 "demo", "api", "gradcheck"):
        assert f"docs/{page}.md" in targets
    assert slug("Presets: `--defaults quick|paper`") == "presets---defaults-quickpaper"


def test_readme_is_a_front_door():
    text = README.read_text("utf-8")
    assert len(text.splitlines()) <= 350
    assert "python -m pip install . && minireptile train omniglot" in text
    test_command = "python -m pip install '.[test]' && python -m pytest -q"
    assert test_command in text
    ci = (ROOT / ".ci" / "run").read_text("utf-8").strip().splitlines()
    assert ci[-1] == test_command                        # "`.ci/run` runs this same command"
    assert "load average" not in text
    hashes = re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text)
    assert not hashes, hashes


def test_quoted_resolved_line_is_current(tmp_path):
    """docs/training.md quotes the quick run's `resolved:` line: the code must print it.

    The run here changes three flags (one iteration, one evaluation task of one step); its
    line must be the quoted one with those three values, and is read before it trains.
    """
    quoted = re.search(r"^resolved: (minireptile train omniglot .*)$",
                       (ROOT / "docs" / "training.md").read_text("utf-8"), re.M).group(1)
    short = {"--meta-iters": "1", "--eval-samples": "1", "--eval-iters": "1"}
    expected = quoted
    for flag, value in short.items():
        expected, count = re.subn(rf"(?<= ){flag} \S+", f"{flag} {value}", expected)
        assert count == 1, flag
    command = [sys.executable, "-m", "minireptile", "train", "omniglot", "--threads", "1",
               *[word for pair in short.items() for word in pair]]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    printed = []
    try:
        for line in proc.stdout:                         # its second line; stop it there
            printed.append(line)
            if line.startswith("resolved: ") or len(printed) == 10:
                break
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert printed[-1].rstrip("\n") == "resolved: " + expected, "".join(printed)
