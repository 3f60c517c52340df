"""The check harness: what every stage's checks are built from.

Feedback (:class:`CheckFailed`, :func:`passed`, :func:`run_student`), comparisons that explain a difference
with enough digits to see it (:func:`expect_tensor`, :func:`expect_close`, :func:`compare` against known
mistakes), seeded inputs and given stand-in models
(:class:`TinyNoisePredictor`, :class:`ToyModel`), a :class:`Spy` that records a model's calls, and moving
weights between the reference and a student's module (:func:`module_tensors`, :func:`layer_list`,
:func:`reference_weights`, :func:`load_weights`, :func:`scramble_weights`). The stage modules hold only their cases;
:mod:`course_lib.checks.protocol` splits each into reference, probe and judge.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

IMAGE = (1, 28, 28)


class CheckFailed(AssertionError):
    """A student's function gave a wrong answer; the message says what and why."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31m✗ {self}\x1b[0m"]


def passed(what: str) -> None:
    """Report a passed check in one line."""
    print(f"✓ {what}")


def run_student(name: str, function: Callable, *args, **kwargs):
    """Call the student's ``function``; turn a crash into a :class:`CheckFailed` that names it."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"`{name}` is not implemented yet: replace `raise NotImplementedError()` with your code")
    except CheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 - any crash of student code becomes feedback
        raise CheckFailed(f"`{name}` raised {type(error).__name__}: {error}") from error


def expect_tensor(name: str, value, shape: tuple | torch.Size, dtype_floating: bool = True) -> torch.Tensor:
    """Fail unless ``value`` is a tensor of ``shape`` (and floating-point, unless told otherwise)."""
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{name} should be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise CheckFailed(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if dtype_floating and not value.is_floating_point():
        raise CheckFailed(f"{name} has dtype {value.dtype}, expected a floating-point tensor")
    if dtype_floating and not torch.isfinite(value).all():
        raise CheckFailed(f"{name} contains NaN or infinite values")
    return value


def format_pair(got: float, expected: float) -> tuple[str, str]:
    """Both numbers with 4 significant digits, or as many more (up to 12) as it takes for them to differ."""
    for digits in range(4, 13):
        pair = f"{got:.{digits}g}", f"{expected:.{digits}g}"
        if pair[0] != pair[1]:
            return pair
    return repr(got), repr(expected)


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """True when two tensors have the same shape and agree within ``atol + rtol * |b|`` everywhere."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return a.shape == b.shape and bool(torch.all((a - b).abs() <= atol + rtol * b.abs()))


