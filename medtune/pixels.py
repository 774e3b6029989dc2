"""Images reach the model as 8-bit pixels at its input size; the model's device rescales and normalises them.

Why: transformers' PIL image processor spends ~50 ms of one core on a 1,024 px film at MedGemma's 896 px
(benchmarks/input_pipeline.md): PIL's resize of the RGB copy of a grey film, float32 rescaling and
normalisation of 2.4 M values, numpy copies. On a GPU that made evaluation wait for the CPU. Here the CPU
decodes and, where the stored size is not the model's, resizes with torch's 8-bit antialiased kernel (the
processor's filter; a grey film as one channel, a third of the work); the batch travels as uint8 (a quarter
of float32's bytes) and the vision tower's device turns it into the processor's float values in microseconds.

Same inputs, within resampling noise: identical to the processor's values where nothing is resized or the
image is enlarged by a whole factor (CRC's 224 px tiles to 896), within one 8-bit level where it is reduced,
within two where it is enlarged by a fraction, 0.1 level on average (tests/test_pixels.py, on each stand-in).

One path: the training collator and evaluation both take their processor from `model_ready_inputs`, which also
sets up the model's side, so that what is trained is what is evaluated and neither half can be had alone.
"""
from __future__ import annotations

from typing import Any

from medtune.errors import MedtuneError
from medtune.model import vision_tower

# PIL's filters (transformers' PILImageResampling) that torch's 8-bit kernel reproduces
TORCH_MODES = {2: "bilinear", 3: "bicubic"}  # BILINEAR (MedGemma's), BICUBIC (SigLIP's)
PROCESSOR_STEPS = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")  # what this module does instead


def unsupported_reason(image_processor) -> str | None:
    """Why the image processor's work cannot be done here (then the processor does it, as it always did)."""
    size = getattr(image_processor, "size", None) or {}
    if not (size.get("height") and size.get("width")):
        return f"size {size} is not a fixed height x width"
    if getattr(image_processor, "do_pan_and_scan", False):
        return "pan-and-scan crops"
    resample = getattr(image_processor, "resample", None)
    if not isinstance(resample, int) or int(resample) not in TORCH_MODES:
        return f"resampling filter {resample!r}"
    return None


class ModelPixels:
    """A PIL image -> uint8 tensor (3, H, W) at the model's input size, as the image processor would resize it.

    Picklable: it runs in the DataLoader's worker processes."""

    def __init__(self, image_processor):
        self.height, self.width = image_processor.size["height"], image_processor.size["width"]
        self.resize = bool(image_processor.do_resize)
        self.mode = TORCH_MODES[int(image_processor.resample)]

    def __call__(self, image) -> Any:
        import numpy as np
        import torch
        from torch.nn.functional import interpolate
        from transformers.image_transforms import convert_to_rgb

        if image.mode not in ("L", "RGB"):
            image = convert_to_rgb(image)  # the processor's own conversion (alpha over white, palettes, ...)
        pixels = torch.from_numpy(np.array(image))  # a copy torch may own (PIL's buffer is read-only)
        # channels first; a grey film stays one channel until the end: resizing it costs a third of RGB
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        if self.resize and tuple(pixels.shape[1:]) != (self.height, self.width):
            # torch's 8-bit antialiased kernel: PIL's filter and fixed-point rounding, 2.6x faster than PIL's
            # resize on an RGB tile (the bound on the difference: tests/test_pixels.py)
            pixels = interpolate(pixels[None].contiguous(), size=(self.height, self.width), mode=self.mode,
                                 antialias=True)[0]
        return pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels


def model_ready(pixel_values):
    """The batch's pixel values, checked to be what `ModelPixels` made: uint8 (the vision tower normalises
    only uint8; float values here would mean the image processor did work it was told not to do)."""
    import torch

    if pixel_values.dtype != torch.uint8:
        raise MedtuneError(f"the image processor turned model-ready pixels into {pixel_values.dtype}: "
                           "please report this with your transformers version")
    return pixel_values


