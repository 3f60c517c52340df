"""The checks' device run: the student's code once more, with the model and the inputs on a device other than
the CPU, to catch a tensor made on the wrong device (a time tensor made without ``device=``, one-hot classes left
on the CPU) on a machine without a GPU.

The other device is PyTorch's ``meta`` device (tensors with a shape and a dtype but no values), watched by
:class:`DeviceGuard`, which refuses what a GPU refuses: an operation that mixes a ``meta`` tensor with a CPU tensor of
one element or more (a CPU number, a 0-dimensional tensor, mixes on a GPU too), and a draw with a generator on
another device than the tensor drawn (a generator made on a GPU draws only there, a CPU generator only on the
CPU). Reading values back (``.cpu()``, ``.item()``,
``.tolist()``, ``.numpy()``, ``bool()``, ``int()``, ``float()``) gives zeros, so correct code that keeps its
trajectory on the CPU runs through. A generator made on the ``meta`` device (``torch.Generator(x.device)``, which
PyTorch refuses) is a :class:`DeviceGenerator` during the run, so correct code that makes its own generator on the
device runs through too. Meta tensors have no values, so this run judges devices only; the check's
ordinary run on the CPU judges the values.

A check declares its device run with ``devices=`` (:func:`course_lib.checks.protocol.check`), a function of the
student's objects and the probe's inputs that calls :func:`device_run`.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

DEVICE = torch.device("meta")
GENERATOR = torch.Generator  # as imported (a test may stand in for torch.Generator while this module runs)

MOVES = frozenset({"to", "cpu", "cuda", "copy_", "type_as", "new_tensor", "new_zeros", "new_ones", "new_full",
                   "new_empty"})  # Tensor methods that move or copy across devices, as on a GPU
READS = frozenset({"cpu", "to", "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"})
EXPLAINED = ("(the check ran your code a second time with the model on PyTorch's `meta` device, which stands in "
             "for a GPU: on a GPU this line fails)")


class DeviceMixed(RuntimeError):
    """The student's code mixed devices; the message names the tensor and what to change."""


class DeviceGenerator(GENERATOR):
    """A generator that says it lives on :data:`DEVICE` (a ``meta`` generator does not exist): ``generator.device``
    gives the sampling device, as a generator made on a GPU does."""

    @property
    def device(self) -> torch.device:
        return DEVICE


class _Generator(GENERATOR):
    """``torch.Generator`` during a device run: one made on :data:`DEVICE` is a :class:`DeviceGenerator` (PyTorch
    has no ``meta`` generator), one made elsewhere a real generator."""

    def __new__(cls, device="cpu"):
        return DeviceGenerator() if torch.device(device) == DEVICE else GENERATOR(device)


@contextmanager
def generators_on_device() -> Iterator[None]:
    """Within: ``torch.Generator(device)`` makes a generator on :data:`DEVICE` too (:class:`_Generator`)."""
    previous, torch.Generator = torch.Generator, _Generator
    try:
        yield
    finally:
        torch.Generator = previous


class OnCPU:
    """An argument the device run passes on the CPU on purpose (labels a caller may hand over from the CPU), with
    the name its message uses for it (a plural noun: "labels")."""

    def __init__(self, tensor: torch.Tensor, name: str):
        self.tensor, self.name = tensor, name


def spelled(func) -> str:
    """How a student writes ``func``: ``torch.full``, ``F.one_hot``, ``.cpu()``."""
    name = getattr(func, "__name__", str(func))
    if getattr(torch, name, None) is func:
        return f"torch.{name}"
    if getattr(F, name, None) is func:
        return f"F.{name}"
    return f".{name}()"


def _placeholder(tensor: torch.Tensor) -> torch.Tensor:
    """Zeros on the CPU in place of a meta tensor's values."""
    return torch.zeros(tensor.shape, dtype=tensor.dtype)


def _reads_back(func, args: tuple, kwargs: dict) -> bool:
    """Whether ``func`` reads the values of a meta tensor back to the CPU or into Python."""
    name = getattr(func, "__name__", "")
    if name not in READS or not args or not isinstance(args[0], torch.Tensor) or args[0].device != DEVICE:
        return False
    return name != "to" or torch._C._nn._parse_to(*args[1:], **kwargs)[0] == torch.device("cpu")


