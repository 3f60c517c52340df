"""Stage 7's editors (course_lib.sampling.sdedit, inpaint, guided_edit): what they must do whatever the model, and
the statistics of their edits with a model that knows the data exactly.

With Gaussian data, every pixel independent N(mu, s^2), the best noise estimate is known in closed form:
E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a), with a = alpha_bar_t. Running the reverse chain
from x0 noised to step k - 1 (a = alpha_bar_{k-1}) then draws from p(x0 | x_{k-1}): for a constant input y, the
edit's pixels have mean mu + a s^2 (y - mu) / D and variance s^2 (1 - a) / D + a s^4 (1 - a) / D^2, D = a s^2 + 1 - a.
DDPM's steps (sigma_t^2 = beta_t) only approximate that draw, closely at T = 300 and 10 steps or more (the last
step adds no noise, which leaves out the spread of a one-step edit).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.checks.harness import TinyNoisePredictor
from course_lib.noise import DDPMSchedule
from course_lib.sampling import guided_edit, inpaint, sdedit

pytestmark = pytest.mark.usefixtures("single_thread")


class GaussianNoisePredictor(nn.Module):
    """The exact noise estimate of Gaussian data, as a class-conditional model ``forward(x, t / T, c)``: pixels of
    class k are N(means[k], s^2), and with c = 0 ("no class") N(unconditional_mean, s^2)."""

    def __init__(self, schedule: DDPMSchedule, means, unconditional_mean: float, s: float):
        super().__init__()
        self.schedule, self.s = schedule, s
        self.register_buffer("means", torch.tensor(means, dtype=torch.float32))
        self.unconditional_mean = unconditional_mean
        self.weight = nn.Parameter(torch.zeros(()))  # so that the editors find the model's device

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        a = self.schedule.alpha_bars[(t * self.schedule.num_steps).round().long()].view(-1, 1, 1, 1)
        mean = torch.where(c.any(1), c @ self.means, torch.full_like(c[:, 0], self.unconditional_mean))
        return (1 - a).sqrt() * (x - a.sqrt() * mean.view(-1, 1, 1, 1)) / (a * self.s ** 2 + 1 - a)


def posterior_statistics(a: float, y: float, mu: float, s: float) -> tuple[float, float]:
    """Mean and standard deviation of an exact edit of the constant input y noised to alpha_bar a."""
    d = a * s ** 2 + 1 - a
    variance = s ** 2 * (1 - a) / d + a * s ** 4 * (1 - a) / d ** 2
    return mu + a * s ** 2 * (y - mu) / d, variance ** 0.5


@pytest.fixture(scope="module")
def schedule():
    return DDPMSchedule(300)


def constant(value: float, n: int = 256) -> torch.Tensor:
    return torch.full((n, 1, 28, 28), value)


@pytest.mark.parametrize("steps", [10, 30, 100, 200, 300])
def test_sdedit_of_gaussian_data_has_the_posterior_statistics(schedule, steps):
    mu, s, y = 0.2, 0.4, -0.8
    model = GaussianNoisePredictor(schedule, [0.0] * 10, mu, s)
    edited = sdedit(model, schedule, constant(y), steps, torch.Generator().manual_seed(steps))
    mean, std = posterior_statistics(float(schedule.alpha_bars[steps - 1]), y, mu, s)
    assert abs(edited.mean().item() - mean) < 0.02
    assert edited.std().item() == pytest.approx(std, rel=0.06, abs=0.003)


def test_sdedit_keeps_the_data_distribution(schedule):
    """Inputs drawn from the data itself stay data: mean mu, standard deviation s, at any strength."""
    mu, s = -0.3, 0.5
    model = GaussianNoisePredictor(schedule, [0.0] * 10, mu, s)
    data = mu + s * torch.randn((256, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    for steps in (50, 250):
        edited = sdedit(model, schedule, data, steps, torch.Generator().manual_seed(1))
        assert abs(edited.mean().item() - mu) < 0.02 and edited.std().item() == pytest.approx(s, rel=0.05)


def test_guided_edit_at_guidance_one_moves_the_digit_to_the_class_asked_for(schedule):
    """Guidance 1 is the conditional model: an input of class 0 edited towards class 1 takes class 1's
    statistics as far as the noise level lets it (all the way only at high strength)."""
    means, s = [-0.5, 0.6] + [0.0] * 8, 0.3
    model = GaussianNoisePredictor(schedule, means, 0.0, s)
    for steps in (60, 300):
        edited = guided_edit(model, schedule, constant(-0.5), torch.ones(256, dtype=torch.long), steps, 1.0,
                             torch.Generator().manual_seed(2))
        mean, std = posterior_statistics(float(schedule.alpha_bars[steps - 1]), -0.5, 0.6, s)
        assert abs(edited.mean().item() - mean) < 0.02
        assert edited.std().item() == pytest.approx(std, rel=0.06)


def test_inpainting_keeps_the_known_pixels_and_draws_the_others_from_the_data(schedule):
    """Pixels of this data are independent, so the unknown ones come out as plain data, N(mu, s^2), whatever the
    known ones hold; the known ones are the input's, exactly."""
    mu, s = 0.1, 0.35
    model = GaussianNoisePredictor(schedule, [0.0] * 10, mu, s)
    x0 = constant(-1.0)
    mask = torch.zeros_like(x0)
    mask[..., :14, :] = 1  # the top half is known
    result = inpaint(model, schedule, x0, mask, torch.Generator().manual_seed(3))
    assert torch.equal(result[..., :14, :], x0[..., :14, :])
    unknown = result[..., 14:, :]
    assert abs(unknown.mean().item() - mu) < 0.02 and unknown.std().item() == pytest.approx(s, rel=0.05)


