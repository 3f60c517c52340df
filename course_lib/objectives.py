"""Training objectives, one per stage. Each returns a scalar loss (mean squared error over all pixels).

All noise (and the random timesteps and label dropout) is drawn with ``generator``, which must live on
the device of the images, so a check can compare two implementations on identical draws.

The losses are what students write (stages 2-5): each stage's ``api`` module checks the arguments and calls its
answers, and this module gathers them under one name. The training loop calls the answers directly (the stage's
:class:`~course_lib.stages.stage.Model` names them), so a training step does not re-check every batch.
"""

from .data import one_hot
from .stages.cfg.api import P_UNCOND, class_conditional_loss, drop_labels
from .stages.ddpm.api import ddpm_loss, random_timesteps
from .stages.denoiser.api import DENOISER_SIGMA, denoising_loss
from .stages.flow.api import flow_interpolate, flow_loss

__all__ = ["DENOISER_SIGMA", "P_UNCOND", "class_conditional_loss", "ddpm_loss", "denoising_loss", "drop_labels",
           "flow_interpolate", "flow_loss", "one_hot", "random_timesteps"]