class DeviceGuard(TorchFunctionMode):
    """Watches every torch call of the student's code in the device run; records the first device mistake in
    :attr:`problem` (a message) and raises it as :class:`DeviceMixed`.

    ``names`` maps CPU tensors handed over on purpose to their names; every CPU tensor the code makes is named
    after the first named CPU tensor it came from, else after the call that made it.
    """

    def __init__(self, generator: torch.Generator | None, holder: str, where: str,
                 names: dict[int, tuple] | None = None):
        super().__init__()
        self.generator, self.holder, self.where = generator, holder, where
        self.names: dict[int, tuple] = dict(names or {})
        self.problem: str | None = None

    def name(self, tensor: torch.Tensor) -> str | None:
        entry = self.names.get(id(tensor))
        return entry[1] if entry and entry[0]() is tensor else None

    def _fail(self, message: str):
        self.problem = self.problem or message
        raise DeviceMixed(self.problem)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _reads_back(func, args, kwargs):
            result = func(_placeholder(args[0]), *args[1:], **kwargs)
            return self._named(result, f"a copy made by `{spelled(func)}`")
        self._refuse_mixing(func, args, kwargs)
        result = func(*args, **kwargs)
        self._refuse_draw(func, kwargs.get("generator"), result)
        cpu_inputs = [self.name(t) for t in _tensors(args, kwargs) if t.device.type == "cpu"]
        return self._named(result, next((n for n in cpu_inputs if n), None) or f"a tensor made by `{spelled(func)}`")

    def _refuse_mixing(self, func, args: tuple, kwargs: dict) -> None:
        """Fail when ``func`` gets a meta tensor and a CPU tensor of one element or more (the CPU indices of a
        meta tensor aside, which a GPU takes)."""
        name = getattr(func, "__name__", "")
        if name in MOVES:
            return
        if name in ("__getitem__", "__setitem__") and isinstance(args[0], torch.Tensor) and args[0].device == DEVICE:
            args = (args[0], *args[2:])
        tensors = _tensors(args, kwargs)
        cpu = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
        if cpu and any(t.device == DEVICE for t in tensors):
            what = self.name(cpu[0]) or f"a tensor made on the CPU, given to `{spelled(func)}`,"
            self._fail(_mixing_message(what, self.holder, self.where))

    def _refuse_draw(self, func, generator, result) -> None:
        """Fail when ``func`` drew ``result`` with a generator that lives on another device."""
        if not isinstance(generator, GENERATOR) or not isinstance(result, torch.Tensor) \
                or generator.device.type == result.device.type:
            return
        whose = "the generator you were given" if generator is self.generator else "a generator"
        if generator.device == DEVICE:
            self._fail(f"`{spelled(func)}` drew on {result.device.type} with {whose}, which lives on "
                       f"{self.holder}'s device ({DEVICE.type}): pass `device={self.where}`")
        self._fail(f"`{spelled(func)}` drew on {result.device.type} with {whose} made on the CPU: make the "
                   f"generator on the device, `torch.Generator({self.where})`")

    def _named(self, result, name: str):
        """``result``, with its CPU tensors named ``name`` (unless named already)."""
        for tensor in tree_flatten(result)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu" and self.name(tensor) is None:
                self.names[id(tensor)] = (weakref.ref(tensor), name)
        return result


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]


def _mixing_message(what: str, holder: str, where: str) -> str:
    """The fix for a CPU tensor that met one on the device (``where``: how the student's code names that device):
    move an input there, or make a new tensor there."""
    if what.startswith("a tensor made by `torch.") or what.startswith("a tensor made by `F."):
        call = what.split("`")[1]
        return f"{what} is on cpu, {holder} on {DEVICE.type}: make it there, `{call}(..., device={where})`"
    if what.startswith("a "):
        return f"{what} is on cpu, {holder} on {DEVICE.type}: keep it there, or move it with `.to({where})`"
    return f"{what} are on cpu, {holder} on {DEVICE.type}: move them with `.to({where})`"


def _moved(value, names: dict[int, tuple]):
    """``value`` as the device run passes it: tensors and modules on :data:`DEVICE`, a generator that lives there,
    an :class:`OnCPU` tensor on the CPU (named in ``names``)."""
    if isinstance(value, OnCPU):
        names[id(value.tensor)] = (weakref.ref(value.tensor), value.name)
        return value.tensor
    if isinstance(value, GENERATOR):
        return DeviceGenerator()
    if isinstance(value, (torch.Tensor, nn.Module)):
        return value.to(DEVICE)
    return value


def device_run(name: str, function: Callable, *args, holder: str = "the model", where: str = "device",
               **kwargs) -> str | None:
    """Run the student's ``function(*args, **kwargs)`` with its tensors, modules and generator on the ``meta``
    device (:func:`_moved`); return the message of its first device mistake, or None.

    ``holder`` names what sits on the device in the message ("the model", or the input "x"); ``where`` is how the
    student's code names that device ("device" in a sampler, "x0.device" in a loss). Anything else that goes wrong
    in this run is left to the ordinary run on the CPU: it has values, this run does not.
    """
    names: dict[int, tuple] = {}
    function = _moved(function, names)  # a module runs on the device too
    args = tuple(_moved(value, names) for value in args)
    kwargs = {key: _moved(value, names) for key, value in kwargs.items()}
    generator = next((v for v in (*args, *kwargs.values()) if isinstance(v, DeviceGenerator)), None)
    guard = DeviceGuard(generator, holder, where, names)
    try:
        with generators_on_device(), guard:
            function(*args, **kwargs)
    except Exception:  # noqa: BLE001 - student code on values-less tensors: only device mistakes count here
        pass
    return f"your {name} mixes devices: {guard.problem} {EXPLAINED}" if guard.problem else None


def module_device_run(name: str, build: Callable[[], nn.Module], *inputs, **kwargs) -> str | None:
    """:func:`device_run` of the forward pass of the student's module ``build()`` (moved to the device) on
    ``inputs``; None when the module cannot be built (the ordinary run says why)."""
    try:
        module = build()
    except Exception:  # noqa: BLE001 - the check's ordinary run reports it
        return None
    return device_run(name, module, *inputs, **kwargs)
