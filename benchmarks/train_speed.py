"""Training and sampling speed: the handout-style loop against course_lib's training path.

For each stage (denoiser D=128 batch 256; DDPM D=64 batch 128; class-conditional D=64 batch 128) it
times a slice of a training epoch in two ways, in one run on one machine:

  handout    torchvision MNIST through a DataLoader with ToTensor, fp32, noise drawn per batch
  course_lib the split resident on the device (course_lib.data.DeviceImages), the mixed-precision policy
             of course_lib.training (fp16 + GradScaler below compute capability 8, bf16 from 8 up, fp32
             on the CPU), channels_last and cudnn.benchmark on CUDA, Adam of course_lib.optimizers (fused on
             CUDA), optionally torch.compile of the model (--compile) and the captured step of
             course_lib.training.train (--capture, on by default on CUDA: the loss compiled with
             mode="reduce-overhead", i.e. CUDA graphs; compile times reported apart from the steady state)

and prints images/s of both (steady state), their ratio, the seconds before the timed steps (warm-up,
and compilation with --compile), the time of one 60,000-image epoch at that rate including them, the
FLOPs per training image (torch.utils.flop_counter), the achieved TFLOP/s and its fraction of the
device's peak, and the projected time of the assignment's full budget (5 + 20 + 20 epochs of 60,000
images) on a T4; and, to show whether the GPU waits for Python, the host syncs per step (operations that make
the host wait for the GPU, counted by course_lib.host_syncs on any device) and the GPU busy fraction (GPU time
per step from torch.profiler over the wall time per step of the timed loop; "n/a" off CUDA). Then it times
sampling 40 digits with 300 DDPM steps (unguided and guided).

    python benchmarks/train_speed.py                          # on a GPU: the real widths and batches
    python benchmarks/train_speed.py --compile                # also with torch.compile
    python benchmarks/train_speed.py --width 16 --batch 64 --steps 10 --sampling-steps 50   # CPU, ~1 minute
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from dataclasses import dataclass, replace

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from course_lib import sampling
from course_lib.data import DeviceImages, load_mnist
from course_lib.host_syncs import HostSyncCounter, host_only
from course_lib.noise import DDPMSchedule, course_schedule
from course_lib.runtime import autocast_dtype, pick_device
from course_lib.optimizers import make_optimizer
from course_lib.stages import TRAINING_STAGES, budget, build_model, stage_loss, value_range
from course_lib.train_step import TrainStep

# Timed unless --stages says otherwise: the assignment's three trainings (its 5 + 20 + 20 epochs, the budget of the
# 6-minute goal). Flow trains stage 3's UNet at ddpm's width and batch, so by default it would time the same network
# again; it stays a choice of --stages.
DEFAULT_STAGES = tuple(key for key in TRAINING_STAGES if key != "flow")
TRAIN_IMAGES = 60_000
T4_PEAK_TFLOPS = {"fp32": 8.1, "fp16": 65.0}
# Dense peak TFLOP/s (fp32, and the autocast dtype's tensor-core rate) of common GPUs, by a name fragment
# (first match wins, so "L40S" comes before "L4"; H100/H200 figures are the SXM parts').
GPU_PEAKS = {"T4": (8.1, 65.0), "L40S": (91.6, 362.0), "L4": (30.3, 121.0), "V100": (15.7, 125.0), "A100": (19.5, 312.0),
             "A10G": (31.2, 125.0), "H100": (67.0, 989.0), "H200": (67.0, 989.0)}


@dataclass
class Timing:
    """One timed loop: images per second over the timed steps, the seconds before them (warm-up, compile), host
    syncs per step (``None``: not counted) and the GPU busy fraction in [0, 1] (``None``: off CUDA)."""

    images_per_second: float
    startup_seconds: float
    syncs_per_step: float | None = None
    gpu_busy: float | None = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_peaks(device: torch.device, cpu_peak: float | None) -> tuple[str, float | None, float | None]:
    """The device's name and its peak TFLOP/s in fp32 and in its autocast dtype (``None`` when unknown)."""
    if device.type != "cuda":
        return f"CPU ({cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)", cpu_peak, None
    name = torch.cuda.get_device_name(device)
    for fragment, (fp32, mixed) in GPU_PEAKS.items():
        if fragment in name:
            return name, fp32, mixed
    return name, None, None


