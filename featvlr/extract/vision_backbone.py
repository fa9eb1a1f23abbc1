"""Raw images into patch tokens and pooled vectors with a local Hugging Face vision tower.

One image-encoding module for every raw-image route (``featvlr extract images`` and the
composed readers' ``clip_model``). A backbone is a local folder only: a transformers vision
model (CLIP / SigLIP / ViT / DINOv2 vision towers, a full CLIP or SigLIP model whose vision
tower is used, or a sentence-transformers CLIP folder) with its image processor's
``preprocessor_config.json``. Nothing is downloaded (``HF_HUB_OFFLINE`` is set), and no
torchvision is needed: images are decoded by Pillow and prepared by the processor's Pillow
backend.

What is kept of a forward pass:

* ``regions`` ``[B, P, D]``: the last hidden state's patch tokens, the class and register
  tokens dropped (P = (H / patch) x (W / patch)); a convolutional backbone's last feature
  map is flattened to its ``h x w`` grid cells.
* ``global`` ``[B, G]``: CLIP's projected ``image_embeds`` where the model has a projection,
  else the model's ``pooler_output`` (SigLIP's attention head, DINOv2's normed class token),
  else the class token (ViT: its tanh pooler is left out, classification checkpoints lack it).

Throughput: files are decoded and preprocessed in DataLoader workers into pinned memory;
batches go to the GPU when present and run under fp16 autocast there; the outputs of batch
``i`` are copied back while batch ``i + 1`` runs. A file that cannot be read is returned
as a ``(row, reason)`` pair, so the caller names it and either skips it or stops.

Example::

    bb = VisionBackbone("models/clip-vit-b32")
    for rows, regions, pooled, bad in bb.iter_encode(paths, batch_size=128, workers=8):
        ...                             # rows: positions in ``paths`` of the encoded images
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from featvlr.core.errors import InputError

__all__ = ["VisionBackbone", "resolve_backbone_folder", "decode_image"]

# Full (two-tower) models whose vision tower is loaded on its own.
_TOWERS = {"clip": "CLIPVisionModelWithProjection", "siglip": "SiglipVisionModel",
           "siglip2": "Siglip2VisionModel"}
_PREPROCESSING_KEYS = ("image_processor_type", "do_resize", "size", "resample", "do_center_crop", "crop_size",
                       "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                       "do_convert_rgb")


def resolve_backbone_folder(folder: str | os.PathLike) -> Path:
    """The folder holding the model's ``config.json``: ``folder`` itself, or the module of
    a sentence-transformers folder that holds one. Raises :class:`InputError` otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such backbone folder (expected a local Hugging Face vision model folder)")
    if (folder / "config.json").is_file():
        return folder
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(modules, f"not valid JSON ({exc})") from None
        for entry in entries if isinstance(entries, list) else []:
            sub = folder / str(entry.get("path", "")) if isinstance(entry, dict) else None
            if sub is not None and (sub / "config.json").is_file():
                return sub
    raise InputError(folder, "not a vision model folder: no config.json (Hugging Face) here or in a "
                             "sentence-transformers module")


