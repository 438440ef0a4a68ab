"""Layers import downwards only: model < interop < sampling < evaluation, and the packages below the trainer
never import it (so LoRA or RL can reuse them without pulling in the training loop).

Every `import` in a module counts, including the ones inside functions (a lazy import is still a
dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tpu_train"

# A package of a lower rank never imports one of a higher rank.
RANK = {"sharding": 0, "model": 0, "interop": 1, "sampling": 2, "evaluation": 3}
# Packages that never import the trainer (or the embedded default built on top of it).
BELOW_TRAINING = ("model", "sharding", "interop", "sampling", "evaluation", "planning", "data")
ABOVE = ("training", "embedded", "rl")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level tpu_train subpackage or module) of every tpu_train import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "tpu_train" else [
                f"tpu_train.{a.name}" for a in node.names
            ]  # fmt: skip
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "tpu_train" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def _modules(package: str) -> list[Path]:
    target = PACKAGE / package
    return sorted(target.rglob("*.py")) if target.is_dir() else [PACKAGE / f"{package}.py"]


def _violations(package: str, forbidden) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports tpu_train.{dep}"
        for path in _modules(package)
        for line, dep in _imports(path)
        if dep != package and forbidden(dep)
    ]


@pytest.mark.parametrize("package", sorted(RANK))
def test_ranked_layers_import_downwards(package):
    rank = RANK[package]
    bad = _violations(package, lambda dep: RANK.get(dep, -1) > rank)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", BELOW_TRAINING)
def test_lower_layers_never_import_the_trainer(package):
    bad = _violations(package, lambda dep: dep in ABOVE)
    assert not bad, "\n".join(bad)


def test_the_trainer_never_imports_rl():
    """RL is built on the trainer (its state set-up, optimizer, checkpoints), never the reverse."""
    bad = _violations("training", lambda dep: dep == "rl")
    assert not bad, "\n".join(bad)


def test_the_check_sees_function_level_imports(tmp_path):
    """The walker finds an import inside a function, so a lazy upward import cannot slip through."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tpu_train.training.loop import train\n")
    assert _imports(module) == [(2, "training")]
    assert all(_modules(p) and all(m.exists() for m in _modules(p)) for p in RANK)