def test_editors_on_any_model_keep_what_they_promise():
    """Whatever the model: steps = 0 gives the input back; inpainting keeps the known pixels exactly; the guided
    edit at guidance 0 is SDEdit on the same draws."""
    schedule = DDPMSchedule(12)
    model = TinyNoisePredictor(0, num_classes=10)
    x0 = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert torch.equal(sdedit(model, schedule, x0, 0), x0)
    assert torch.equal(guided_edit(model, schedule, x0, torch.tensor([1, 2, 3]), 0, 5.0), x0)
    mask = (torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    result = inpaint(model, schedule, x0, mask, torch.Generator().manual_seed(2))
    assert torch.equal(result[mask == 1], x0[mask == 1])
    plain = sdedit(model, schedule, x0, 7, torch.Generator().manual_seed(4))
    unguided = guided_edit(model, schedule, x0, torch.tensor([1, 2, 3]), 7, 0.0, torch.Generator().manual_seed(4))
    assert torch.allclose(plain, unguided, atol=1e-5)


def test_editors_reject_bad_arguments():
    schedule, model, x0 = DDPMSchedule(5), TinyNoisePredictor(0, num_classes=10), torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match="`steps` must be an integer in 0..5"):
        sdedit(model, schedule, x0, 6)
    with pytest.raises(ValueError, match="`mask` must have the same shape"):
        inpaint(model, schedule, x0, torch.ones(2, 1, 28, 27))
    with pytest.raises(ValueError, match="`labels` must hold one digit per image"):
        guided_edit(model, schedule, x0, torch.tensor([1]), 3)


# ----------------------------------------------------------------------------- stage 4's model for stage 7


def test_trained_model_loads_the_students_checkpoint_into_the_reference_network(tmp_path):
    """A student's ClassConditionalUNet has its layers on itself (conv_in), the reference on its body: the weights
    of the student's newest checkpoint load by name, and the model gives the same outputs."""
    from course_lib import checkpoints, runs
    from course_lib.models import ClassConditionalUNet

    torch.manual_seed(3)
    theirs = ClassConditionalUNet(num_hiddens=16).eval()
    weights = {key.removeprefix("body."): value for key, value in theirs.state_dict().items()}
    checkpoints.save_checkpoint(tmp_path, 1, {"model": weights, "epoch": 1})
    model, schedule, where = runs.trained_model("cfg", tmp_path, mode="quick", device="cpu")
    x, t, c = torch.randn(2, 1, 28, 28), torch.rand(2), torch.eye(10)[:2]
    assert torch.equal(model(x, t, c), theirs(x, t, c)) and not model.training
    assert schedule.num_steps == 50 and where == f"your model, after epoch 1 of 2, from {tmp_path}"


def test_trained_model_trains_the_reference_without_a_fitting_checkpoint(tmp_path, monkeypatch):
    from course_lib import checkpoints, runs
    from course_lib.models import ClassConditionalUNet

    trained = []

    def train_stage(stage, mode, device, checkpoint_dir, progress):
        trained.append((stage, mode, checkpoint_dir))
        return runs.TrainedStage(stage, ClassConditionalUNet(num_hiddens=2), DDPMSchedule(5), None, None, 0)

    monkeypatch.setattr(runs, "train_stage", train_stage)
    _, _, where = runs.trained_model("cfg", tmp_path / "missing", tmp_path / "reference", "quick", device="cpu")
    assert where.startswith(f"no checkpoint in {tmp_path / 'missing'}: the reference model, trained for 2 epochs")
    checkpoints.save_checkpoint(tmp_path / "wide", 2, {"model": ClassConditionalUNet(num_hiddens=8).state_dict(),
                                                       "epoch": 2})
    _, _, where = runs.trained_model("cfg", tmp_path / "wide", tmp_path / "reference", "quick", device="cpu")
    assert "does not fit" in where
    assert trained == [("cfg", "quick", tmp_path / "reference")] * 2


# ----------------------------------------------------------------------------- the checks as the grader runs them


@pytest.mark.parametrize("name, student, case", [
    ("check_sdedit", "edit", {"num_images": 2, "num_steps": 12, "steps": 12, "seed": 5}),
    ("check_inpaint", "inpaint", {"num_images": 3, "num_steps": 11, "seed": 9}),
    ("check_guided_edit", "guided_edit", {"num_images": 2, "num_steps": 8, "steps": 8, "guidance": 7.5, "seed": 3}),
])
def test_probes_run_without_stage_7s_answers_and_the_grader_judges_them(name, student, case, monkeypatch):
    """As in a stage-7 grading kernel: the expected values with every answer, then the probe of a student's code
    with stage 7's answers left out (stage 4's guided_eps is there), its record through torch.save and
    torch.load(weights_only=True), then the verdict; a record cut short fails."""
    import test_mistake_catalogue as students
    from check_helpers import leave_out_answers, round_trip
    from course_lib.checks import CheckFailed
    from course_lib.checks.protocol import verdict
    from course_lib.stages.editing import checks

    entry = getattr(checks, name).check
    full = entry.case(**case)
    inputs, expected = (round_trip(part) for part in entry.reference(**full))
    with monkeypatch.context() as patched:
        leave_out_answers(patched, ("editing",))
        outputs = round_trip(entry.run_probe((getattr(students, student),), inputs))
    assert outputs["devices"] is None
    assert verdict(entry, full, inputs, outputs, expected).startswith(name.removeprefix("check_"))
    outputs["calls"] = outputs["calls"][:-1]
    with pytest.raises(CheckFailed, match="called the model"):
        verdict(entry, full, inputs, outputs, expected)
    with pytest.raises(CheckFailed):
        verdict(entry, full, inputs, {"edited": 1}, expected)
