"""Stage 1, ``01_noising``: Gaussian noise, the DDPM schedules, the forward process and one Euler-Maruyama step."""

from ..stage import Stage


STAGE = Stage(
    "noising", "01_noising", "Noising: Gaussian noise, the DDPM schedule and the forward process", __name__, (),
    {"add_noise": ("add_noise",), "ddpm_schedule": ("ddpm_schedule",), "cosine_schedule": ("cosine_schedule",),
     "q_sample": ("q_sample",), "em_step": ("em_step",)})
