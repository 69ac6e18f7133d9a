"""What a model costs beside how well it does: parameters, GFLOPs per image, images/s and peak memory.

FLOPs are those PyTorch's `torch.utils.flop_counter.FlopCounterMode` counts: matrix products, convolutions
and attention, 2 FLOPs per multiply-add; element-wise work (norms, activations, softmax) is not counted, as
in fvcore and the GFLOPs that papers quote. Throughput and memory are measured on the device the model was evaluated on, with the
threads torch uses there (`torch.get_num_threads()`), both recorded.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import sys
import time

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

BATCH_SIZE = 8
TIME_BUDGET_S = 1.0  # timed forwards stop once this much is spent (at least one, at most MAX_REPEATS)
MAX_REPEATS = 5
MIB = 2**20

_VISION = ("vision", "vision_model", "visual_projection")
_TEXT = ("text", "text_model", "text_projection")

# FlopCounterMode has formulas for the CUDA attention kernels but not for the CPU one that
# F.scaled_dot_product_attention dispatches to, so every SDPA model's attention would count 0 on CPU.
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                  lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v)}


def _attributes(owner, names: tuple[str, ...]) -> list[nn.Module]:
    return [module for name in names if isinstance(module := getattr(owner, name, None), nn.Module)]


def image_modules(model) -> list[nn.Module] | None:
    """The modules of the image path, found by the attribute names the encoders use: TIPSv2 teachers and
    students (`vision`), a student through projection heads (`student.vision` + the `heads` of the teacher space
    it is read in: a student of several teachers has a set per teacher), Hugging Face CLIP/SigLIP (`vision_model`,
    `visual_projection`), and wrappers whose whole `model` is an image encoder (timm, DINOv2). None when none is
    found: better no count than a guessed one."""
    student = getattr(model, "student", None)
    if isinstance(student, nn.Module):
        return _attributes(student, ("vision",)) + _attributes(getattr(model, "space", model), ("heads",)) or None
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and not _attributes(inner, _VISION + _TEXT):
        return [inner]
    return _attributes(inner if isinstance(inner, nn.Module) else model, _VISION) or None


def text_modules(model) -> list[nn.Module] | None:
    """The text tower's modules; [] for a model without usable text (no tokenizer, teacher space, DINOv2)."""
    if not getattr(model, "has_text", False):
        return []
    inner = getattr(model, "model", None)
    return _attributes(inner if isinstance(inner, nn.Module) else model, _TEXT) or None


def parameter_count(modules: list[nn.Module] | None) -> int | None:
    """Parameters of `modules`, each counted once (tied weights)."""
    if modules is None:
        return None
    unique = {id(p): p for module in modules for p in module.parameters()}
    return sum(p.numel() for p in unique.values())


def _pixels(batch: int, resolution: int, device: torch.device) -> torch.Tensor:
    return torch.full((batch, 3, resolution, resolution), 0.5, device=device)  # mid-grey: valid RGB in [0,1]


@torch.inference_mode()
def gflops_per_image(model, resolution: int, device: torch.device) -> float:
    """FLOPs of one `encode_image` of a (1, 3, R, R) input, in units of 1e9."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
        model.encode_image(_pixels(1, resolution, device))
    return counter.get_total_flops() / 1e9


def _forward(model, pixels: torch.Tensor):
    def forward():
        model.encode_image(pixels)
        if pixels.device.type == "cuda":
            torch.cuda.synchronize(pixels.device)  # CUDA launches are asynchronous: wait for the work
    return forward


@torch.inference_mode()
def images_per_s(model, pixels: torch.Tensor) -> float:
    """Images per second of `encode_image(pixels)`: the median of timed forwards after one warm-up (lazy
    initialisation, kernel selection), as many as fit TIME_BUDGET_S, between 1 and MAX_REPEATS."""
    forward = _forward(model, pixels)
    forward()
    times: list[float] = []
    while not times or (len(times) < MAX_REPEATS and sum(times) < TIME_BUDGET_S):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return len(pixels) / statistics.median(times)


def _resident_bytes(model, pixels: torch.Tensor) -> int:
    # Encoders that wrap modules without being one (a student in its teacher's space) expose both methods too.
    has_tensors = hasattr(model, "parameters") and hasattr(model, "buffers")
    tensors = itertools.chain(model.parameters(), model.buffers()) if has_tensors else ()
    return sum(t.numel() * t.element_size() for t in tensors) + pixels.numel() * pixels.element_size()


@contextlib.contextmanager
def _quiet_native_stderr():
    """Kineto (the profiler's backend) writes start/stop and device-probe lines straight to file descriptor 2,
    which would land in every evaluation's output; Python-level errors still propagate as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cpu_peak_bytes(forward) -> int:
    """The peak of the running sum of the profiler's CPU allocation (+) and free (-) records, in time order,
    over one forward (torch's CPU allocator keeps no statistics of its own)."""
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        forward()
    records = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    return max(itertools.accumulate((nbytes for _, nbytes in records), initial=0))


# https://pytorch.org/docs/stable/generated/torch.cuda.max_memory_allocated.html,
# https://pytorch.org/docs/stable/profiler.html (profile_memory)
PEAK_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated over one batch forward (weights and input resident)",
    "cpu": "parameters + buffers + input, plus the peak of the torch.profiler CPU allocation records over one "
           "batch forward",
}


@torch.inference_mode()
def peak_memory_mib(model, pixels: torch.Tensor) -> float:
    forward = _forward(model, pixels)
    if pixels.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pixels.device)
        forward()
        return torch.cuda.max_memory_allocated(pixels.device) / MIB
    return (_resident_bytes(model, pixels) + _cpu_peak_bytes(forward)) / MIB


def _graph_parameters(model) -> int | None:
    """An ONNX export's image-path parameters (a student in teacher space: its heads' view counts them)."""
    owner = getattr(model, "space", model)
    count = getattr(owner, "graph_parameters", None)
    return count() if count is not None else None


def model_cost(model, resolution: int, device: torch.device | str, batch_size: int = BATCH_SIZE) -> dict:
    """The cost of `model` (the encoder interface) at square inputs of side `resolution` on `device`.

    Parameter counts are of the image path (a student evaluated through its projection heads includes
    them) and the text tower; None where the modules could not be found. A model that runs outside torch
    (`runtime`: an onnxruntime graph) has its stored weights counted and its images/s measured; torch can count
    neither its FLOPs nor its allocations, so those are None, not zero."""
    device = torch.device(device)
    pixels = _pixels(batch_size, resolution, device)
    in_torch = getattr(model, "runtime", "torch") == "torch"
    return {
        "vision_params": parameter_count(image_modules(model)) if in_torch else _graph_parameters(model),
        "text_params": parameter_count(text_modules(model)),
        "resolution": resolution,
        "gflops_per_image": gflops_per_image(model, resolution, device) if in_torch else None,
        "batch_size": batch_size,
        "images_per_s": images_per_s(model, pixels),
        "peak_memory_mib": peak_memory_mib(model, pixels) if in_torch else None,
        "peak_memory_method": PEAK_METHODS["cuda" if device.type == "cuda" else "cpu"] if in_torch else None,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
