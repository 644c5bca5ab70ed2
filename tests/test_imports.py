"""The package's import graph has no cycle, counting the imports inside functions too.

Every module of ``src/sparsecodes`` is parsed with :mod:`ast` (nothing is imported). Each
``import`` and ``from ... import`` statement anywhere in a module (top level, inside functions,
methods, ``try`` blocks) becomes an edge to the sparsecodes module it names; statements inside an
``if TYPE_CHECKING:`` block are not counted (they never run). ``from pkg import name`` points to
``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``); relative imports are
resolved against the importing module's package. The implicit import of a module's parent
packages is not an edge; an explicit import of a package (``from sparsecodes.models import x``)
is an edge to that package's ``__init__``.

Besides having no cycle, every import must go down (or sideways within a layer) the layers of
:data:`LAYERS`, the table docs/architecture.md explains.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "sparsecodes"

# Lowest first. A module belongs to the layer of its longest listed prefix (names relative to
# the package; "" is the package root). It may import modules of its own layer or lower ones.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "files",
            "seeding",
            "devices",
            "validation",
            "flops",
            "codes",
            "normalise",
            "kernels",
            "data",
            "synthetic",
            "provenance",
            "worlds",
            "coder_files",
        ),
    ),
    ("blocks", ("dictionary", "encoders", "metrics", "activations", "models", "distributed")),
    ("training loop", ("training",)),
    ("coder", ("sparse_coder", "transcoder")),
    ("formats", ("formats",)),
    (
        "applications",
        (
            "",
            "evaluation",
            "interp",
            "autointerp",
            "circuits",
            "experiments",
            "training.jobs",
            "loading",
            "uses",
            "graphs",
        ),
    ),
    ("cli", ("cli", "__main__")),
]


def module_names() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (packages as their name)."""
    out: dict[str, Path] = {}
    for path in sorted((SRC / PKG).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement reachable without entering an ``if TYPE_CHECKING:`` body."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The sparsecodes modules that module ``name`` (at ``path``) imports."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = alias.name
                while target and target not in modules:  # deepest module the dotted name names
                    target = target.rpartition(".")[0]
                if target:
                    out.add(target)
            continue
        if node.level:
            base_parts = package.split(".")
            if node.level > 1:
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base.split(".")[0] != PKG:
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in modules:
                out.add(sub)
            elif base in modules:
                out.add(base)
            else:
                raise AssertionError(f"{path}: import from {base!r}, which is not a module")
    out.discard(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (iterative DFS with white/grey/black marks)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path = [root]
        iters = [iter(sorted(graph[root]))]
        state[root] = 1
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50, "the walk found too few modules; is SRC right?"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_walker_counts_function_level_imports_and_skips_type_checking(tmp_path: Path) -> None:
    """The walker itself: a cycle through a function-level import is found, a TYPE_CHECKING one
    is not, and ``from pkg import name`` resolves to the submodule or to the package."""
    root = tmp_path / PKG
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from sparsecodes.b import g\n")
    (root / "b.py").write_text("from . import a\n")
    (root / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sparsecodes import d\n"
    )
    (root / "d.py").write_text("import sparsecodes.c\n")
    (root / "sub" / "__init__.py").write_text("from sparsecodes.sub.e import E\n")
    (root / "sub" / "e.py").write_text("from sparsecodes.sub import F\nE = 1\n")
    modules = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in root.rglob("*.py")
    }
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph["sparsecodes.a"] == {"sparsecodes.b"}
    assert graph["sparsecodes.b"] == {"sparsecodes.a"}
    assert graph["sparsecodes.c"] == set()
    assert graph["sparsecodes.d"] == {"sparsecodes.c"}
    assert graph["sparsecodes.sub.e"] == {"sparsecodes.sub"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) in (
        {"sparsecodes.a", "sparsecodes.b"},
        {"sparsecodes.sub", "sparsecodes.sub.e"},
    )
    del graph["sparsecodes.b"]
    graph["sparsecodes.a"] = set()
    assert find_cycle(graph) == ["sparsecodes.sub", "sparsecodes.sub.e", "sparsecodes.sub"]


def test_training_never_imports_the_coder_module_at_run_time() -> None:
    """``sparse_coder`` -> ``training.trainer`` is the one direction (SparseCoder.fit trains)."""
    graph = import_graph()
    assert "sparsecodes.training.trainer" in graph["sparsecodes.sparse_coder"]
    training = [m for m in graph if m.startswith("sparsecodes.training")]
    assert training
    importers = [m for m in training if "sparsecodes.sparse_coder" in graph[m]]
    # jobs builds coders from job specs; it is not imported by the coder, so no cycle
    assert set(importers) <= {"sparsecodes.training.jobs"}, importers


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module`` (a dotted sparsecodes name), by longest prefix."""
    rel = module.removeprefix(PKG).removeprefix(".")
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            hit = (p == "" and rel == "") or (p != "" and (rel == p or rel.startswith(p + ".")))
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise AssertionError(f"{module} is in no layer; add it to LAYERS and docs/architecture.md")
    return best


def test_imports_go_down_the_layers() -> None:
    graph = import_graph()
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
        for m, targets in sorted(graph.items())
        for t in sorted(targets)
        if layer_of(t) > layer_of(m)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_layer_of_uses_the_longest_prefix() -> None:
    names = [name for name, _ in LAYERS]
    assert names[layer_of("sparsecodes.training.jobs")] == "applications"
    assert names[layer_of("sparsecodes.training.trainer")] == "training loop"
    assert names[layer_of("sparsecodes")] == "applications"
    assert names[layer_of("sparsecodes.codes")] == "foundation"
    assert names[layer_of("sparsecodes.cli.train")] == "cli"
