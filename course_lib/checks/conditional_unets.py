"""What the checks of stages 3-4 share about the conditional UNets (and their FCBlocks).

Reference side only (it runs the reference's layers, so only the checks' ``_reference`` parts call it): the
reference UNet's forward with one known wiring mistake switched on, whose outputs go into ``expected`` for the hints.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn



def reference_unet_forward(model: nn.Module, x, t, c=None, *, skip_first: bool = False,
                           shift_before_unflatten: bool = False, shift_after_up2: bool = False,
                           shift_then_scale: bool = False, add_class: bool = False) -> torch.Tensor:
    """The reference time/class-conditional UNet's forward with one known mistake switched on (for hints).

    ``model`` is a course_lib :class:`TimeConditionalUNet` (``c`` None) or :class:`ClassConditionalUNet`.
    """
    body = model.body
    t = t[:, None].to(x.dtype)
    t1, t2 = model.t1(t)[:, :, None, None], model.t2(t)[:, :, None, None]
    c1 = c2 = None
    if c is not None:
        c1, c2 = model.c1(c)[:, :, None, None], model.c2(c)[:, :, None, None]

    def modulate(h, scale, shift):
        if scale is None:
            return h + shift
        if add_class:
            return h + scale + shift
        return scale * (h + shift) if shift_then_scale else scale * h + shift

    def cat(h, skip):
        return torch.cat([skip, h] if skip_first else [h, skip], dim=1)

    first = body.conv_in(x)
    skip14 = body.down1(first)
    skip7 = body.down2(skip14)
    flat = body.flatten(skip7)
    h = body.unflatten(flat + t1) if shift_before_unflatten else modulate(body.unflatten(flat), c1, t1)
    h = body.up1(cat(h, skip7))
    if not shift_after_up2:
        h = modulate(h, c2, t2)
    h = body.up2(cat(h, skip14))
    if shift_after_up2:
        h = modulate(h, c2, t2)
    return body.head(body.conv_out(cat(h, first)))


def unet_mutants(reference: nn.Module, x, t, c=None) -> dict[str, Callable[[], torch.Tensor]]:
    """Known wiring mistakes of the conditional UNets, each with its hint (reference side: it runs ``reference``)."""
    def run(**variant):
        return lambda: reference_unet_forward(reference, x, t, c, **variant)

    mutants = {
        "concatenate the decoder features first, then the skip connection: torch.cat([h, skip], dim=1)":
            run(skip_first=True),
        "add t1 to the OUTPUT of Unflatten (2D channels, 7x7), not to the 1x1 features before it":
            run(shift_before_unflatten=True),
        "add t2 to the output of the FIRST UpBlock (14x14), not after the second one": run(shift_after_up2=True),
    }
    if c is not None:
        mutants["scale first, then shift: unflatten = c1 * unflatten + t1 (not c1 * (unflatten + t1))"] = \
            run(shift_then_scale=True)
        mutants["the class embedding multiplies the features: c1 * unflatten + t1 (not unflatten + c1 + t1)"] = \
            run(add_class=True)
    return mutants
