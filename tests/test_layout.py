"""The package's layering: no import circle (even at type level), the op layer below the passes,
the library below the application, and op knowledge only in the op table."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1] / "fxprune"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every fxprune module `name` imports, at any level: top, in functions, under
    TYPE_CHECKING (a type-level import is still a dependency)."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for alias in node.names:  # `from fxprune import ops` imports the module fxprune.ops
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for name in MODULES:
        g.add_node(name)
        g.add_edges_from((name, dep) for dep in _imports(name))
    return g


def _is_init_edge(a: str, b: str) -> bool:
    # A package's __init__ re-exporting its own submodules is not a dependency of theirs.
    return b.startswith(a + ".")


def test_no_import_circle() -> None:
    g = _graph()
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if _is_init_edge(a, b)
                         or a == "fxprune" or b == "fxprune"])
    cycles = list(nx.simple_cycles(g))
    assert cycles == [], f"import circles: {cycles}"


@pytest.mark.parametrize("lower, upper", [
    ("fxprune.ops", "fxprune.passes"),  # the op layer is below every pass
    ("fxprune.ops", "fxprune.export"),
    ("fxprune.graph", "fxprune.export"),
])
def test_layer_imports_nothing_above_it(lower: str, upper: str) -> None:
    g = _graph()
    offending = [(a, b) for a, b in g.edges
                 if (a == lower or a.startswith(lower + ".")) and (b == upper or b.startswith(upper + "."))]
    assert offending == []


def test_library_never_imports_the_application() -> None:
    g = _graph()
    library = [m for m in MODULES if not m.startswith("fxprune.app") and m != "fxprune.__main__"]
    offending = [(a, b) for a in library for b in g.successors(a) if b.startswith("fxprune.app")]
    assert offending == []


# Layer classes a side list would name; outside the op table only fxprune's own models use them.
_LAYER = re.compile(r"\bnn\.(modules\.(conv|batchnorm|pooling|linear|normalization)|Conv|Linear|BatchNorm|GroupNorm|LayerNorm|InstanceNorm|"
                    r"Embedding|MaxPool|AvgPool|Adaptive)|_ConvNd|_NormBase")


def test_only_the_op_table_knows_layer_classes() -> None:
    offending = [f"{name}:{i}" for name, path in MODULES.items()
                 if not name.startswith("fxprune.ops") and name != "fxprune.app.model_zoo"
                 for i, line in enumerate(path.read_text().splitlines(), 1)
                 if _LAYER.search(line)]
    assert offending == []


def test_the_checks_see_imports_at_every_level() -> None:
    # The passes import the op layer at module level; the CLI imports the job inside a function.
    g = _graph()
    assert g.has_edge("fxprune.passes.analyze", "fxprune.ops.api")
    assert g.has_edge("fxprune.app.cli", "fxprune.app.job")
    assert g.has_edge("fxprune.passes.slim", "fxprune.ops")
