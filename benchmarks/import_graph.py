"""samhw's internal imports, read from the source (nothing is imported), and what breaks the layering.

Each arrow ``a -> b`` is one module of the package importing another, tagged by where the import
statement sits: ``module`` (at module level: runs on ``import a``), ``deferred`` (inside a function:
runs when that function is called) or ``typing`` (under ``if TYPE_CHECKING:``: never runs).
Core modules (:data:`CORE`) must not import views (:data:`VIEWS`), and there must be no cycle.

    python benchmarks/import_graph.py            # every arrow, then the problems; exit 1 if any
    python benchmarks/import_graph.py --module   # module-level arrows only
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "samhw"

#: Modules that compute: they return data and write no figures or Markdown. Listed names that do
#: not exist (yet) are ignored; modules in neither list (cli, study, bench, ...) may import anything.
CORE = ("prompts", "metrics", "stats", "data", "models", "cache", "evaluate", "train", "refine", "predictor",
        "fast_decoder", "onnx_encoder", "resources", "fileio", "imageio", "backends", "errors", "shipped_reader",
        "analysis", "encoder_tail")
#: Modules that draw, write reports or drive notebooks.
VIEWS = ("plots", "report", "widgets", "click_widget", "notebook", "architecture")
#: Core modules that must not import torch (at module level or in a function).
TORCH_FREE = ("prompts", "metrics", "stats", "analysis")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: str  # "module", "deferred" or "typing"
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.kind}, samhw/{self.source}.py:{self.line})"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, modules: set[str]) -> list[str]:
    """The package's modules that one import statement names ("" for the package itself)."""
    out = []
    if isinstance(node, ast.ImportFrom):
        if node.level == 1 or (node.level == 0 and node.module and node.module.split(".")[0] == "samhw"):
            base = node.module if node.level == 1 else ".".join(node.module.split(".")[1:])
            if base:
                out.append(base.split(".")[0])
            else:  # from . import x, y: submodules, or names of __init__
                out += [a.name if a.name in modules else "" for a in node.names]
    else:
        out += [a.name.split(".")[1] if a.name.count(".") else "" for a in node.names if a.name.split(".")[0] == "samhw"]
    return out


def _third_party(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module.split(".")[0]] if node.level == 0 and node.module else []
    return [a.name.split(".")[0] for a in node.names]


def _walk(tree: ast.Module):
    """(import node, kind) for every import statement of a module."""

    def visit(node: ast.AST, kind: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, kind
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(child, "typing" if kind == "typing" else "deferred")
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for part in child.body:
                    yield from visit(ast.Module(body=[part], type_ignores=[]), "typing")
                for part in child.orelse:
                    yield from visit(ast.Module(body=[part], type_ignores=[]), kind)
            else:
                yield from visit(child, kind)

    yield from visit(tree, "module")


def import_graph(package: Path = PACKAGE) -> tuple[list[Edge], dict[str, list[Edge]]]:
    """Internal arrows between the package's modules, and each module's third-party imports (as
    edges to the top-level package name, e.g. ``torch``)."""
    modules = {p.stem for p in package.glob("*.py")}
    edges, external = [], {}
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node, kind in _walk(tree):
            for target in _targets(node, modules):
                if target and target != path.stem:
                    edges.append(Edge(path.stem, target, kind, node.lineno))
            for name in _third_party(node):
                if name != "samhw":
                    external.setdefault(path.stem, []).append(Edge(path.stem, name, kind, node.lineno))
    return edges, external


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(found)


def core_to_view(edges: list[Edge]) -> list[Edge]:
    """Arrows from a core module to a view (type-only imports excepted)."""
    return [e for e in edges if e.source in CORE and e.target in VIEWS and e.kind != "typing"]


def torch_in_torch_free(external: dict[str, list[Edge]]) -> list[Edge]:
    return [e for m in TORCH_FREE for e in external.get(m, []) if e.target == "torch" and e.kind != "typing"]


def problems(edges: list[Edge], external: dict[str, list[Edge]]) -> list[str]:
    """Every arrow that breaks the layering and every cycle (type-only imports left out)."""
    running = [e for e in edges if e.kind != "typing"]
    out = [f"core imports a view: {e}" for e in core_to_view(running)]
    out += [f"torch in a torch-free module: {e}" for e in torch_in_torch_free(external)]
    for component in cycles(running):
        inside = [str(e) for e in running if e.source in component and e.target in component]
        out.append(f"cycle {' <-> '.join(component)}: " + "; ".join(inside))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--module", action="store_true", help="module-level imports only")
    args = parser.parse_args(argv)
    edges, external = import_graph()
    if args.module:
        edges = [e for e in edges if e.kind == "module"]
        external = {m: [e for e in es if e.kind == "module"] for m, es in external.items()}
    width = max(len(e.source) for e in edges)
    for source in sorted({e.source for e in edges}):
        layer = "core" if source in CORE else "view" if source in VIEWS else "other"
        arrows = dict.fromkeys(f"{e.target}{'' if e.kind == 'module' else ' (' + e.kind + ')'}"
                               for e in edges if e.source == source)
        print(f"{source:<{width}}  [{layer:<5}] -> {', '.join(arrows)}")
    others = [e for e in edges if e.source not in CORE and e.source not in VIEWS and e.target in VIEWS]
    if others:
        print("\nother modules importing views (allowed): " + "; ".join(str(e) for e in others))
    found = problems(edges, external)
    print("\n" + ("\n".join(found) if found else "no arrow from core to a view, no cycle"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
