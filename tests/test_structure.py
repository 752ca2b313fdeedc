"""The package's shape: imports point one way, and the trainer holds no meta arithmetic.

cli -> train / evaluate -> meta -> models -> layers -> backend, with data beside: read from
the modules' own ``import`` statements (ast), so the test sees what a reader sees.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "minireptile"


def _module(path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """{module: set of package modules it imports}, from every .py file of the package."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                if node.level:
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    edges.add(f"{target}.{alias.name}")
                    edges.add(target)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
        graph[name] = edges
    return {m: {e for e in edges if e in graph and e != m} for m, edges in graph.items()}


def test_no_import_cycles():
    graph = import_graph()
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open" and not m.startswith(n + "."):   # a package's own
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_arrows_point_one_way():
    """No layer imports a layer above it: the meta core and everything below it never see
    the trainer, evaluation or the CLI; task distributions and data never see the core."""
    graph = import_graph()
    above = {"minireptile.meta": {"minireptile.train", "minireptile.evaluate", "minireptile.cli"},
             "minireptile.models": {"minireptile.meta", "minireptile.train"},
             "minireptile.evaluate": {"minireptile.train", "minireptile.cli"},
             "minireptile.tasks.sine": {"minireptile.meta", "minireptile.train"},
             "minireptile.data": {"minireptile.meta", "minireptile.train",
                                  "minireptile.evaluate"},
             "minireptile.distributed": {"minireptile.meta", "minireptile.train",
                                         "minireptile.evaluate", "minireptile.models"}}
    for module, forbidden in above.items():
        for m, edges in graph.items():
            if m == module or m.startswith(module + "."):
                bad = {e for e in edges for f in forbidden if e == f or e.startswith(f + ".")}
                assert not bad, f"{m} imports {bad}"


def test_trainer_holds_no_inner_loop_or_outer_update():
    """train.py feeds meta.meta_update; it never takes a gradient or an optimizer step."""
    tree = ast.parse((PACKAGE / "train.py").read_text())
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert not calls & {"grad", "loss_and_grad", "hvp", "step", "merge_tasks"}, calls
    assert "meta_update" in {node.func.id for node in ast.walk(tree)
                             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
