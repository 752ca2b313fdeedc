"""The package's shape: imports point one way, and the trainer holds no meta arithmetic.

cli -> reproduce -> train / evaluate / sine -> config -> metabatch -> meta -> models -> layers
-> backend, with parallel (the CPU scheduler) and data beside: read from the modules' own
``import`` statements (ast), so the test sees what a reader sees.
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


def _imports_of(graph, module, forbidden):
    """{m: the forbidden modules m imports} for module and its submodules."""
    found = {}
    for m, edges in graph.items():
        if m == module or m.startswith(module + "."):
            bad = {e for e in edges for f in forbidden if e == f or e.startswith(f + ".")}
            if bad:
                found[m] = bad
    return found


def test_arrows_point_one_way():
    """No layer imports a layer above it: the meta math never sees how a meta-batch runs,
    the trainer, evaluation or the CLI; models never see the meta core; the scheduler never
    sees the math it schedules; a configuration never sees what runs it; sine and data never
    see the trainer."""
    graph = import_graph()
    above = {"minireptile.meta": {"minireptile.train", "minireptile.evaluate", "minireptile.cli",
                                  "minireptile.metabatch"},
             "minireptile.metabatch": {"minireptile.train", "minireptile.evaluate",
                                       "minireptile.cli"},
             "minireptile.models": {"minireptile.meta", "minireptile.metabatch",
                                    "minireptile.train"},
             "minireptile.parallel": {"minireptile.meta", "minireptile.models",
                                      "minireptile.train"},
             "minireptile.evaluate": {"minireptile.train", "minireptile.cli"},
             "minireptile.config": {"minireptile.train", "minireptile.evaluate",
                                    "minireptile.cli", "minireptile.reproduce"},
             "minireptile.sine": {"minireptile.train", "minireptile.evaluate", "minireptile.cli"},
             "minireptile.data": {"minireptile.meta", "minireptile.train",
                                  "minireptile.evaluate"},
             "minireptile.distributed": {"minireptile.meta", "minireptile.train",
                                         "minireptile.evaluate", "minireptile.models"},
             "minireptile.reproduce": {"minireptile.cli"}}
    assert set(above) <= set(graph), set(above) - set(graph)      # the rules name real modules
    for module, forbidden in above.items():
        assert not _imports_of(graph, module, forbidden)


def test_only_the_command_line_imports_the_command_line():
    """The library is called with configurations; the CLI is one of its clients. Only the
    CLI itself and ``python -m minireptile`` (its entry point) import minireptile.cli."""
    graph = import_graph()
    for m in graph:
        if m == "minireptile.cli" or m.startswith("minireptile.cli.") or \
                m == "minireptile.__main__":
            continue
        assert not _imports_of({m: graph[m]}, m, {"minireptile.cli"}), m


def test_trainer_holds_no_inner_loop_or_outer_update():
    """train.py feeds metabatch.meta_update; it never takes a gradient or an optimizer step."""
    tree = ast.parse((PACKAGE / "train.py").read_text())
    calls = {node.func.attr for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert not calls & {"grad", "loss_and_grad", "hvp", "step", "task_terms", "merge_sums",
                        "outer_step"}, calls
    assert "meta_update" in {node.func.id for node in ast.walk(tree)
                             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert any(isinstance(node, ast.ImportFrom) and node.module == "metabatch" and
               "meta_update" in {a.name for a in node.names} for node in ast.walk(tree))
