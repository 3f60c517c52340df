"""The reference side of the checks of stage 2 (``02_denoiser``): for each case, the inputs and what the answers give on
them, with the outputs of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...checks.harness import generator, layer_list, module_tensors
from . import STAGE
from ...data import DeviceImages
from .checks import (LEARNING_RATE, LOOP_LEARNING_RATE, loop_model, block_specs, flat_weights, operation_specs,
                     stale_gradients, tiny_model, unet_spec)


def _modules_reference(specs: list[dict]) -> tuple[dict, dict]:
    """Inputs (the seeded input and the reference's tensors) and expected outputs of each module of ``specs``."""
    stage = STAGE.answers
    inputs, expected = [], []
    for spec in specs:
        x = torch.randn(spec["input_shape"], generator=generator(spec["seed"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec["seed"])
            ref = getattr(stage, spec["name"])(*spec["args"], **spec["kwargs"])
        tensors = module_tensors(ref)
        inputs.append({"label": spec["label"], "args": spec["args"], "kwargs": spec["kwargs"], "x": x,
                       "names": [name for name, _ in tensors], "tensors": [t.detach().clone() for _, t in tensors],
                       "num_parameters": len(list(ref.parameters())), "layers": layer_list(ref)})
        outputs = {}
        for mode in ("train", "eval"):
            ref.train(mode == "train")
            with torch.no_grad():
                if isinstance(ref, nn.Sequential) and isinstance(ref[-1], nn.GELU):
                    pre = nn.Sequential(*list(ref)[:-1])(x)  # one pass, as ref(x): BatchNorm updates once
                    outputs[mode], outputs[f"{mode}_pre"] = ref[-1](pre), pre
                else:
                    outputs[mode], outputs[f"{mode}_pre"] = ref(x), None
        expected.append(outputs)
    return {"modules": inputs}, {"modules": expected}


def operations_case(in_channels: int, out_channels: int, size: int, batch_size: int,
                    seed: int) -> tuple[dict, dict]:
    return _modules_reference(operation_specs(in_channels, out_channels, size, batch_size, seed))


def blocks_case(in_channels: int, out_channels: int, size: int, batch_size: int,
                seed: int) -> tuple[dict, dict]:
    return _modules_reference(block_specs(in_channels, out_channels, size, batch_size, seed))


def unet_case(num_hiddens: int, batch_size: int, in_channels: int, seed: int) -> tuple[dict, dict]:
    return _modules_reference([unet_spec(num_hiddens, batch_size, in_channels, seed)])


def training_step_case(batch_size: int, size: int, sigma: float, seed: int) -> tuple[dict, dict]:
    stage = STAGE.answers
    reference_loss = stage.denoising_loss
    x = torch.rand(batch_size, 1, size, size, generator=generator(seed))
    model = tiny_model(seed)
    with torch.no_grad():
        eps = torch.randn(x.shape, generator=generator(seed + 1))
        z = x + sigma * eps
        loss = reference_loss(model, x, sigma, generator(seed + 1))
        mistakes = [
            (F.mse_loss(model(z), eps), "the denoiser predicts the clean image x, not the noise"),
            (F.mse_loss(model(x), x), "feed the noisy z = x + sigma * eps to the model, not the clean x"),
            (F.mse_loss(model(z), x, reduction="sum"), "use the mean of the squared errors (F.mse_loss), not the sum"),
            (F.mse_loss(model(x + eps), x), "the noise is not scaled: z = x + sigma * eps"),
        ]
    reference_model, stale_model = tiny_model(seed), tiny_model(seed)
    stale_gradients(stale_model)
    reference_optimizer = torch.optim.Adam(reference_model.parameters(), lr=LEARNING_RATE)
    stale_optimizer = torch.optim.Adam(stale_model.parameters(), lr=LEARNING_RATE)
    value = reference_loss(reference_model, x, generator=generator(seed + 2))
    reference_optimizer.zero_grad()
    value.backward()
    reference_optimizer.step()
    stale_loss = reference_loss(stale_model, x, generator=generator(seed + 2))
    stale_loss.backward()
    stale_optimizer.step()
    inputs = {"x": x, "sigma": sigma, "model_seed": seed, "loss_seed": seed + 1, "step_seed": seed + 2,
              "learning_rate": LEARNING_RATE}
    return inputs, {"loss": loss, "mistakes": mistakes, "value": value.item(),
                    "weights": flat_weights(reference_model), "stale_weights": flat_weights(stale_model),
                    "initial_weights": flat_weights(tiny_model(seed))}


def _loop_data(train_size: int, val_size: int, size: int, seed: int) -> dict:
    """Toy digits: blank or full squares (uint8 0 or 255), so that the check reads each noisy digit's clean image off
    its mean; random labels."""
    g = generator(seed)
    full = torch.randint(0, 2, (train_size + val_size, 1, 1, 1), generator=g, dtype=torch.uint8)
    images = (full * 255).expand(-1, 1, size, size).contiguous()
    labels = torch.randint(0, 10, (train_size + val_size,), generator=g)
    return {"train_images": images[:train_size], "train_labels": labels[:train_size],
            "val_images": images[train_size:], "val_labels": labels[train_size:]}


def _untrained_validation_loss(inputs: dict, batch_size: int) -> float:
    """The validation loss of the check's model before training: eval mode, every held-out digit once."""
    model = loop_model(inputs["model_seed"]).eval()
    val_data = DeviceImages(inputs["val_images"], inputs["val_labels"], "unit")
    noise = generator(inputs["generator_seed"])
    total = 0.0
    with torch.no_grad():
        for x, _ in val_data.batches(batch_size, shuffle=False, drop_last=False):
            total += STAGE.answers.denoising_loss(model, x, generator=noise).item() * len(x)
    return total / len(val_data)


def train_loop_case(train_size: int, val_size: int, batch_size: int, epochs: int, size: int,
                    seed: int) -> tuple[dict, dict]:
    inputs = {**_loop_data(train_size, val_size, size, seed), "epochs": epochs, "batch_size": batch_size,
              "learning_rate": LOOP_LEARNING_RATE, "model_seed": seed, "generator_seed": seed + 1}
    return inputs, {"untrained": _untrained_validation_loss(inputs, batch_size)}
