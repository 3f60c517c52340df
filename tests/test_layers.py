"""Imports run one way in course_lib: the core knows no stage, and a stage knows the core and earlier stages only.

Read from the source (every ``import`` statement, also those inside functions), so a lazy import counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from course_lib.stages import STAGES

LIBRARY = Path(__file__).resolve().parent.parent / "course_lib"
# Code that belongs to no stage (ARCHITECTURE.md, "Map of course_lib/").
CORE = {"course_lib", "course_lib.runtime", "course_lib.validation", "course_lib.data", "course_lib.chain",
        "course_lib.checkpoints", "course_lib.ema", "course_lib.host_syncs", "course_lib.training",
        "course_lib.train_step", "course_lib.optimizers", "course_lib.precision", "course_lib.classifier",
        "course_lib.improved_unet", "course_lib.checks", "course_lib.checks.harness", "course_lib.checks.protocol",
        "course_lib.checks.devices"}
STAGE_ORDER = [stage.package for stage in STAGES]


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The course_lib modules ``path`` imports anywhere (``from x import y`` counts x, and x.y when it is a module)."""
    return imports_of(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_of(source: str, name: str, is_package: bool) -> set[str]:
    """The course_lib modules that the source of module ``name`` imports, at its top or inside functions."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            modules = {f"{base}.{alias.name}" for alias in node.names if is_module(f"{base}.{alias.name}")}
            found |= modules if len(modules) == len(node.names) else modules | {base}
    return {module for module in found if module.split(".")[0] == "course_lib"}


def is_module(name: str) -> bool:
    path = LIBRARY.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def stage_of(module: str) -> int | None:
    """The position of the stage whose package holds ``module`` (None: not in a stage's package)."""
    for position, package in enumerate(STAGE_ORDER):
        if module == package or module.startswith(package + "."):
            return position
    return None


MODULES = {module_name(path): path for path in sorted(LIBRARY.rglob("*.py"))}


def test_the_core_list_names_real_modules():
    assert CORE <= set(MODULES), sorted(CORE - set(MODULES))


@pytest.mark.parametrize("module", sorted(CORE))
def test_the_core_imports_only_the_core(module):
    assert imported_modules(MODULES[module]) <= CORE, sorted(imported_modules(MODULES[module]) - CORE)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if stage_of(m) is not None))
def test_a_stage_imports_the_core_and_earlier_stages_only(module):
    position = stage_of(module)
    for target in imported_modules(MODULES[module]):
        allowed = (target in CORE or target == "course_lib.stages.stage"
                   or (stage_of(target) is not None and stage_of(target) <= position))
        assert allowed, f"{module} imports {target}"


def test_only_a_stage_reaches_its_answers_and_reference():
    """Given code outside the stages reaches answers only through a Stage (``stage.answers``), never by import."""
    for module, path in MODULES.items():
        if stage_of(module) is None:
            reached = {target for target in imported_modules(path) if target.endswith((".answers", ".reference"))}
            assert not reached, f"{module} imports {sorted(reached)}"


def test_a_lazy_import_inside_a_function_is_seen():
    """The reader of imports sees an import inside a function (the kind of edge these tests forbid in the core)."""
    source = "import torch\n\ndef late():\n    from .stages.ddpm import answers\n    from . import noise\n"
    assert imports_of(source, "course_lib.data", False) == {"course_lib.stages.ddpm.answers", "course_lib.noise"}
