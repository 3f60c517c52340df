"""Samplers: DDPM (Ho et al. Algorithm 2), classifier-free guidance, DDIM, and the rectified-flow Euler sampler.

Each sampler is one update (a *step*) and a loop, and every loop runs through :func:`course_lib.chain.run_chain`,
the one place that keeps the trajectory. All samplers share one signature, the one students write in the notebooks:
``(model, [schedule,] what-to-sample, [steps,] generator=None, ...)``, with the library's extras
(``return_trajectory``, ``device``, ``image_shape``) keyword-only. A student's loop returns
``(samples, trajectory)``; the library's does so with ``return_trajectory=True``.

Every sampler draws its noise with ``generator`` (on the sampling device), returns images in about
[-1, 1] of shape (N, C, 28, 28), and with ``return_trajectory=True`` also returns every intermediate
image as a CPU tensor (steps + 1, N, C, 28, 28), first frame pure noise, last frame the result.
Models are put in eval mode while sampling and run under the device's autocast precision.

All samplers are students' exercises (DDPM and DDIM in stage 3, guidance in 4, the flow in 5, the editors of stage 7:
SDEdit, inpainting, guided edits): their checked forms live in each stage's ``api`` module and are gathered here,
with stage 3's given helpers: DDIM's timesteps, ancestral DDPM on fewer steps (``respaced``) and the reverse-time
VP-SDE of a noise predictor (``reverse_vp_sde``).
"""

from __future__ import annotations

from .chain import IMAGE_SHAPE, device_of, run_chain, sampling_mode, start_noise
from .stages.cfg.api import cfg_sample, guided_eps
from .stages.ddpm.api import (ddim_sample, ddim_step, ddim_timesteps, ddpm_sample, ddpm_step, respaced,
                              reverse_vp_sde)
from .stages.editing.api import guided_edit, inpaint, sdedit
from .stages.flow.api import flow_sample

__all__ = ["IMAGE_SHAPE", "cfg_sample", "ddim_sample", "ddim_step", "ddim_timesteps", "ddpm_sample", "ddpm_step",
           "device_of", "flow_sample", "guided_edit", "guided_eps", "inpaint", "respaced", "reverse_vp_sde",
           "run_chain", "sampling_mode", "sdedit", "start_noise"]
