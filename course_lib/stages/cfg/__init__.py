"""Stage 4, ``04_cfg``: class conditioning, label dropout and classifier-free guidance."""

from ..stage import Model, Stage, diffusion_budgets


STAGE = Stage(
    "cfg", "04_cfg", "Class conditioning and classifier-free guidance", __name__, ("noising", "denoiser", "ddpm"),
    {"class_conditional_unet": ("ClassConditionalUNet",), "drop_labels": ("drop_labels",),
     "cfg_loss": ("class_conditional_loss",), "guided_eps": ("guided_eps",), "cfg_sample": ("cfg_sample",),
     "sample_digits": ("sample_digits", "cfg_sample")},  # its check replays the student's cfg_sample
    classes=("ClassConditionalUNet",),
    model=Model(builder=lambda: STAGE.answers.ClassConditionalUNet, loss=lambda: STAGE.answers.class_conditional_loss,
                loss_inputs=("images", "labels", "schedule"), sampler=lambda: STAGE.api.cfg_sample,
                value_range="signed", figures="guided_samples"),
    budgets=diffusion_budgets(num_steps=50))
