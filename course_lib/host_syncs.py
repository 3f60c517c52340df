"""Count host syncs: the operations that make the Python thread wait for the GPU, counted on any device.

A GPU runs its kernels asynchronously: the host queues them and moves on, until it needs a value
*from* the GPU. Then it waits for every queued kernel (a "sync"). A training step with no sync
keeps the GPU busy; one with a sync idles the GPU while Python prepares the next kernels.

:class:`HostSyncCounter` counts, inside a ``with`` block, every operation that would sync on a GPU:

* reading a scalar: ``.item()``, ``int(t)``, ``float(t)``, ``bool(t)``, ``if t.any():``
  (``aten._local_scalar_dense``), ``torch.equal``, ``torch.allclose``;
* an output whose shape depends on the data: ``nonzero``, ``torch.where(mask)``, ``t[mask]``,
  ``t[mask] = v``, ``masked_select``, ``unique``, ``repeat_interleave(counts)``, ``bincount``;
* a blocking copy between the CPU and a device (either direction; PyTorch synchronizes the stream
  after a copy with ``non_blocking=False``), and, for tensors on the CPU, ``.cpu()``, ``.to("cpu")``,
  ``.tolist()`` and ``.numpy()``, which do nothing on the CPU but copy from the device on a GPU.

Because it works at the level of operations, not of the CUDA runtime, it counts the same events on
the CPU as on a GPU: a CPU test can check that a training step never waits for the GPU. On the CPU it
cannot tell data that stays on the host by design (a DataLoader's items) from data that would live on
the GPU: wrap host-only code in :func:`host_only`. On a GPU, pass ``device`` to count only what waits
for it (a scalar read of a CPU tensor is then no sync).

Not counted: ``torch.cuda.synchronize()``, events and streams (invisible at this level); on the CPU,
host-to-device copies hidden in factory functions (``torch.tensor(v, device=x.device)``); reads of the
``step`` counters that ``torch.optim`` keeps on the host on purpose (non-fused, non-capturable
optimizers call ``.item()`` on them; they never live on the GPU, so they are not syncs).

Where a CPU kernel checks values with ``.item()`` but the CUDA kernel uses a device-side assert instead,
the counter follows CUDA: ``F.one_hot(labels, num_classes)`` counts nothing (it counts one sync without
``num_classes``, which needs ``labels.max()`` on every device).
"""

from __future__ import annotations

import contextlib
import os
import traceback
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SCALAR_READS = {aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
                aten.allclose.default, aten._linalg_check_errors.default}
DATA_DEPENDENT_SHAPES = {aten.nonzero.default, aten.masked_select.default, aten._unique.default,
                         aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
                         aten.bincount.default}
MASK_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
                 aten._index_put_impl_.default}
COPIES = {aten._to_copy.default, aten.copy_.default}
HOST_METHODS = {torch.Tensor.cpu, torch.Tensor.to, torch.Tensor.tolist, torch.Tensor.numpy}
_TORCH_DIR = os.path.dirname(torch.__file__)
_host_only_depth = 0


@contextlib.contextmanager
def host_only() -> Iterator[None]:
    """Code inside works on host data by design (e.g. a DataLoader on the CPU): no counter records it."""
    global _host_only_depth
    _host_only_depth += 1
    try:
        yield
    finally:
        _host_only_depth -= 1


@dataclass(frozen=True)
class SyncEvent:
    """One counted operation: its name (e.g. ``aten._local_scalar_dense.default``) and the innermost
    ``file:line function`` outside torch that caused it."""

    op: str
    where: str


