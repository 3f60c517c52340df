"""The forward (noising) process: Gaussian noising at one sigma, DDPM schedules, the closed form ``q_sample``,
the one-step Markov update, and an Euler-Maruyama simulator for the SDE warm-up.

Stage 1's names (:mod:`course_lib.stages.noising.api`), where notebooks and hidden tests import them from.
Timesteps are integers 0..T-1, 0 the least noisy; ``alpha_bars[t]`` is the product of ``alphas[0..t]``.
"""

from .stages.noising.api import (COSINE_MAX_BETA, COURSE_NUM_STEPS, SCHEDULE_KINDS, DDPMSchedule, Diffusion,
                                 add_noise, course_schedule, diffusion_term, em_step, euler_maruyama, forward_step,
                                 markov_forward, q_sample)

__all__ = ["COSINE_MAX_BETA", "COURSE_NUM_STEPS", "SCHEDULE_KINDS", "DDPMSchedule", "Diffusion", "add_noise",
           "course_schedule", "diffusion_term", "em_step", "euler_maruyama", "forward_step", "markov_forward",
           "q_sample"]
