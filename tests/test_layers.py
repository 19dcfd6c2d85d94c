"""The dependency rules of ARCHITECTURE.md, read from the source (imports inside functions
included): no import cycle, blocks/ and datasets/ import nothing of cinn_sr, the model floor
nothing of the run floor."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
RUN_FLOOR = {"config", "driver", "loop", "train", "pretrain", "validation", "start_weights",
             "step_checks", "rng", "runs", "distributed", "default_data"}


def modules() -> dict[str, Path]:
    found = {"cli": ROOT / "cli.py"}
    for folder, package in (("cinn_sr", "cinn_sr"), ("cinn_sr/explore", "cinn_sr.explore"),
                            ("blocks", "cinn_sr.blocks"), ("datasets", "cinn_sr.datasets")):
        for path in (ROOT / folder).glob("*.py"):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules `name` imports anywhere in its source."""
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rsplit(".", 1)[0]
                base = f"{parent}.{base}" if base else parent
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    return {t for t in targets if t in known and t != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_no_module_imports_a_module_that_imports_it_back():
    edges = graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                # a package's __init__ re-exporting its own modules is not a cycle
                todo.extend(d for d in edges[node] if not d.startswith(node + "."))
        return False

    cycles = [(a, b) for a in edges for b in edges[a]
              if not b.startswith(a + ".") and not a.startswith(b + ".") and reaches(b, a)]
    assert not cycles, cycles


def test_lower_layers_import_nothing_above_them():
    for name, targets in graph().items():
        if name.startswith(("cinn_sr.blocks", "cinn_sr.datasets")):
            above = {t for t in targets if not t.startswith(name.rsplit(".", 1)[0])}
            assert not above, (name, above)
        elif name.startswith("cinn_sr.") and name.split(".")[1] not in RUN_FLOOR:
            run = {t for t in targets if t.split(".")[1:2] and t.split(".")[1] in RUN_FLOOR}
            assert not run, (name, run)
