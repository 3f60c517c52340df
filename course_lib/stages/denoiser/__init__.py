"""Stage 2, ``02_denoiser``: a one-step denoising UNet, its operations and blocks, its loss and training loop."""

from ..stage import Model, Stage, StageBudget


STAGE = Stage(
    "denoiser", "02_denoiser", "A one-step denoising UNet", __name__, ("noising",),
    {"operations": ("Conv", "DownConv", "UpConv", "Flatten", "Unflatten"),
     "blocks": ("ConvBlock", "DownBlock", "UpBlock"), "unet": ("UnconditionalUNet",),
     "loss_and_step": ("denoising_loss", "train_step"), "train_denoiser": ("train_denoiser",)},
    classes=("Conv", "DownConv", "UpConv", "Flatten", "Unflatten", "ConvBlock", "DownBlock", "UpBlock", "UNetBody",
             "UnconditionalUNet"),
    model=Model(builder=lambda: STAGE.answers.UnconditionalUNet, loss=lambda: STAGE.answers.denoising_loss,
                loss_inputs=("images",), sampler=None, value_range="unit", figures="denoised_digits"),
    budgets={"full": StageBudget(epochs=5, batch_size=256, num_hiddens=128, subset_size=None, learning_rate=1e-4),
             "quick": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                                  eval_samples=100)})
