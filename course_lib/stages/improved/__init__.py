"""Stage 6, ``06_improved_unet`` (optional): a sinusoidal time embedding and self-attention for a better UNet."""

from ..stage import Stage


STAGE = Stage(
    "improved", "06_improved_unet", "Improve the UNet: sinusoidal time, residual blocks, self-attention", __name__,
    ("noising", "denoiser", "ddpm"),
    {"sinusoidal_embedding": ("sinusoidal_embedding",), "self_attention": ("SelfAttention",)}, optional=True)
