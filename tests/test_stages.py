"""course_lib.stages: the stage registry, its budgets against the assignment, and the answers split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from course_lib.stages import TRAINING_STAGES, budget, get

REPO = Path(__file__).resolve().parent.parent


def test_full_budgets_are_the_assignments():
    """The assignment (SYLLABUS.md): denoiser batch 256, 5 epochs, Adam 1e-4, D = 128; diffusion stages batch 128, 20 epochs,
    Adam 1e-3, D = 64, T = 300, learning rate x 0.1 ** (1 / 20) per epoch."""
    denoiser = budget("denoiser", "full")
    assert (denoiser.epochs, denoiser.batch_size, denoiser.num_hiddens, denoiser.learning_rate,
            denoiser.subset_size, denoiser.lr_gamma) == (5, 256, 128, 1e-4, None, 1.0)
    for stage in ("ddpm", "cfg", "flow"):
        b = budget(stage, "full")
        assert (b.epochs, b.batch_size, b.num_hiddens, b.learning_rate, b.subset_size, b.num_steps) == \
            (20, 128, 64, 1e-3, None, 300), stage
        assert b.lr_gamma == pytest.approx(0.1 ** (1 / 20))
        assert b.lr_gamma ** b.epochs == pytest.approx(0.1), "the rate must end ten times lower"


def test_quick_budgets_are_small():
    for stage in TRAINING_STAGES:
        b = budget(stage, "quick")
        assert b.subset_size is not None and b.subset_size <= 1024, stage
        assert b.epochs * b.subset_size <= 2048 and b.num_hiddens <= 32, stage
        assert b.subset_size >= b.batch_size, f"{stage}: at least one batch per epoch"


def test_budget_defaults_to_the_course_mode(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("COURSE_MODE", "quick")
    assert budget("ddpm") == get("ddpm").budgets["quick"]
    monkeypatch.setenv("COURSE_MODE", "full")
    assert budget("ddpm") == get("ddpm").budgets["full"]


@pytest.mark.parametrize("stage, mode, argument", [("gan", "quick", "stage"), ("ddpm", "slow", "mode")])
def test_budget_rejects_unknown_names(stage, mode, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        budget(stage, mode)


def test_budget_schedule_is_the_course_schedule_at_T_300_and_keeps_the_end_noise_level_in_quick_mode():
    from course_lib.noise import course_schedule

    full = course_schedule(budget("ddpm", "full").num_steps)
    assert full.num_steps == 300
    torch.testing.assert_close(full.betas, torch.linspace(1e-4, 0.02, 300))
    quick = course_schedule(budget("ddpm", "quick").num_steps)
    assert quick.num_steps == budget("ddpm", "quick").num_steps < 300
    # x_T must still be close to pure noise: alpha_bar at the last step within 20% of the course's (about 0.05)
    assert abs(quick.alpha_bars[-1].item() / full.alpha_bars[-1].item() - 1) < 0.2
    assert quick.alpha_bars[-1].item() < 0.1


# ----------------------------------------------------------------------------- the registry


def test_every_notebook_has_a_stage_entry_and_every_entry_a_notebook():
    from autograder.course import SOLUTIONS_DIR
    from course_lib.stages import NOTEBOOKS

    assert sorted(path.stem for path in SOLUTIONS_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


def test_todo_cells_of_the_registry_are_the_notebooks_solution_cells_and_name_real_answers():
    """Each stage's ``todos`` lists exactly the code cells its source notebook asks students to write, and every
    reference it names exists in the stage's answers module."""
    import nbformat

    from autograder.course import SOLUTIONS_DIR
    from course_lib.stages import STAGES

    for stage in STAGES:
        notebook = nbformat.read(SOLUTIONS_DIR / f"{stage.notebook}.ipynb", as_version=4)
        solution_cells = {cell.metadata["nbgrader"]["grade_id"] for cell in notebook.cells
                          if cell.cell_type == "code" and cell.metadata["nbgrader"].get("solution")}
        assert set(stage.todos) == solution_cells, stage.notebook
        for names in stage.todos.values():
            for name in names:
                assert callable(getattr(stage.answers, name)), f"{stage.key}: {name}"


def test_builds_on_names_earlier_stages_only():
    from course_lib.stages import STAGES

    seen: set[str] = set()
    for stage in STAGES:
        assert set(stage.builds_on) <= seen, stage.key
        seen.add(stage.key)


def test_get_accepts_keys_and_notebook_names_and_rejects_others():
    assert get("ddpm") is get("03_ddpm")
    with pytest.raises(ValueError, match="`stage`"):
        get("gan")


