"""The check harness: what every stage's checks are built from.

Feedback (:class:`CheckFailed`, :func:`passed`, :func:`run_student`), comparisons that explain a difference
(:func:`expect_tensor`, :func:`expect_close`, :func:`compare` against known mistakes, :func:`first_match`),
refusing the reference inside a check (:func:`forbid`), seeded inputs, a :class:`Spy` that records a model's
calls, and copying weights between a student's module and the reference (:func:`copy_weights`,
:func:`load_reference_weights`, :func:`scramble_weights`). The stage modules hold only their cases.
"""

from __future__ import annotations

import contextlib
import functools
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


def first_match(got: torch.Tensor, mutants: dict[str, Callable[[], torch.Tensor]]) -> str | None:
    """The hint of the first mutant (a known mistake, computed by its callable) that reproduces ``got``."""
    for hint, compute in mutants.items():
        with torch.no_grad():
            value = compute()
        if close(got, value):
            return hint
    return None


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


def _refuse(*args, **kwargs):
    raise __import__("course_lib.checks", fromlist=["CheckFailed"]).CheckFailed(
        "this TODO must be written by you, not by calling the course_lib reference implementation")


@contextlib.contextmanager
def _forbid_one(reference):
    if isinstance(reference, type):
        original = reference.__dict__.get("__init__")
        reference.__init__ = _refuse
        try:
            yield
        finally:
            if original is None:
                del reference.__init__
            else:
                reference.__init__ = original
        return
    original_code = reference.__code__
    reference.__code__ = _refuse.__code__
    try:
        yield
    finally:
        reference.__code__ = original_code


@contextlib.contextmanager
def forbid(*references):
    """Within the block, any call of the ``references`` (course_lib functions or classes) raises :class:`CheckFailed`.

    Hidden tests wrap the student's function in it, so that a TODO solved by calling our reference,
    under any name it was imported as, earns nothing. Functions have their code swapped; classes
    their ``__init__``. Everything is restored on leaving the block.
    """
    with contextlib.ExitStack() as stack:
        for reference in references:
            stack.enter_context(_forbid_one(reference))
        yield


def single_threaded(check):
    """Run ``check`` with one torch thread: its models are tiny, and on a busy CPU extra threads only wait."""
    @functools.wraps(check)
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return run


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


def load_reference_weights(student: nn.Module, reference: nn.Module, name: str, names_hint: str) -> None:
    """Copy the reference's parameters and buffers into the student's module.

    Matched by name (the reference's ``body.`` prefix ignored), else in registration order when
    every shape agrees. Fails with the parameter counts and ``names_hint`` when neither works.
    """
    wanted = {key.removeprefix("body."): value for key, value in reference.state_dict().items()}
    own = student.state_dict()
    if set(own) == set(wanted) and all(own[k].shape == wanted[k].shape for k in own):
        student.load_state_dict(wanted)
        return
    if [v.shape for v in own.values()] == [v.shape for v in wanted.values()]:
        student.load_state_dict(dict(zip(own, wanted.values())))
        return
    count = sum(p.numel() for p in student.parameters())
    expected = sum(p.numel() for p in reference.parameters())
    if count != expected:
        raise CheckFailed(f"your {name} has {count} parameters, expected {expected}: {names_hint}")
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


def expect_sampling_calls(spy: Spy, times: list[float], what: str,
                          time_hint: str = "count t down from T-1 to 0 and pass t / T") -> None:
    """Fail unless the sampler called the model once per step, in eval mode, without autograd, at ``times``."""
    if len(spy.calls) != len(times):
        raise CheckFailed(f"your {what} called the model {len(spy.calls)} times, expected once per step "
                          f"({len(times)} steps)")
    if any(call["training"] for call in spy.calls):
        raise CheckFailed(f"your {what} runs the model in training mode: call model.eval() before sampling "
                          "(BatchNorm must use its running statistics)")
    if any(call["grad"] for call in spy.calls):
        raise CheckFailed(f"your {what} tracks gradients: wrap the loop in torch.no_grad() "
                          "(otherwise memory grows with every step)")
    for k, (call, want) in enumerate(zip(spy.calls, times)):
        got = call["t"]
        if got.dim() != 1 or not torch.allclose(got.float(), torch.full_like(got.float(), want), atol=1e-6):
            raise CheckFailed(f"at step {k + 1} your {what} gave the model time {got.flatten()[0].item():.4g}, "
                              f"expected {want:.4g} for every image (a float tensor of shape (N,)): {time_hint}")


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters then buffers, in registration order, with their names."""
    return list(module.named_parameters()) + list(module.named_buffers())


def _layer_list(module: nn.Module) -> str:
    """"Conv2d.weight (5, 3, 3, 3), ..." for every parameter of ``module``."""
    owners = {id(p): type(m).__name__ for m in module.modules() for p in m.parameters(recurse=False)}
    return ", ".join(f"{owners[id(p)]}.{name.rsplit('.', 1)[-1]} {tuple(p.shape)}"
                     for name, p in module.named_parameters()) or "none"


def copy_weights(source: nn.Module, target: nn.Module, what: str, hints: dict[str, str] | None = None) -> None:
    """Copy every parameter and buffer of ``source`` into ``target``, pairing them in registration order.

    Fails with a :class:`CheckFailed` naming the first pair whose shapes differ (and the hint for the
    source submodule whose name starts with a key of ``hints``).
    """
    src, dst = _tensors(source), _tensors(target)
    src_params, dst_params = list(source.parameters()), list(target.parameters())
    if sorted(tuple(p.shape) for p in src_params) == sorted(tuple(p.shape) for p in dst_params) and \
            [p.shape for p in src_params] != [p.shape for p in dst_params]:
        raise CheckFailed(f"{what} has the right layers, created in a different order: create them in __init__ in "
                          "the order of the diagram, so that the check can compare them with the reference")
    for index, ((name, s), (_, d)) in enumerate(zip(src, dst)):
        if s.shape != d.shape:
            hint = next((h for prefix, h in (hints or {}).items() if name.startswith(prefix)), "")
            message = (f"{what}: your tensor #{index} has shape {tuple(d.shape)} where the reference's "
                       f"`{name}` has shape {tuple(s.shape)}")
            raise CheckFailed(f"{message}: {hint}" if hint else message)
    if len(src) != len(dst):
        raise CheckFailed(f"{what} has the layers [{_layer_list(target)}], expected [{_layer_list(source)}]")
    with torch.no_grad():
        for (_, s), (_, d) in zip(src, dst):
            d.copy_(s)