class HostSyncCounter:
    """``with HostSyncCounter() as syncs: ...`` then ``syncs.count`` (an int >= 0) and ``syncs.events``.

    Args:
        device: the accelerator whose syncs count (e.g. ``"cuda"``): only operations on its tensors, or
            copies to or from it, are counted. ``None`` or the CPU: the CPU stands in for an accelerator and
            every such operation counts (outside :func:`host_only` blocks).

    The counted operations are listed in the module's docstring. Operations inside ``torch.compile``d
    graphs are not seen. Slows the code it watches: use it in tests and benchmarks, not in training.
    """

    def __init__(self, device: torch.device | str | None = None):
        device = torch.device(device) if device is not None else torch.device("cpu")
        self.device_type = None if device.type == "cpu" else device.type  # None: the CPU stands in
        self.events: list[SyncEvent] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._quiet = 0  # > 0 inside an operation whose CPU-only checks are not counted

    @property
    def count(self) -> int:
        return len(self.events)

    def summary(self) -> str:
        """One line per distinct event: ``count x op at where``."""
        counts: dict[SyncEvent, int] = {}
        for event in self.events:
            counts[event] = counts.get(event, 0) + 1
        return "\n".join(f"{n} x {e.op} at {e.where}" for e, n in counts.items()) or "no host syncs"

    def __enter__(self) -> "HostSyncCounter":
        self._hook = register_optimizer_step_pre_hook(lambda optimizer, *_: self._optimizers.append(optimizer))
        self._modes = [_FunctionLevel(self), _DispatchLevel(self)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        self._hook.remove()

    def _record(self, op, device_types: set[str] | None = None) -> None:
        """Record ``op`` unless inside :func:`host_only`, or ``device_types`` (of the tensors it touches) miss
        the watched accelerator."""
        if _host_only_depth or (self.device_type is not None and self.device_type not in (device_types or ())):
            return
        self.events.append(SyncEvent(str(op), _caller()))

    def _is_host_step_counter(self, tensor) -> bool:
        return tensor.device.type == "cpu" and any(
            state.get("step") is tensor for optimizer in self._optimizers for state in optimizer.state.values())


def _caller() -> str:
    """The innermost stack frame outside torch and this module, as ``file:line function``."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.startswith(_TORCH_DIR) and frame.filename != __file__:
            return f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.name}"
    return "?"


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


class _Counting:
    """A torch mode that reports to ``counter``."""

    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter


class _DispatchLevel(_Counting, TorchDispatchMode):
    """Sees every aten operation, including those of the backward pass and of torch.optim."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device_types = None if self.counter._quiet else _syncing_devices(func, args, kwargs)
        if device_types is not None and not (
                func in SCALAR_READS and self.counter._is_host_step_counter(args[0])):
            self.counter._record(func, device_types)
        return func(*args, **kwargs)


def _syncing_devices(func, args, kwargs) -> set[str] | None:
    """The device types of the tensors ``func`` touches if it makes the host wait for them, else ``None``."""
    if func in SCALAR_READS or func in DATA_DEPENDENT_SHAPES or (
            func is aten.repeat_interleave.Tensor and kwargs.get("output_size") is None) or (
            func in MASK_INDEXING and any(_is_mask(index) for index in args[1])):
        return {arg.device.type for arg in args if isinstance(arg, torch.Tensor)}
    if func in COPIES:
        if func is aten._to_copy.default:
            source, target = args[0].device, kwargs.get("device") or args[0].device
            blocking = not kwargs.get("non_blocking", False)
        else:
            target, source = args[0].device, args[1].device
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        if blocking and source.type != target.type and "cpu" in (source.type, target.type):
            return {source.type, target.type}
    return None


class _FunctionLevel(_Counting, TorchFunctionMode):
    """Sees Python-level methods that copy to the host on a GPU but dispatch nothing on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.one_hot:
            return self._one_hot(args, kwargs)
        if func in HOST_METHODS and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
            if func is not torch.Tensor.to or _blocking_copy_to_cpu(args[1:], kwargs):
                self.counter._record(f"Tensor.{func.__name__} (a copy between host and device on a GPU)", {"cpu"})
        return func(*args, **kwargs)

    def _one_hot(self, args, kwargs):
        if (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) == -1:
            self.counter._record("one_hot without num_classes (reads labels.max())", {args[0].device.type})
        self.counter._quiet += 1
        try:
            return torch.nn.functional.one_hot(*args, **kwargs)
        finally:
            self.counter._quiet -= 1


def _blocking_copy_to_cpu(args, kwargs) -> bool:
    """Whether ``Tensor.to(*args, **kwargs)`` names the CPU as its device, without ``non_blocking=True``."""
    device, _, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
    return device is not None and device.type == "cpu" and not non_blocking
