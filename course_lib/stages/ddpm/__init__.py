"""Stage 3, ``03_ddpm``: a time-conditioned UNet, the DDPM loss, the reverse step, ancestral sampling and DDIM."""

from ..stage import Model, Stage, diffusion_budgets


STAGE = Stage(
    "ddpm", "03_ddpm", "DDPM with a time-conditioned UNet", __name__, ("noising", "denoiser"),
    {"fc_block": ("FCBlock",), "time_conditional_unet": ("TimeConditionalUNet",), "ddpm_loss": ("ddpm_loss",),
     "ddpm_step": ("ddpm_step",), "ddpm_sample": ("ddpm_sample",),
     "ddim_sample": ("ddim_sample",)},
    classes=("FCBlock", "TimeConditionalUNet"),
    model=Model(builder=lambda: STAGE.answers.TimeConditionalUNet, loss=lambda: STAGE.answers.ddpm_loss,
                loss_inputs=("images", "schedule"), sampler=lambda: STAGE.api.ddpm_sample, value_range="signed",
                figures="ddpm_samples"),
    budgets=diffusion_budgets(num_steps=50))
