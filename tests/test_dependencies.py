"""Every third-party import in the package is a declared dependency (core or a named extra).

A new user installs only ``bash scripts/install.sh`` (the core dependencies plus the ``gguf``
extra); an import of anything else crashes their command. So: every import in ``src/sparsecodes``
(those inside functions included) maps (``importlib.metadata.packages_distributions``) to a
distribution declared in ``[project.dependencies]`` or in a runtime extra; and an import of an
extra-only package is never at module level (outside ``try``), and its module names the extra in
its error (``pip install 'sparsecodes[NAME]'``).
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "sparsecodes"
# extras for developing sparsecodes, never needed at runtime
DEV_EXTRAS = {"test", "peers"}
# imports of a submodule that need a distribution of their own
IMPLIED = {"torch.utils.tensorboard": "tensorboard"}
# modules imported by name as a string (importlib.util.find_spec("jax") is not an Import node)
STRING_IMPORTS = {
    "circuits/groundtruth/tracr_models.py": ["tracr", "jax", "haiku"],
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(spec: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert m, f"unparseable requirement {spec!r} in pyproject.toml"
    return _norm(m.group(1))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """``(core distributions, {runtime extra: its distributions})`` from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_req_name(s) for s in project["dependencies"]}
    extras = {
        name: {_req_name(s) for s in specs}
        for name, specs in project.get("optional-dependencies", {}).items()
        if name not in DEV_EXTRAS
    }
    return core, extras


@functools.cache
def third_party_imports() -> list[tuple[str, str, int, bool]]:
    """``(module, file, line, at_module_level)`` for every non-stdlib, non-sparsecodes import.

    ``at_module_level``: executed when the file is imported (not inside a function or ``try``).
    """
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            guarded, p = False, parents.get(node)
            while p is not None:
                if isinstance(p, ast.FunctionDef | ast.AsyncFunctionDef | ast.Try):
                    guarded = True
                if isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test):
                    guarded = True
                p = parents.get(p)
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "sparsecodes":
                    continue
                implied = next((m for m in IMPLIED if (name + ".").startswith(m + ".")), None)
                out.append((implied or top, rel, node.lineno, not guarded))
        for module in STRING_IMPORTS.get(rel, []):
            out.append((module, rel, 0, False))
    return out


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    if module in IMPLIED:
        return {_norm(IMPLIED[module])}
    return {_norm(d) for d in _packages_distributions().get(module, [])}


def test_the_audit_sees_imports_inside_functions():
    found = {(m, f) for m, f, _, _ in third_party_imports()}
    # tqdm is only ever imported inside functions; wandb inside a try in a method
    assert ("tqdm", "training/trainer.py") in found
    assert ("wandb", "training/log.py") in found
    assert ("torch.utils.tensorboard", "training/log.py") in found


def test_every_third_party_import_is_declared():
    core, extras = declared()
    problems = []
    for module, rel, line, _ in third_party_imports():
        dists = distributions(module)
        if not dists:
            problems.append(
                f"{rel}:{line} imports {module!r}, which no installed distribution provides "
                "(install every extra: bash scripts/install.sh --test)"
            )
        elif not dists & (core | set().union(*extras.values())):
            problems.append(
                f"{rel}:{line} imports {module!r} (distribution {sorted(dists)}), declared in "
                "neither [project.dependencies] nor a runtime extra of pyproject.toml"
            )
    assert not problems, "\n".join(problems)


def test_extra_only_imports_are_lazy_and_name_their_extra():
    core, extras = declared()
    problems = []
    for module, rel, line, top_level in third_party_imports():
        dists = distributions(module)
        if not dists or dists & core:
            continue
        names = sorted(e for e, ds in extras.items() if dists & ds)
        if not names:
            continue  # undeclared: test_every_third_party_import_is_declared reports it
        if top_level and line:
            problems.append(
                f"{rel}:{line} imports {module!r} (extra {names}) when the module is imported; "
                "import it inside the function that needs it"
            )
        text = (SRC / rel).read_text(encoding="utf-8")
        if not any(f"pip install 'sparsecodes[{e}]'" in text for e in names):
            problems.append(
                f"{rel} imports {module!r} but never names its extra: raise an error saying "
                f"pip install 'sparsecodes[{names[0]}]'"
            )
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("blocked", "call", "extra"),
    [
        ("pyarrow", "parquet", "data"),
        ("datasets", "hf", "data"),
    ],
)
def test_missing_corpus_package_error_names_the_extra(tmp_path, monkeypatch, blocked, call, extra):
    from sparsecodes.data import load_texts

    for name in list(sys.modules):
        if name == blocked or name.startswith(blocked + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, blocked, None)  # `import blocked` raises ImportError
    spec = tmp_path / "c.parquet" if call == "parquet" else "hf:someone/some-corpus"
    if call == "parquet":
        spec.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=re.escape(f"pip install 'sparsecodes[{extra}]'")):
        list(load_texts(spec))


def test_require_skips_locally_and_fails_under_ci(monkeypatch):
    from conftest import require

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_xyz"):
        require("no_such_module_xyz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but no_such_module_xyz"):
        require("no_such_module_xyz")
    assert require("json").dumps([1]) == "[1]"