def training_flops_per_image(stage: str, width: int) -> float:
    """FLOPs of one forward + backward pass of the stage's loss at width D, per training image.

    Counted by torch.utils.flop_counter on a CPU batch of 2 (matmuls and convolutions, fp32).
    """
    stage_budget = budget(stage, "full")
    model = build_model(stage, _with_width(stage_budget, width))
    schedule = course_schedule(stage_budget.num_steps)
    images = torch.rand(2, 1, 28, 28)
    labels = torch.arange(2)
    counter = FlopCounterMode(display=False)
    with counter:
        stage_loss(stage, schedule)(model, images, labels, None).backward()
    return counter.get_total_flops() / len(images)


def _with_width(stage_budget, width: int):
    return replace(stage_budget, num_hiddens=width)


def _timed(step, batch_size: int, warmup: int, steps: int, device: torch.device) -> Timing:
    """Run ``step()`` ``warmup`` times untimed (startup), then ``steps`` times timed."""
    started = time.perf_counter()
    for _ in range(warmup):
        step()
    synchronize(device)
    startup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds_per_step = (time.perf_counter() - started) / steps
    gpu_seconds = gpu_seconds_per_step(step, device, min(steps, 10))
    busy = None if gpu_seconds is None else min(1.0, gpu_seconds / seconds_per_step)
    return Timing(batch_size / seconds_per_step, startup, syncs_per_step(step, device), busy)


def syncs_per_step(step, device: torch.device, steps: int = 3) -> float | None:
    """Host syncs per call of ``step()`` (:class:`course_lib.host_syncs.HostSyncCounter` watching ``device``; on
    the CPU every would-be sync counts), compiled code run eagerly (``torch.compiler.set_stance("force_eager")``,
    where it exists) so that its Python-level syncs show."""
    stance = getattr(torch.compiler, "set_stance", None)
    try:
        with stance("force_eager") if stance else contextlib.nullcontext(), HostSyncCounter(device) as syncs:
            for _ in range(steps):
                step()
    except Exception as error:  # counting must not stop the benchmark
        print(f"  (host syncs not counted: {type(error).__name__}: {error})")
        return None
    return syncs.count / steps