class PixelNormalizer:
    """On the model's device: uint8 pixels -> the image processor's float values (rescaled, normalised)."""

    def __init__(self, image_processor):
        p = image_processor
        scale = p.rescale_factor if p.do_rescale else 1.0
        channels = lambda v: [float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3)]  # noqa: E731
        mean = channels(p.image_mean) if p.do_normalize else [0.0] * 3
        std = channels(p.image_std) if p.do_normalize else [1.0] * 3
        # (x * scale - mean) / std as one multiply and one add per channel
        self.multiply = [scale / s for s in std]
        self.add = [-m / s for m, s in zip(mean, std)]
        self.cpu_buffer = None

    def __call__(self, pixels):
        import torch

        add = torch.tensor(self.add, device=pixels.device).view(1, -1, 1, 1)
        # float32 as the processor computes it, whatever the model's dtype (its patch embedding casts), in place
        # after the one conversion: on a CPU each pass over a batch of 896 px images costs milliseconds an image
        values = self._float_copy(pixels)
        if len(set(self.multiply)) == 1:  # one std for every channel (MedGemma's, SigLIP's): a fused pass,
            return torch.add(add, values, alpha=self.multiply[0], out=values)  # 2.0 ms an image vs 2.9 (1 core)
        return values.mul_(torch.tensor(self.multiply, device=pixels.device).view(1, -1, 1, 1)).add_(add)

    def _float_copy(self, pixels):
        import torch

        if pixels.device.type != "cpu" or torch.is_grad_enabled():
            return pixels.float()
        # Evaluating on a CPU: a fresh float tensor of a batch (150 MB at 16 x 896 px) costs its page faults,
        # 5 ms an image (benchmarks/input_pipeline.md). Without autograd nothing keeps the values past the
        # tower's forward, so one buffer serves every batch. (A GPU's caching allocator already reuses memory.)
        n, shape = pixels.shape[0], tuple(pixels.shape[1:])
        if self.cpu_buffer is None or tuple(self.cpu_buffer.shape[1:]) != shape or self.cpu_buffer.shape[0] < n:
            self.cpu_buffer = torch.empty((n, *shape), dtype=torch.float32)
        return self.cpu_buffer[:n].copy_(pixels)


def _normalize_uint8_pixels(tower, args, kwargs):
    """The vision tower's pre-forward hook: uint8 pixel values (positional or `pixel_values=`) normalised."""
    import torch

    if args and args[0].dtype == torch.uint8:
        return (tower.medtune_pixel_normalizer(args[0]),) + args[1:], kwargs
    pixels = kwargs.get("pixel_values")
    if pixels is not None and pixels.dtype == torch.uint8:
        return args, {**kwargs, "pixel_values": tower.medtune_pixel_normalizer(pixels)}
    return None  # float pixel values: the image processor's own, as they are


def model_ready_inputs(model, processor):
    """The processor for collators that feed `model`: images in as `ModelPixels` tensors, pixel values out as
    uint8, with the model's vision tower set up to normalise them on its device. When the image processor does
    something this cannot (pan-and-scan, another filter) or the model has no vision tower, `processor` itself.

    Returns (processor, pixels): `pixels` turns a PIL image into what the returned processor takes (None: the
    image as it is). The given processor is left as it is: it is the one saved with the adapter."""
    import copy

    image_processor = getattr(processor, "image_processor", None)
    tower = vision_tower(model)
    if image_processor is None or tower is None or unsupported_reason(image_processor):
        return processor, None
    if not hasattr(tower, "medtune_pixel_normalizer"):  # once per model (evaluation calls this per split)
        # a pre-hook (PyTorch's way to change a module's inputs) rather than a new forward: it composes with
        # medtune.model's forward routing and DeepSpeed's parameter hooks
        tower.medtune_pixel_normalizer = PixelNormalizer(image_processor)
        tower.register_forward_pre_hook(_normalize_uint8_pixels, with_kwargs=True)
    ready = copy.copy(processor)
    ready.image_processor = copy.copy(image_processor)
    for step in PROCESSOR_STEPS:
        setattr(ready.image_processor, step, False)
    return ready, ModelPixels(image_processor)
