"""Stage 5, ``05_flow``: rectified flow with stage 3's UNet: the flow-matching loss and the Euler sampler."""

from .. import ddpm
from ..stage import Model, Stage, diffusion_budgets


STAGE = Stage(
    "flow", "05_flow", "Rectified flow", __name__, ("noising", "denoiser", "ddpm"),
    {"flow_loss": ("flow_loss",), "flow_sample": ("flow_sample",)},
    model=Model(builder=lambda: ddpm.STAGE.answers.TimeConditionalUNet, loss=lambda: STAGE.answers.flow_loss,
                loss_inputs=("images",), sampler=lambda: STAGE.api.flow_sample, value_range="signed",
                figures="flow_samples"),
    budgets=diffusion_budgets())
