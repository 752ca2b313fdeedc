"""The examples a user copies run as written and do what they say."""
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_own_tasks_meta_trains_a_users_model_with_reptile_and_maml(tmp_path):
    """examples/own_tasks.py: both meta-learned inits fit new tasks' points better after
    5 SGD steps than the random init they started from (a clear margin: below 60% of it)."""
    out = subprocess.run([sys.executable, str(EXAMPLES / "own_tasks.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, check=True).stdout
    loss = {name.strip(): float(v) for name, v in
            re.findall(r"^\s*(\S[^:]*): loss on new points after 5 SGD steps ([\d.]+)$", out,
                       re.M)}
    assert set(loss) == {"reptile", "maml", "random init"}, out
    for algo in ("reptile", "maml"):
        assert loss[algo] < 0.6 * loss["random init"], out