def gpu_seconds_per_step(step, device: torch.device, steps: int = 10) -> float | None:
    """Seconds per call of ``step()`` during which the GPU runs something: the union of the intervals of the
    kernels, copies and sets that torch.profiler records on CUDA, over ``steps`` calls. ``None`` off CUDA."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        synchronize(device)
    intervals = [(event.time_range.start, event.time_range.end) for event in profiler.events()
                 if event.device_type == torch.autograd.DeviceType.CUDA]
    return union_length(intervals) / 1e6 / steps


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by the ``(start, end)`` intervals, overlaps counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def handout_loop(stage: str, width: int, batch_size: int, warmup: int, steps: int, device: torch.device,
                 workers: int) -> Timing:
    """The handout's loop: DataLoader + ToTensor, fp32, per-batch noise, Adam."""
    from torchvision.transforms import ToTensor

    stage_budget = budget(stage, "full")
    dataset = load_mnist(train=True)
    dataset.transform = ToTensor()
    loader = iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers))
    model = build_model(stage, _with_width(stage_budget, width)).to(device).train()
    schedule = course_schedule(stage_budget.num_steps).to(device)
    loss_fn = stage_loss(stage, schedule)
    optimizer = torch.optim.Adam(model.parameters(), lr=stage_budget.learning_rate)
    signed = value_range(stage) == "signed"

    def step():
        nonlocal loader
        with host_only():  # the DataLoader works on CPU tensors by design: its .item() calls wait for no GPU
            try:
                images, labels = next(loader)
            except StopIteration:
                loader = iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers))
                images, labels = next(loader)
        images, labels = images.to(device), labels.to(device)
        loss = loss_fn(model, images * 2 - 1 if signed else images, labels, None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _timed(step, batch_size, warmup, steps, device)


def course_lib_loop(stage: str, width: int, batch_size: int, warmup: int, steps: int, device: torch.device,
                    compile_model: bool, channels_last: bool, capture: bool = False) -> Timing:
    """course_lib's path: resident data, course_lib.training's precision policy, Adam of course_lib.optimizers,
    channels_last, optional compile of the model, optional capture of the step (course_lib.train_step.TrainStep, as
    train() does)."""
    stage_budget = budget(stage, "full")
    data = DeviceImages.from_dataset(load_mnist(train=True), device, value_range(stage))
    model = build_model(stage, _with_width(stage_budget, width)).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    schedule = course_schedule(stage_budget.num_steps).to(device)
    loss_fn = stage_loss(stage, schedule)
    forward_model = torch.compile(model) if compile_model else model
    optimizer = make_optimizer(model.parameters(), stage_budget.learning_rate, device)
    dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    train_step = TrainStep(forward_model, loss_fn, optimizer, scaler, dtype, capture=capture)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = data.batches(batch_size, generator)

    def step():
        nonlocal batches
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = data.batches(batch_size, generator)
            images, labels = next(batches)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        train_step(images, labels, generator)

    return _timed(step, batch_size, warmup, steps, device)


def _unguided(model: torch.nn.Module, schedule: DDPMSchedule, device: torch.device):
    """Sampling 40 digits with DDPM, as ``run(generator)``."""
    def run(g):
        return sampling.ddpm_sample(model, schedule, 40, generator=g, device=device)
    return run


def _guided(model: torch.nn.Module, schedule: DDPMSchedule, device: torch.device):
    """Sampling the digits 0-9 four times each with classifier-free guidance 5, as ``run(generator)``."""
    labels = torch.arange(10, device=device).repeat(4)

    def run(g):
        return sampling.cfg_sample(model, schedule, labels, 5.0, generator=g, device=device)
    return run


# The stages whose sampling is timed, and how each samples.
SAMPLERS = {"ddpm": _unguided, "cfg": _guided}


def sampling_seconds(width: int, num_steps: int, device: torch.device, compile_model: bool) -> dict[str, float]:
    """Seconds to sample 40 digits with ``num_steps`` DDPM steps: unguided and guided (2N forward passes).

    Untrained weights: the cost of sampling does not depend on them. One warm-up run first.
    """
    schedule = DDPMSchedule(num_steps).to(device)
    results = {}
    for name, sampler in SAMPLERS.items():
        model = build_model(name, _with_width(budget(name, "full"), width)).to(device)
        run = sampler(torch.compile(model) if compile_model else model, schedule, device)
        run(torch.Generator(device=device).manual_seed(0))
        synchronize(device)
        started = time.perf_counter()
        run(torch.Generator(device=device).manual_seed(1))
        synchronize(device)
        results[name] = time.perf_counter() - started
    return results


def _maybe(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=TRAINING_STAGES, default=list(DEFAULT_STAGES))
    parser.add_argument("--steps", type=int, default=50, help="timed optimizer steps per loop (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    parser.add_argument("--width", type=int, help="D for every stage (default: the assignment's, 128 / 64)")
    parser.add_argument("--batch", type=int, help="batch size for every stage (default: the assignment's)")
    parser.add_argument("--compile", action="store_true", help="also time course_lib's path with torch.compile")
    parser.add_argument("--capture", choices=("auto", "on", "off"), default="auto",
                        help="also time course_lib's captured step, as train() runs it (auto: on CUDA only)")
    parser.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                        help="channels_last memory format in course_lib's path (auto: on CUDA only)")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers of the handout loop (default 0, as in the handout)")
    parser.add_argument("--sampling-steps", type=int, default=300, help="DDPM steps of the sampling timing")
    parser.add_argument("--cpu-peak-tflops", type=float, help="the CPU's fp32 peak, for the fraction-of-peak column")
    return parser.parse_args(argv)


@dataclass
class Setup:
    """The device and what course_lib's path uses on it: the variants timed (label, compile, capture) and the peak
    TFLOP/s of each path (``None``: unknown)."""

    device: torch.device
    channels_last: bool
    variants: list[tuple[str, bool, bool]]
    handout_peak: float | None
    course_peak: float | None


def setup(args: argparse.Namespace) -> Setup:
    """Pick the device, print its line and the table's header."""
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and device.type == "cuda")
    name, peak_fp32, peak_mixed = device_peaks(device, args.cpu_peak_tflops)
    dtype = autocast_dtype(device)
    course_peak = peak_mixed if dtype is not None else peak_fp32
    print(f"Device: {name}; course_lib precision: {dtype or 'fp32'}; channels_last: {channels_last}; "
          f"torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up steps")

    capture = args.capture == "on" or (args.capture == "auto" and device.type == "cuda")
    variants = ([("course_lib", False, False)] + ([("course_lib+compile", True, False)] if args.compile else [])
                + ([("course_lib+capture", False, True)] if capture else []))
    header = (f"{'stage':<9}{'D':>4}{'batch':>6}  {'path':<19}{'images/s':>10}{'ratio':>7}{'startup s':>10}"
              f"{'GFLOP/img':>10}{'TFLOP/s':>9}{'% peak':>8}{'epoch s':>9}{'syncs/step':>11}{'GPU busy':>9}")
    print(header)
    return Setup(device, channels_last, variants, peak_fp32, course_peak)


def time_stage(stage: str, args: argparse.Namespace, bench: Setup) -> float:
    """Time the handout loop and each variant of course_lib's path on ``stage``, print their rows, and return the
    FLOPs of the stage's full budget at the assignment's width."""
    stage_budget = budget(stage, "full")
    width = args.width or stage_budget.num_hiddens
    batch_size = args.batch or stage_budget.batch_size
    flops = training_flops_per_image(stage, width)
    full_budget_flops = training_flops_per_image(stage, stage_budget.num_hiddens) * stage_budget.epochs * TRAIN_IMAGES
    rows = [("handout", handout_loop(stage, width, batch_size, args.warmup, args.steps, bench.device, args.workers),
             bench.handout_peak)]
    for label, compile_model, capture_step in bench.variants:
        rows.append((label, course_lib_loop(stage, width, batch_size, args.warmup, args.steps, bench.device,
                                            compile_model, bench.channels_last, capture_step), bench.course_peak))
    baseline = rows[0][1].images_per_second
    for label, timing, peak in rows:
        tflops = flops * timing.images_per_second / 1e12
        fraction = f"{100 * tflops / peak:.1f}" if peak else "n/a"
        print(f"{stage:<9}{width:>4}{batch_size:>6}  {label:<19}{timing.images_per_second:>10.0f}"
              f"{timing.images_per_second / baseline:>7.2f}{timing.startup_seconds:>10.1f}"
              f"{flops / 1e9:>10.3f}{tflops:>9.3f}{fraction:>8}"
              f"{timing.startup_seconds + TRAIN_IMAGES / timing.images_per_second:>9.0f}"
              f"{_maybe(timing.syncs_per_step, '.1f'):>11}{_maybe(timing.gpu_busy, '.0%'):>9}", flush=True)
    return full_budget_flops


def print_full_budget(stages: list[str], total_flops: float) -> None:
    """The FLOPs of the stages' full budgets and their time on a T4."""
    print(f"\nFull budget ({' + '.join(str(budget(s, 'full').epochs) for s in stages)} epochs of "
          f"{TRAIN_IMAGES:,} images, at the assignment's widths): {total_flops / 1e15:.2f} PFLOP of training")
    for precision, peak in T4_PEAK_TFLOPS.items():
        print(f"  T4 at 100% of its {precision} peak ({peak} TFLOP/s): {total_flops / peak / 1e12:.0f} s; "
              f"at 30%: {total_flops / (0.3 * peak) / 1e12:.0f} s")
    if set(stages) == set(DEFAULT_STAGES):
        print("  (the course's 6-minute goal needs "
              f"{100 * total_flops / 360 / (T4_PEAK_TFLOPS['fp16'] * 1e12):.0f}% of the T4's fp16 peak)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = setup(args)
    total_flops = sum(time_stage(stage, args, bench) for stage in args.stages)
    print_full_budget(args.stages, total_flops)

    width = args.width or budget("ddpm", "full").num_hiddens
    seconds = sampling_seconds(width, args.sampling_steps, bench.device, compile_model=False)
    print(f"\nSampling 40 digits, {args.sampling_steps} DDPM steps, D={width}: "
          f"unguided {seconds['ddpm']:.2f} s, guided (batch 2x40) {seconds['cfg']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
