"""Runs INSIDE the kernel that executes a student's notebook: puts global settings back before each test.

The grading pipeline (:mod:`autograder.execute.preprocessors`) injects two kinds of cells, removed again after the run:
``capture()`` before the first cell, and ``restore()`` before every graded test cell. A notebook that changed
the working directory, torch's default dtype, thread count, determinism or gradient mode, the warning filters,
``sys.stdout``/``sys.stderr`` or a builtin is therefore tested exactly as one that did not.

Kept free of imports from the rest of the autograder: the kernel imports only this module.
"""

from __future__ import annotations

import builtins
import os
import sys
import warnings

_saved: dict = {}


def capture() -> None:
    """Remember the kernel's settings as they are before any student code runs."""
    import torch

    _saved.update(
        cwd=os.getcwd(),
        stdout=sys.stdout,
        stderr=sys.stderr,
        builtins=dict(vars(builtins)),
        warning_filters=list(warnings.filters),
        default_dtype=torch.get_default_dtype(),
        num_threads=torch.get_num_threads(),
        deterministic=torch.are_deterministic_algorithms_enabled(),
        deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
        grad_enabled=torch.is_grad_enabled(),
        anomaly=torch.is_anomaly_enabled(),
        cudnn_deterministic=torch.backends.cudnn.deterministic,
        cudnn_benchmark=torch.backends.cudnn.benchmark,
    )


def restore() -> None:
    """Put back every setting :func:`capture` remembered (a no-op before ``capture``)."""
    if not _saved:
        return
    import torch

    os.chdir(_saved["cwd"])
    sys.stdout, sys.stderr = _saved["stdout"], _saved["stderr"]
    for name, value in _saved["builtins"].items():
        if vars(builtins).get(name) is not value:
            setattr(builtins, name, value)
    warnings.filters[:] = _saved["warning_filters"]
    torch.set_default_dtype(_saved["default_dtype"])
    if torch.get_num_threads() != _saved["num_threads"]:
        torch.set_num_threads(_saved["num_threads"])
    determinism = (_saved["deterministic"], _saved["deterministic_warn_only"])
    if (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) != \
            determinism:  # only when changed: its first call costs a second (it imports more of torch)
        torch.use_deterministic_algorithms(determinism[0], warn_only=determinism[1])
    torch.set_grad_enabled(_saved["grad_enabled"])
    torch.autograd.set_detect_anomaly(_saved["anomaly"])
    torch.backends.cudnn.deterministic = _saved["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = _saved["cudnn_benchmark"]
