"""course_lib: the reference implementation of the diffusion-models course, and what students are given.

Modules: ``data`` (MNIST), ``noise`` (noising, schedules, forward process), ``models`` (UNets),
``objectives`` (losses), ``training`` (the loop, checkpoints), ``sampling`` (DDPM, guidance, DDIM, flow),
``plots`` (figures), ``runtime`` (device, mode, budgets), ``stages`` (a stage's pieces wired together).
"""

__version__ = "0.2.0"
