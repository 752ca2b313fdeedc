"""The numbers of ``minireptile reproduce`` set beside the paper's: 95% intervals, the
words for a finding, Markdown tables (written and parsed back), the figure's file.

An accuracy is a mean over tasks with its 95% half-width (1.96 standard errors, as
``minireptile eval`` reports it). Two estimates differ when their difference exceeds the
half-width of the difference, sqrt(h1^2 + h2^2) ("the two intervals combined").
"""
import math

from .. import files

NO_MATPLOTLIB = "matplotlib is not installed: no figure (pip install 'minireptile[plot]')"


def figure(path, draw):
    """draw(plt) -> a matplotlib figure, saved to path atomically; False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(NO_MATPLOTLIB)
        return False
    fig = draw(plt)
    files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110,
                                                   bbox_inches="tight"))
    plt.close(fig)
    return True


# -- comparing numbers with their 95% intervals ---------------------------------------------

def combined(*halves):
    """The 95% half-width of a sum or difference of independent estimates: sqrt(sum h^2)."""
    return math.sqrt(sum(h * h for h in halves))


def pct(value, half=None):
    """'95.39%' or '95.39 +/- 0.09%' from fractions."""
    return f"{100 * value:.2f}%" if half is None else f"{100 * value:.2f} +/- {100 * half:.2f}%"


def compare(a, b):
    """'above', 'below' or 'within' : a = (mean, half) against b, by their combined interval."""
    diff, half = a[0] - b[0], combined(a[1], b[1])
    return "above" if diff > half else "below" if -diff > half else "within"


def verdict(claim_holds, claim_opposite):
    """The words for a finding: reproduced, opposite, or not resolved by the intervals."""
    if claim_holds:
        return "reproduced"
    if claim_opposite:
        return "not reproduced (the opposite, beyond the 95% intervals)"
    return "not resolved (within the 95% intervals)"


def accuracy(results, split="test"):
    """(mean, 95% half-width) of a train/eval results JSON's split."""
    r = results[split]
    return r["accuracy"], r["ci95"]


# -- Markdown tables ------------------------------------------------------------------------

def markdown_table(header, rows):
    """A Markdown table: header (names) and rows (lists of cells, converted with str)."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(header), "|" + " --- |" * len(header), *map(line, rows)]) + "\n"


def parse_tables(markdown):
    """Every Markdown table in a text, as a list of lists of {header: cell} dicts.

    Raises ValueError when a table's separator is missing or a row has another number of
    cells than its header.
    """
    tables, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        header = _cells(lines[i])
        if i + 1 >= len(lines) or not all(set(c) <= set("-: ") and c for c in
                                          _cells(lines[i + 1])):
            raise ValueError(f"line {i + 2}: a table's separator line is missing")
        rows, i = [], i + 2
        while i < len(lines) and lines[i].startswith("|"):
            cells = _cells(lines[i])
            if len(cells) != len(header):
                raise ValueError(f"line {i + 1}: {len(cells)} cells, the header has "
                                 f"{len(header)}")
            rows.append(dict(zip(header, cells)))
            i += 1
        tables.append(rows)
    return tables


def _cells(line):
    parts, cell, escaped = [], "", False
    for ch in line.strip()[1:]:
        if ch == "|" and not escaped:
            parts.append(cell.strip())
            cell = ""
        else:
            cell += ch
        escaped = ch == "\\" and not escaped
    return [p.replace("\\|", "|") for p in parts]
