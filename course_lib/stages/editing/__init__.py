"""Stage 7, ``07_editing`` (optional): editing digits with stage 4's class-conditional model: SDEdit, inpainting
and class-guided edits."""

from ..stage import Stage


STAGE = Stage(
    "editing", "07_editing", "Editing with your model: SDEdit, inpainting, class-guided edits", __name__,
    ("noising", "denoiser", "ddpm", "cfg"),
    {"sdedit": ("sdedit",), "inpaint": ("inpaint",), "guided_edit": ("guided_edit",)}, optional=True)
