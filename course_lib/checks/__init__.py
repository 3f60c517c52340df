"""Immediate feedback for students: the check cells after each TODO call these.

A failed check raises :class:`CheckFailed`, whose message says what is wrong and what to look at
("your alpha_bars[10] is 0.97, expected 0.99: is it a cumulative product?"). In Jupyter and Colab it is
shown as that message alone, without a traceback. A passed check prints one short line.

Each stage's checks live in its package (``course_lib.stages.noising.checks`` and so on), built from the
harness (:mod:`course_lib.checks.harness`) and the three-part protocol (:mod:`course_lib.checks.protocol`); the
names a notebook needs are re-exported here.
"""

from .harness import CheckFailed, expect_close, expect_tensor, passed, run_student

__all__ = ["CheckFailed", "expect_close", "expect_tensor", "passed", "run_student"]
