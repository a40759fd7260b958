"""Check crysray's import structure: no cycles, and no import from a lower layer to a higher one.

    python tools/check_layers.py          # exit 0 when the structure holds, else 1 and the faults

Every module under crysray/ belongs to one layer (``LAYERS``, lowest first); a module may import
modules of its own layer or of lower ones, never higher ones, and the imports between modules
(those inside functions included: a lazy import is still a dependency) may not form a cycle.
A module that no layer claims is a fault too, so a new module gets its place on purpose.
The layers are explained in docs/design.md.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "crysray"

# (layer name, module prefixes), lowest layer first; the longest matching prefix decides
LAYERS = [
    ("core", ["crysray", "crysray.types", "crysray.paths", "crysray.atomic", "crysray.config",
              "crysray.storage", "crysray.resources", "crysray.structures", "crysray.mp",
              "crysray.sizing", "crysray.progress"]),
    ("maths", ["crysray.nets", "crysray.methods"]),
    ("data and training", ["crysray.data", "crysray.train"]),
    ("sampling and funnel", ["crysray.sample", "crysray.filter"]),
    ("screening campaigns", ["crysray.screen"]),
    ("evaluation and reports", ["crysray.eval", "crysray.report"]),
    # the evaluation entry points (python -m crysray.eval.run_csp) are command lines too
    ("command line and Ray", ["crysray.cli", "crysray.commands", "crysray.command",
                              "crysray.console", "crysray.distributed", "crysray.eval.run_csp",
                              "crysray.eval.run_dng"]),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # the top package matches only itself; every other prefix its submodules too
            below = prefix != "crysray" and module.startswith(prefix + ".")
            matches = module == prefix or below
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """crysray modules that ``path`` imports (``from a import b`` counts ``a.b`` if it is a
    module); imports under ``if TYPE_CHECKING:`` are not dependencies at run time."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m in modules}


def _runtime_nodes(tree: ast.AST):
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(paths)
    graph = {m: imported_modules(p, modules) - {m} for m, p in paths.items()}
    # importing a.b.c runs the package a.b first: a dependency on it, but one that cannot be
    # avoided, so package __init__ files are left out of the cycle check
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return out


def faults() -> list[str]:
    graph = import_graph()
    problems = [f"no layer for {m} (add it to LAYERS)" for m in graph if layer_of(m) is None]
    for module, deps in sorted(graph.items()):
        own = layer_of(module)
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if own is not None and theirs is not None and theirs > own:
                problems.append(
                    f"{module} ({LAYERS[own][0]}) imports {dep} ({LAYERS[theirs][0]}), "
                    "a higher layer"
                )
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def main() -> int:
    problems = faults()
    for problem in problems:
        print(problem)
    print(f"{len(problems)} layering faults in {PACKAGE}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