def compare(name: str, got: torch.Tensor, expected: torch.Tensor, mistakes: Sequence[tuple[torch.Tensor, str]],
            hint: str, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Fail unless ``got`` matches ``expected``; when it matches a known mistake, use that mistake's hint."""
    if close(got, expected, atol, rtol):
        return
    for wrong, mistake_hint in mistakes:
        if close(got, wrong, atol, rtol):
            expect_close(name, got, expected, mistake_hint, atol, rtol)
    expect_close(name, got, expected, hint, atol, rtol)


def recorded(value):
    """What a probe records of a value the student's code returned: a plain detached CPU tensor, or the name of the
    type that came instead (so that a record always loads with ``torch.load(weights_only=True)``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone().as_subclass(torch.Tensor)
    return {"not_a_tensor": type(value).__name__}


def recorded_tensor(name: str, value, shape: tuple | torch.Size) -> torch.Tensor:
    """:func:`expect_tensor` on a value a probe recorded with :func:`recorded`."""
    if isinstance(value, dict) and isinstance(value.get("not_a_tensor"), str):
        raise CheckFailed(f"{name} should be a torch.Tensor, got {value['not_a_tensor']}")
    return expect_tensor(name, value, shape)


def condition_matters(outputs: dict, shape: tuple, other: str, hint: str) -> torch.Tensor:
    """The recorded model output ``outputs["noise"]`` (checked to be a tensor of ``shape``); fails with ``hint`` when
    it equals ``outputs[other]``, the output for another condition (time or class)."""
    got = recorded_tensor("predicted noise", outputs["noise"], shape)
    if torch.allclose(got, recorded_tensor("predicted noise", outputs[other], shape)):
        raise CheckFailed(hint)
    return got


def expect_time_per_image(times, batch_size: int, draw: str) -> None:
    """Fail when the model got one time t (one noise level) for the whole batch where every image needs its own.

    ``times``: the time input a loss gave the model, as recorded (a tensor; anything else is left to the caller's
    checks); ``batch_size``: N; ``draw``: how to draw one t per image, for the message.
    """
    if not isinstance(times, torch.Tensor) or batch_size < 2 or times.numel() not in (1, batch_size):
        return
    if bool((times == times.flatten()[0]).all()):
        raise CheckFailed(f"your model got the same t (the same noise level) for all {batch_size} images: draw one t "
                          f"per image, {draw}")


def matching_hint(got: torch.Tensor, mistakes: Sequence[tuple[torch.Tensor, str]]) -> str | None:
    """The hint of the first stored ``(tensor, hint)`` mistake that ``got`` reproduces."""
    return next((hint for wrong, hint in mistakes if close(got, wrong)), None)


def expect_close(name: str, got: torch.Tensor, expected: torch.Tensor, hint: str = "",
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Fail unless ``got`` matches ``expected``; the message names the worst entry and adds ``hint``."""
    got = expect_tensor(name, got, expected.shape).detach().float().cpu()
    expected = expected.detach().float().cpu()
    error = (got - expected).abs()
    if torch.all(error <= atol + rtol * expected.abs()):
        return
    worst = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    where = f"[{', '.join(map(str, worst))}]" if worst else ""
    yours, wanted = format_pair(got[worst].item(), expected[worst].item())
    message = f"your {name}{where} is {yours}, expected {wanted}"
    raise CheckFailed(f"{message}: {hint}" if hint else message)


def generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: the student's function and the reference each get their own, same seed."""
    return torch.Generator().manual_seed(seed)


def random_images(batch_size: int, seed: int) -> torch.Tensor:
    """Images (batch_size, 1, 28, 28) uniform in [-1, 1]: the value range of the diffusion stages."""
    return torch.rand((batch_size, *IMAGE), generator=generator(seed)) * 2 - 1


class Spy(nn.Module):
    """Wraps a model and records every call: inputs, whether it was in train mode, whether autograd was on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[dict] = []

    def forward(self, x, t, *rest):
        self.calls.append({"x": x.detach().clone(), "t": t.detach().clone(),
                           "c": rest[0].detach().clone() if rest else None,
                           "training": self.training, "grad": torch.is_grad_enabled()})
        return self.model(x, t, *rest)


def reference_weights(reference: nn.Module) -> dict:
    """What a probe needs to load ``reference``'s weights with :func:`load_weights`: ``weights`` (its state dict,
    cloned) and ``num_parameters``."""
    return {"weights": {key: value.detach().clone() for key, value in reference.state_dict().items()},
            "num_parameters": sum(p.numel() for p in reference.parameters())}


def load_weights(student: nn.Module, weights: dict[str, torch.Tensor], num_parameters: int, name: str,
                 names_hint: str) -> None:
    """Copy a reference's state dict ``weights`` into the student's module (a probe has the reference's tensors,
    not the reference).

    Matched by name (the reference's ``body.`` prefix ignored), else in registration order when every shape
    agrees. Fails with the parameter counts (``num_parameters``: the reference's) and ``names_hint`` when neither
    works.
    """
    if not isinstance(student, nn.Module):
        raise CheckFailed(f"your {name} should be a torch.nn.Module, got {type(student).__name__}")
    wanted = {key.removeprefix("body."): value for key, value in weights.items()}
    own = run_student(f"{name}.state_dict", student.state_dict)
    if set(own) == set(wanted) and all(own[k].shape == wanted[k].shape for k in own):
        run_student(f"{name}.load_state_dict", student.load_state_dict, wanted)
        return
    if [v.shape for v in own.values()] == [v.shape for v in wanted.values()]:
        run_student(f"{name}.load_state_dict", student.load_state_dict, dict(zip(own, wanted.values())))
        return
    count = sum(p.numel() for p in student.parameters())
    if count != num_parameters:
        raise CheckFailed(f"your {name} has {count} parameters, expected {num_parameters}: {names_hint}")
    missing = sorted(set(wanted) - set(own))[:3]
    raise CheckFailed(f"your {name} has the right number of parameters but its layers do not match the reference "
                      f"(e.g. no {', '.join(missing)}): {names_hint}")


def scramble_weights(model: nn.Module, seed: int) -> nn.Module:
    """Give ``model`` random weights that keep activations of order 1 through every layer (in place; returns it).

    A freshly initialised UNet shrinks its signal layer by layer, so wiring mistakes barely change its
    output; with these weights (He-normal convolutions, random BatchNorm statistics) they change it clearly.
    """
    g = generator(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                weight = module.weight
                fan_in = weight[0].numel() if not isinstance(module, nn.ConvTranspose2d) else weight[:, 0].numel()
                weight.copy_(torch.randn(weight.shape, generator=g) * (2 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
    return model


class TinyNoisePredictor(nn.Module):
    """A small seeded stand-in for a trained noise (or velocity) predictor, for the sampler checks.

    ``forward(x, t)``, or ``forward(x, t, c)`` when built with ``num_classes``: x (N, 1, H, W), t floats (N,),
    c one-hot (N, num_classes) (a zero row: no class). Returns (N, 1, H, W). It has BatchNorm, so running it in
    train mode gives other numbers than in eval mode, as with the course's UNets. Built in train mode, as after
    training. Given code, not an answer: a grading kernel without the stage's answers can still build it.
    """

    def __init__(self, seed: int, num_classes: int = 0, channels: int = 4):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv_in = nn.Conv2d(1, channels, 3, padding=1)
            self.norm = nn.BatchNorm2d(channels)
            self.time = nn.Linear(1, channels)
            self.label = nn.Linear(num_classes, channels) if num_classes else None
            self.conv_out = nn.Conv2d(channels, 1, 3, padding=1)
            self.norm.running_mean.normal_(0, 0.1)
            self.norm.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(x) + self.time(t.view(-1, 1).to(x.dtype))[:, :, None, None]
        if self.label is not None:
            h = h * (1 + self.label(c.to(x.dtype))[:, :, None, None])
        return self.conv_out(nn.functional.gelu(self.norm(h)))


class ToyModel(nn.Module):
    """A tiny deterministic stand-in for a noise predictor, ``0.5 x + t`` (with a weight so losses have gradients).

    Used by the loss checks: it makes a wrong time input or a wrong x_t change the loss visibly.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, c=None):
        out = self.scale * x + t.view(-1, 1, 1, 1).to(x.dtype)
        return out if c is None else out + c.sum(1).view(-1, 1, 1, 1) / 10


def expect_scalar_loss(got) -> None:
    """Fail unless ``got`` is a scalar tensor with a gradient (the loss the optimizer can use)."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"your loss should be a torch.Tensor, got {type(got).__name__}: do not call .item()")
    if got.dim() != 0:
        raise CheckFailed(f"your loss has shape {tuple(got.shape)}, expected a scalar: take the mean over all pixels")
    if not got.requires_grad:
        raise CheckFailed("your loss has no gradient: compute it from the model's output, outside torch.no_grad()")


def recorded_loss(outputs: dict) -> torch.Tensor:
    """The loss a probe recorded (``outputs["loss"]`` with :func:`recorded`, ``outputs["requires_grad"]``), checked
    as :func:`expect_scalar_loss` checks a live one; returned detached."""
    loss = outputs["loss"]
    if isinstance(loss, dict) and "not_a_tensor" in loss:
        raise CheckFailed(f"your loss should be a torch.Tensor, got {loss['not_a_tensor']}: do not call .item()")
    if isinstance(loss, torch.Tensor) and loss.is_floating_point():
        loss = loss.detach().clone().requires_grad_(outputs["requires_grad"] is True)
    expect_scalar_loss(loss)
    return loss.detach()


def expect_sampling_calls(calls: Spy | Sequence[dict], times: list[float], what: str,
                          time_hint: str = "count t down from T-1 to 0 and pass t / T") -> None:
    """Fail unless the sampler called the model once per step, in eval mode, without autograd, at ``times``.

    ``calls`` is a :class:`Spy` or its record ``spy.calls`` (one dict per call with ``t``, ``training`` and
    ``grad``; the judge gets it from a probe, so it is checked as untrusted data).
    """
    calls = calls.calls if isinstance(calls, Spy) else calls
    if not isinstance(calls, (list, tuple)) or not all(isinstance(call, dict) for call in calls):
        raise CheckFailed(f"your {what}: the record of its model calls is malformed")
    if len(calls) != len(times):
        raise CheckFailed(f"your {what} called the model {len(calls)} times, expected once per step "
                          f"({len(times)} steps)")
    if any(call["training"] is not False for call in calls):
        raise CheckFailed(f"your {what} runs the model in training mode: call model.eval() before sampling "
                          "(BatchNorm must use its running statistics)")
    if any(call["grad"] is not False for call in calls):
        raise CheckFailed(f"your {what} tracks gradients: wrap the loop in torch.no_grad() "
                          "(otherwise memory grows with every step)")
    for k, (call, want) in enumerate(zip(calls, times)):
        got = call["t"]
        if not isinstance(got, torch.Tensor) or got.numel() == 0:
            raise CheckFailed(f"at step {k + 1} your {what} gave the model a time that is not a tensor of shape (N,), "
                              f"expected {want:.4g} for every image: {time_hint}")
        if got.dim() != 1 or not torch.allclose(got.float(), torch.full_like(got.float(), want), atol=1e-6):
            raise CheckFailed(f"at step {k + 1} your {what} gave the model time {got.flatten()[0].item():.4g}, "
                              f"expected {want:.4g} for every image (a float tensor of shape (N,)): {time_hint}")


def module_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters then buffers, in registration order, with their names."""
    return list(module.named_parameters()) + list(module.named_buffers())


def layer_list(module: nn.Module) -> str:
    """"Conv2d.weight (5, 3, 3, 3), ..." for every parameter of ``module``."""
    owners = {id(p): type(m).__name__ for m in module.modules() for p in m.parameters(recurse=False)}
    return ", ".join(f"{owners[id(p)]}.{name.rsplit('.', 1)[-1]} {tuple(p.shape)}"
                     for name, p in module.named_parameters()) or "none"
