"""The package's import graph (benchmarks/import_graph.py): core modules import no view, no cycle."""
import importlib.util
import sys
import textwrap
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "import_graph.py"
spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
graph = importlib.util.module_from_spec(spec)
sys.modules["import_graph"] = graph  # dataclasses look their module up there
spec.loader.exec_module(graph)


def test_the_graph_reads_imports_of_every_kind(tmp_path):
    """A made-up package: module-level, deferred, type-only and ``from . import`` arrows, a cycle
    and a core module importing a view are all found; type-only imports break nothing."""
    package = tmp_path / "samhw"
    package.mkdir()
    files = {
        "__init__.py": "",
        "prompts.py": "import numpy as np\n",
        "models.py": "from .prompts import x\nimport torch\n",
        "cache.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .models import SamModel\n",
        "train.py": "from . import models\n\ndef f():\n    from . import plots\n",
        "plots.py": "from samhw.report import y\n",
        "report.py": "def g():\n    import samhw.plots\n",
        "metrics.py": "def h():\n    import torch\n",
    }
    for name, text in files.items():
        (package / name).write_text(textwrap.dedent(text))
    edges, external = graph.import_graph(package)
    assert {(e.source, e.target, e.kind) for e in edges} == {
        ("models", "prompts", "module"), ("cache", "models", "typing"), ("train", "models", "module"),
        ("train", "plots", "deferred"), ("plots", "report", "module"), ("report", "plots", "deferred")}
    assert graph.cycles(edges) == [["plots", "report"]]
    found = graph.problems(edges, external)
    assert len(found) == 3
    assert found[0].startswith("core imports a view: train -> plots (deferred")
    assert found[1].startswith("torch in a torch-free module: metrics -> torch (deferred")
    assert found[2].startswith("cycle plots <-> report")
    module_level = [e for e in edges if e.kind == "module"]
    assert graph.problems(module_level, {}) == []


def test_module_level_imports_keep_core_apart_from_views_and_have_no_cycle():
    """What ``import samhw.<core module>`` runs: no view, no cycle, no torch in the torch-free core."""
    edges, external = graph.import_graph()
    module_level = [e for e in edges if e.kind == "module"]
    external = {m: [e for e in es if e.kind == "module"] for m, es in external.items()}
    assert graph.problems(module_level, external) == []
    assert {e.target for e in module_level if e.source == "predictor"} <= set(graph.CORE)


def test_the_torch_free_core_never_imports_torch():
    _, external = graph.import_graph()
    assert graph.torch_in_torch_free(external) == []


def test_no_core_module_imports_a_view_and_there_is_no_cycle_even_in_functions():
    edges, external = graph.import_graph()
    assert graph.problems(edges, external) == []