def test_stage_loss_calls_the_registered_answer_with_its_inputs():
    """``stage_loss`` wires the registry's loss: on the same generator it equals the checked public loss."""
    from course_lib import objectives
    from course_lib.models import ClassConditionalUNet
    from course_lib.noise import course_schedule
    from course_lib.stages import stage_loss

    schedule = course_schedule(10)
    model = ClassConditionalUNet(num_hiddens=4)
    images = torch.rand(4, 1, 28, 28) * 2 - 1
    labels = torch.tensor([0, 3, 9, 3])
    wired = stage_loss("cfg", schedule)(model, images, labels, torch.Generator().manual_seed(1))
    direct = objectives.class_conditional_loss(model, images, labels, schedule, generator=torch.Generator().manual_seed(1))
    assert torch.equal(wired, direct)


# ----------------------------------------------------------------------------- the answers split

GIVEN_MODULES_SCRIPT = """
import importlib, pkgutil, sys
import course_lib
assert course_lib.__file__.startswith(sys.argv[1]), course_lib.__file__
names = [m.name for m in pkgutil.walk_packages(course_lib.__path__, "course_lib.") if m.name != "course_lib.__main__"]
for name in names:
    importlib.import_module(name)
from course_lib import stages
from course_lib.checks.protocol import CHECKS
assert len(CHECKS) == 29, sorted(CHECKS)
present = [key for key in sys.argv[2].split(",") if key]
missing = [key for key in sys.argv[3].split(",") if key]
for key in present:
    stages.get(key).answers
for key in missing:
    try:
        stages.get(key).answers
    except stages.AnswerNotIncluded as error:
        assert "leaves out the reference answers of stage" in str(error), error
        continue
    raise SystemExit(f"the answers of {key} are in the view")
try:
    stages.get("noising").reference
except stages.AnswerNotIncluded as error:
    assert "reference side of the checks" in str(error), error
else:
    raise SystemExit("the checks' reference side is in the view")
print(len(names))
"""


@pytest.mark.parametrize("stage", ["01_noising", "02_denoiser", "03_ddpm", "04_cfg", "05_flow", "06_improved_unet",
                                   "07_editing"])
def test_library_view_lacks_whole_files_and_still_imports_every_module(tmp_path, stage):
    """The view for stage k lacks exactly the answers.py of k and later and every stage's reference.py; every
    module it holds imports (every check included), earlier answers load, and asking for a left-out one raises
    AnswerNotIncluded with its message (not a bare ImportError)."""
    import subprocess
    import sys

    from autograder.library_view import write_library_view
    from course_lib.stages import STAGES, get

    write_library_view(tmp_path, stage)
    position = STAGES.index(get(stage))
    library = REPO / "course_lib"
    full = {path.relative_to(library).as_posix() for path in library.rglob("*") if path.is_file()
            and "__pycache__" not in path.parts}
    view = {path.relative_to(tmp_path / "course_lib").as_posix() for path in (tmp_path / "course_lib").rglob("*")
            if path.is_file()}
    assert full - view == ({f"stages/{entry.key}/answers.py" for entry in STAGES[position:]}
                           | {f"stages/{entry.key}/reference.py" for entry in STAGES})
    assert view <= full
    missing = [entry.key for entry in STAGES[position:]]
    present = [entry.key for entry in STAGES[:position]]
    result = subprocess.run([sys.executable, "-c", GIVEN_MODULES_SCRIPT, str(tmp_path), ",".join(present),
                             ",".join(missing)], env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 30, "every module was imported"


def test_a_left_out_answer_says_so_when_called(tmp_path):
    import subprocess
    import sys

    from autograder.library_view import write_library_view

    write_library_view(tmp_path, "01_noising")
    script = ("import torch\nfrom course_lib.noise import add_noise\n"
              "try:\n    add_noise(torch.zeros(2), 0.5)\nexcept ImportError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "leaves out the reference answers of stage 'noising'" in result.stdout, result.stderr


def test_each_stage_entry_reaches_its_model_loss_sampler_and_modules():
    """A Stage carries everything about its stage: the model's class, loss and (checked) sampler come from its
    answers and api, and its modules are its own package's files."""
    from course_lib import deliverables
    from course_lib.stages import STAGES

    for stage in STAGES:
        assert stage.checks.__name__ == f"{stage.package}.checks"
        assert stage.answers.__name__ == f"{stage.package}.answers"
        assert stage.reference.__name__ == f"{stage.package}.reference"
        if stage.model is None:
            continue
        assert isinstance(stage.model.builder(), type) and callable(stage.model.loss())
        assert stage.model.loss() is getattr(stage.answers, stage.model.loss().__name__)
        assert callable(getattr(deliverables, stage.model.figures))
        if stage.model.sampler is not None:
            sampler = stage.model.sampler()
            assert sampler is getattr(stage.api, sampler.__name__) and sampler.__module__ == f"{stage.package}.api"
    assert [stage.key for stage in STAGES if stage.model is not None and stage.model.sampler is None] == ["denoiser"]