def decode_image(path: str | os.PathLike):
    """Open and fully decode an image as RGB (grayscale, palette, CMYK and alpha converted).

    Raises :class:`InputError` naming the file when it is missing, not an image or truncated.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()                      # a truncated file fails here, not later
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(path, "no such image") from None
    except Exception as exc:               # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        raise InputError(path, f"cannot read the image ({str(exc) or type(exc).__name__})") from None


class _Files:
    """A map-style dataset: row -> ``(row, pixels [3, H, W] float32 | None, reason | None)``."""

    def __init__(self, paths: Sequence[Path], processor):
        self.paths = list(paths)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        try:
            image = decode_image(self.paths[row])
        except InputError as exc:
            return row, None, exc.problem
        pixels = self.processor(images=image, return_tensors="np")["pixel_values"][0]
        return row, np.ascontiguousarray(pixels, dtype=np.float32), None


def _collate(items):
    import torch

    good = [(r, x) for r, x, _ in items if x is not None]
    bad = [(r, why) for r, _, why in items if why is not None]
    rows = [r for r, _ in good]
    pixels = torch.from_numpy(np.stack([x for _, x in good])) if good else None
    return rows, pixels, bad


class VisionBackbone:
    """A frozen vision tower and its image processor, loaded offline from a folder.

    Args:
        folder: a local Hugging Face vision model folder (see the module docstring).
        device: ``"cuda"``, ``"cpu"``...; ``None`` picks CUDA when present.
        amp: run the forward pass under fp16 autocast (on CUDA only; ``None``: yes).

    Attributes:
        name: the folder's name; ``folder``: the folder loaded; ``dim``: the token width;
        ``global_dim``: the pooled vector's width; ``global_kind``: which output it is.
    """

    def __init__(self, folder: str | os.PathLike, device: str | None = None, amp: bool | None = None):
        from featvlr.extract.text_encoder import set_offline

        self.requested = Path(folder)
        self.folder = resolve_backbone_folder(folder)
        set_offline()
        import torch
        import transformers
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.amp = self.device.type == "cuda" and (amp is None or bool(amp))
        try:
            config = transformers.AutoConfig.from_pretrained(self.folder, local_files_only=True)
            cls_name, kwargs = self._tower(config)
            cls = getattr(transformers, cls_name) if cls_name else transformers.AutoModel
            self.model = cls.from_pretrained(self.folder, local_files_only=True, **kwargs)
        except InputError:
            raise
        except Exception as exc:           # transformers raises OSError/ValueError/KeyError/RuntimeError
            raise InputError(self.folder, f"cannot load the vision model: {_first_line(exc)}") from None
        try:
            self.processor = transformers.AutoImageProcessor.from_pretrained(
                self.folder, local_files_only=True, backend="pil")
        except Exception as exc:
            raise InputError(self.folder, f"cannot load the image processor (preprocessor_config.json): "
                                          f"{_first_line(exc)}") from None
        self.model.eval().requires_grad_(False).to(self.device)
        self.config = self.model.config
        self.name = self.requested.resolve().name
        self.patch_size = _pair(getattr(self.config, "patch_size", None))
        probe = self._probe()
        self.dim, self.global_dim, self.n_regions = probe["dim"], probe["global_dim"], probe["n_regions"]
        self.global_kind = probe["global_kind"]

    # -- loading ---------------------------------------------------------------------------
    @staticmethod
    def _tower(config) -> tuple[str | None, dict[str, Any]]:
        """The transformers class to load and its ``from_pretrained`` keywords."""
        if config.model_type in _TOWERS and hasattr(config, "vision_config"):
            vision = config.vision_config
            if config.model_type == "clip":
                vision.projection_dim = config.projection_dim
            return _TOWERS[config.model_type], {"config": vision}
        if hasattr(config, "vision_config") and not hasattr(config, "patch_size"):
            raise InputError(config.name_or_path, f"model type {config.model_type!r} is not a vision tower "
                                                  f"featvlr knows how to take apart ({', '.join(_TOWERS)})")
        if config.model_type == "vit":          # the pooler of a ViT checkpoint is often untrained
            return "ViTModel", {"add_pooling_layer": False}
        for arch in getattr(config, "architectures", None) or []:
            if arch.endswith(("Model", "ModelWithProjection")):
                return arch, {}
        return None, {}

    def _probe(self) -> dict[str, Any]:
        from PIL import Image

        pixels = self.processor(images=Image.new("RGB", (64, 48), (127, 127, 127)),
                                return_tensors="np")["pixel_values"]
        import torch

        regions, pooled = self.forward(torch.from_numpy(np.asarray(pixels, np.float32)))
        kind = getattr(self, "_global_kind", "class token")
        return {"dim": int(regions.shape[-1]), "global_dim": int(pooled.shape[-1]),
                "n_regions": int(regions.shape[1]), "global_kind": kind}

    # -- encoding --------------------------------------------------------------------------
    def preprocess(self, images) -> Any:
        """``pixel_values`` ``float32 [B, 3, H, W]`` (a tensor) of decoded RGB images."""
        import torch

        return torch.from_numpy(np.asarray(self.processor(images=list(images), return_tensors="np")
                                           ["pixel_values"], np.float32))

    def forward(self, pixels) -> tuple[Any, Any]:
        """``(regions [B, P, D], global [B, G])`` of preprocessed ``pixels``, on the device."""
        import torch

        pixels = pixels.to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out = self.model(pixel_values=pixels)
        hidden = out.last_hidden_state
        if hidden.ndim == 4:                       # a convolutional feature map [B, C, h, w]
            regions = hidden.flatten(2).transpose(1, 2)
        elif self.patch_size is not None:
            grid = (pixels.shape[-2] // self.patch_size[0]) * (pixels.shape[-1] // self.patch_size[1])
            regions = hidden[:, hidden.shape[1] - grid:]
        else:
            regions = hidden
        pooled, self._global_kind = None, "class token"
        for key, kind in (("image_embeds", "image_embeds (projected pooled output)"),
                          ("pooler_output", "pooler_output")):
            value = getattr(out, key, None)
            if value is not None:
                pooled, self._global_kind = value, kind
                break
        if pooled is None:
            pooled = hidden.mean((2, 3)) if hidden.ndim == 4 else hidden[:, 0]
        return regions, pooled.reshape(pooled.shape[0], -1)

    def loader(self, paths: Sequence[Path], batch_size: int = 64, workers: int = 0):
        """A DataLoader of ``(rows, pixels, bad)`` batches: decoding and preprocessing in
        ``workers`` processes, pinned memory on CUDA, in the order of ``paths``."""
        from torch.utils.data import DataLoader

        return DataLoader(_Files(paths, self.processor), batch_size=batch_size, shuffle=False,
                          num_workers=workers, collate_fn=_collate, pin_memory=self.device.type == "cuda",
                          prefetch_factor=4 if workers else None, persistent_workers=False)

    def iter_encode(self, paths: Sequence[Path], *, batch_size: int = 64, workers: int = 0,
                    dtype=np.float16, regions: bool = True
                    ) -> Iterator[tuple[list[int], np.ndarray | None, np.ndarray, list[tuple[int, str]]]]:
        """Encode image files in order: yields ``(rows, regions, global, bad)`` per batch.

        ``rows`` are the positions in ``paths`` of the images encoded in this batch (their
        ``regions [b, P, D]`` and ``global [b, G]`` in ``dtype``; ``regions`` is None when not
        asked for); ``bad`` lists ``(position, reason)`` of the files that could not be read.
        Non-finite outputs raise :class:`InputError` naming the image.
        """
        import torch

        torch_dtype = torch.float16 if np.dtype(dtype) == np.float16 else torch.float32
        pending = None
        for rows, pixels, bad in self.loader(paths, batch_size, workers):
            current = None
            if pixels is not None:
                reg, glob = self.forward(pixels)
                reg = reg.to(torch_dtype).to("cpu", non_blocking=True) if regions else None
                glob = glob.to(torch_dtype).to("cpu", non_blocking=True)
                event = None
                if self.device.type == "cuda":
                    event = torch.cuda.Event()
                    event.record()
                current = (rows, reg, glob, bad, event)
            elif bad:
                current = ([], None, None, bad, None)
            if pending is not None:
                yield self._finish(pending, paths)
            pending = current
        if pending is not None:
            yield self._finish(pending, paths)

    def _finish(self, item, paths) -> tuple[list[int], np.ndarray | None, np.ndarray, list[tuple[int, str]]]:
        rows, reg, glob, bad, event = item
        if event is not None:
            event.synchronize()
        if glob is None:
            return rows, None, np.zeros((0, self.global_dim), np.float32), bad
        reg_np = reg.numpy() if reg is not None else None
        glob_np = glob.numpy()
        for name, arr in (("tokens", reg_np), ("pooled vector", glob_np)):
            if arr is not None and not np.isfinite(arr).all():
                where = int(np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0][0])
                raise InputError(paths[rows[where]], f"the backbone gave NaN or inf image {name} for this "
                                                     f"image (with --dtype float16: overflow; try float32)")
        return rows, reg_np, glob_np, bad

    def provenance(self) -> dict[str, Any]:
        """The backbone's name, folder, outputs and preprocessing, for the cache's ``sources``."""
        prep = self.processor.to_dict()
        return {
            "name": self.name,
            "folder": str(self.folder.resolve()),
            "model_type": self.config.model_type,
            "class": type(self.model).__name__,
            "regions": f"patch tokens of last_hidden_state, class/register tokens dropped: [N, {self.n_regions}, "
                       f"{self.dim}]",
            "global": f"{self.global_kind} [N, {self.global_dim}]",
            "preprocessing": {k: prep[k] for k in _PREPROCESSING_KEYS if k in prep},
            "precision": "fp16 autocast" if self.amp else "fp32",
        }


def _pair(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
