"""The import graph of ``edge`` points down the layers of docs/architecture.md, without circles.

Every module of edge/ is parsed with ``ast``; every import counts, at module level or inside a
function (and under ``if TYPE_CHECKING``). Each module belongs to a layer (``LAYERS``, longest
prefix wins); an import may go to the same layer or a lower one, never up, and no set of modules
may import each other in a circle. ``argparse`` is imported under ``edge/cli/`` only, and edge never
imports training, quantize or TensorFlow (dependencies point one way: edge <- training <- quantize).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

EDGE = Path(__file__).resolve().parents[1] / "edge"

LAYERS: dict[str, int] = {
    # L1 contracts and value types
    "edge": 1, "edge.errors": 1, "edge.card": 1, "edge.options": 1, "edge.profile": 1,
    "edge.vote": 1, "edge.evidence": 1, "edge.metrics": 1, "edge.result": 1, "edge.storage": 1, "edge.untrusted": 1,
    "edge.uncertainty": 1,
    # L2 reading studies, preprocessing, the interpreters
    "edge.ingest": 2, "edge.preprocess": 2, "edge.runtime": 2, "edge.runtime_openvino": 2, "edge.phantom": 2, "edge.dataset": 2,
    "edge.selection_report": 2,
    # L3 the study's stage types (they hold ingest's Volume and preprocess's Selection, hence not L1),
    # model kinds: classifiers, Grad-CAM, scoring
    "edge.stages": 3, "edge.infer": 3, "edge.explain": 3, "edge.kinds": 3,
    # L4 the pipeline of one study
    "edge.pipeline": 4,
    # L5 engine, tune, outputs, validation: no argparse
    "edge.engine": 5, "edge.tune": 5, "edge.report": 5, "edge.plots": 5, "edge.validate": 5,
    # L6 services: they receive an engine and callables, never build each other
    "edge.watch": 6, "edge.retention": 6, "edge.dicomnet": 6, "edge.server": 6, "edge.doctor": 6,
    # L7 the commands: the only place that parses flags and wires services
    "edge.cli": 7,
}
FORBIDDEN_ROOTS = ("training", "quantize", "tensorflow", "tf_keras", "keras")
LAZY = {
    ("edge.ingest.parallel", "edge.ingest.pydicom_adapter"): "configures pydicom in each worker process",
    ("edge.server", "edge.dicomnet.service"): "a type only (if TYPE_CHECKING): ctedge serve builds the DICOM service",
    ("edge.server", "edge.server.stow"): "pynetdicom only when the profile has a dicom: section",
    ("edge.validate", "edge.plots"): "matplotlib only when plotting",
    ("edge.tune", "edge.phantom"): "synthetic studies are never loaded by predict",
}
"""The edge imports inside functions outside edge/cli/ (where commands load their services lazily,
so that ``ctedge predict`` starts fast), each with its reason: an import hidden in a function must
never dodge a circle."""


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the edge package."""
    found = {}
    for path in sorted(EDGE.rglob("*.py")):
        parts = list(path.relative_to(EDGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement of one module; ``from
    package import name`` counts as importing ``package.name`` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in known else base), node.lineno, id(node) in top


def layer(module: str) -> int:
    prefix = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    assert prefix is not None, f"{module} has no layer: add it to LAYERS (and to docs/architecture.md)"
    return LAYERS[prefix]


def graph() -> dict[str, dict[str, int]]:
    """module -> {edge module it imports: line}."""
    known = modules()
    return {name: {target: line for target, line, _ in imports(name, path, known) if target in known}
            for name, path in known.items()}


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_no_import_circles():
    edges = graph()
    found = circles(edges)
    lines = [" <-> ".join(c) + ": " + "; ".join(f"{a} -> {b} (line {edges[a][b]})" for a in c for b in c if b in edges[a])
             for c in found]
    print(f"{len(found)} import circle(s)", *lines, sep="\n  ")
    assert not found, f"{len(found)} import circle(s):\n" + "\n".join(lines)


def test_imports_point_down_the_layers():
    upward = [f"{a} (L{layer(a)}) -> {b} (L{layer(b)}), line {line}"
              for a, targets in graph().items() for b, line in targets.items() if layer(b) > layer(a)]
    print(f"{len(upward)} upward import(s)", *upward, sep="\n  ")
    assert not upward, f"{len(upward)} import(s) from a lower layer to a higher one:\n" + "\n".join(upward)


def test_argparse_only_under_cli():
    known = modules()
    found = [f"{name}: line {line}" for name, path in known.items() if layer(name) != LAYERS["edge.cli"]
             for target, line, _ in imports(name, path, known) if target.split(".")[0] == "argparse"]
    assert not found, "argparse imported outside edge/cli/:\n" + "\n".join(found)


def test_edge_never_imports_training_quantize_or_tensorflow():
    known = modules()
    found = [f"{name} -> {target}: line {line}" for name, path in known.items()
             for target, line, _ in imports(name, path, known) if target.split(".")[0] in FORBIDDEN_ROOTS]
    assert not found, "edge imports what it must not (edge <- training <- quantize):\n" + "\n".join(found)


def test_imports_inside_functions_are_lazy_loading_only():
    known = modules()
    hidden = {(name, target): line for name, path in known.items()
              for target, line, at_top in imports(name, path, known) if not at_top and target in known}
    print(f"{len(hidden)} edge import(s) inside functions",
          *[f"{a} -> {b}: line {line}" for (a, b), line in sorted(hidden.items())], sep="\n  ")
    unexplained = [f"{a} -> {b}: line {line}" for (a, b), line in sorted(hidden.items())
                   if layer(a) != LAYERS["edge.cli"] and (a, b) not in LAZY]
    assert not unexplained, ("edge imports inside functions, outside edge/cli/ (move them to the top, or add them "
                             "to LAZY with the reason):\n" + "\n".join(unexplained))
