"""How a submission is run: :class:`GradingOptions`, one frozen value from the command line to the process that
starts the kernel. Whatever crosses a process boundary (a ``--jobs`` worker's set-up, a grading child's set-up line,
a Dask task, the resume key) is its :meth:`~GradingOptions.to_json`, read back with
:meth:`~GradingOptions.from_json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class GradingOptions:
    """How a submission is run: one frozen value from the command line to the worker that starts the kernel
    (across a process boundary as :meth:`to_json`).

    Attributes:
        jobs: worker processes that execute notebooks at the same time (>= 1).
        cell_timeout: seconds one cell may run before it is interrupted.
        notebook_timeout: seconds one notebook may run; later cells are marked "not run".
        memory_gb: GiB that all processes of one kernel (the kernel and whatever it starts) may hold together
            (0: no cap).
        max_processes: processes one kernel may run at once, itself included (0: no cap).
        sandbox: run every kernel in a bubblewrap sandbox (False: with this user's rights, as ``--no-sandbox``).
        warm_kernels: with the sandbox, start each worker's next kernel and import torch and ``course_lib`` in it
            while the current notebook runs (:mod:`autograder.execute.warm_kernels`; False: as ``--cold-kernels``).
    """

    jobs: int = 1
    cell_timeout: int = 120
    notebook_timeout: float = 600.0
    memory_gb: float = 8.0
    max_processes: int = 256
    sandbox: bool = True
    warm_kernels: bool = True

    def __post_init__(self):
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"`jobs` must be an integer >= 1, got {self.jobs!r}")
        if self.cell_timeout <= 0 or self.notebook_timeout <= 0:
            raise ValueError(f"`cell_timeout` and `notebook_timeout` must be > 0, got {self.cell_timeout!r} "
                             f"and {self.notebook_timeout!r}")
        if self.memory_gb < 0:
            raise ValueError(f"`memory_gb` must be >= 0 (0: no cap), got {self.memory_gb!r}")
        if not isinstance(self.max_processes, int) or isinstance(self.max_processes, bool) or self.max_processes < 0:
            raise ValueError(f"`max_processes` must be an integer >= 0 (0: no cap), got {self.max_processes!r}")

    def to_json(self) -> str:
        """The options as one JSON object: what crosses a process boundary (a grading child, a Dask task)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GradingOptions:
        """The options :meth:`to_json` wrote (checked again)."""
        return cls(**json.loads(text))
