"""The reference side of the checks of stage 2 (``02_denoiser``): for each case, the inputs and what the answers give on
them, with the outputs of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...checks.harness import generator, layer_list, module_tensors
from . import STAGE
from .checks import (GLOBAL_SEEDS, LEARNING_RATE, LOOP_LEARNING_RATE, LOOP_MISTAKES, block_specs, flat_weights,
                     operation_specs, run_loop, stale_gradients, tiny_model, unet_spec)


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
    g = generator(seed)
    images = torch.randint(0, 256, (train_size + val_size, 1, size, size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (train_size + val_size,), generator=g)
    return {"train_images": images[:train_size], "train_labels": labels[:train_size],
            "val_images": images[train_size:], "val_labels": labels[train_size:]}


def mutant_loop(stage, mistake: str) -> Callable:
    """The reference loop with one usual mistake, for the judge's hints."""
    def loop(model, train_data, val_data, epochs, batch_size, learning_rate, generator, on_epoch_end=None):
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        made_once = torch.Generator(device=val_data.device).manual_seed(0)
        train_losses, val_losses = [], []
        for epoch in range(1, epochs + 1):
            if mistake == "optimizer_per_epoch":
                optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
            model.train()
            for x, _ in train_data.batches(batch_size, generator, shuffle=mistake != "no_shuffle"):
                if mistake == "no_zero_grad":
                    loss = stage.denoising_loss(model, x, generator=generator)
                    loss.backward()
                    optimizer.step()
                    train_losses.append(loss.item())
                else:
                    train_losses.append(stage.train_step(model, optimizer, x, generator))
            model.eval()
            val_generator = {"training_generator": generator, "generator_once": made_once}.get(
                mistake, torch.Generator(device=val_data.device).manual_seed(0))
            batch_losses, sizes = [], []
            with torch.no_grad():
                for x, _ in val_data.batches(batch_size, shuffle=False, drop_last=False):
                    batch_losses.append(stage.denoising_loss(model, x, generator=val_generator).item())
                    sizes.append(len(x))
            weighted = sum(loss * size for loss, size in zip(batch_losses, sizes))
            val_losses.append({"unweighted": sum(batch_losses) / len(batch_losses), "last_batch": batch_losses[-1],
                               "summed": weighted}.get(mistake, weighted / len(val_data)))
            if on_epoch_end is not None:
                on_epoch_end(epoch, model, train_losses, val_losses)
        return train_losses, val_losses
    return loop


def train_loop_case(train_size: int, val_size: int, batch_size: int, epochs: int, size: int,
                    seed: int) -> tuple[dict, dict]:
    stage = STAGE.answers
    inputs = {**_loop_data(train_size, val_size, size, seed), "epochs": epochs, "batch_size": batch_size,
              "learning_rate": LOOP_LEARNING_RATE, "model_seed": seed, "generator_seed": seed + 1,
              "global_seeds": GLOBAL_SEEDS}
    reference = run_loop(stage.train_denoiser, inputs, GLOBAL_SEEDS[0])
    mistakes = []
    for mistake, hint in LOOP_MISTAKES.items():
        run = run_loop(mutant_loop(stage, mistake), inputs, GLOBAL_SEEDS[0])
        mistakes.append((run["train"], run["val"], hint))
    return inputs, {"train": reference["train"], "val": reference["val"], "mistakes": mistakes}
