"""`featvlr extract`: cache frozen features of a dataset the user has on disk.

Sub-commands are thin wrappers over :func:`featvlr.extract.precomp.extract_precomp`,
:func:`featvlr.extract.images.extract_images` and :func:`featvlr.extract.composed.extract_composed`.
Ctrl-C or SIGTERM stops an extract with one line saying that it left nothing behind (the cache
is only renamed into place when complete).
"""
from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

extract_app = typer.Typer(
    help=(
        "Cache frozen features of a dataset into one HDF5 file (features/<name>.h5 by default).\n\n"
        "`precomp`: SCAN/BUTD region features with captions (Flickr30K, COCO). "
        "`images`: raw images and a Karpathy split JSON through a local vision backbone. "
        "`composed`: CIRR, FashionIQ or Shoes composed-retrieval triplets."
    ),
    no_args_is_help=True,
    rich_markup_mode=None,
)


class Dtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


class RougeTokens(str, Enum):
    teran = "teran"
    whitespace = "whitespace"


class Restval(str, Enum):
    skip = "skip"
    train = "train"
    split = "split"


class Dataset(str, Enum):
    cirr = "cirr"
    fashioniq = "fashioniq"
    shoes = "shoes"


def _command_line() -> str:
    return "featvlr " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _interruptible(out: Path, run):
    """``run()``; SIGINT/SIGTERM end it with one line saying that nothing was left behind."""
    from featvlr.core.interrupts import StopSignals, interrupted, signal_of

    existed = out.exists()
    with StopSignals("raise"):
        try:
            return run()
        except KeyboardInterrupt as exc:
            partial = out.with_name(out.name + ".partial")
            if partial.exists():  # the writer removes it; make sure
                partial.unlink()
            kept = f"{out} is unchanged" if existed else f"{out} was not created"
            raise interrupted(signal_of(exc), f"extract stopped before the cache was complete; it left "
                              f"nothing behind ({kept}, no partial file remains)") from None


def _split_list(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return parts or None


@extract_app.command("precomp")
def precomp(
    root: Path = typer.Option(..., "--root", help="Folder with {split}_ims.npy [N, R, D] and {split}_caps.txt "
                                                  "(5 lines per image), optional {split}_ids.txt."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache to write. Default: features/<basename of root>.h5."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated splits, e.g. train,dev,test. "
                                                                "Default: every {split}_ims.npy in ROOT."),
    text_model: Optional[Path] = typer.Option(None, "--text-model", help="Local sentence-transformers or Hugging "
                                              "Face BERT folder. Default: all-MiniLM-L6-v2 (384-d)."),
    dtype: Dtype = typer.Option(Dtype.float16, "--dtype", help="Storage type of region and text features."),
    relevance: str = typer.Option("compute", "--relevance", help="Caption x image relevance of the evaluation "
                                  "splits (all but train): 'compute' (TERAN ROUGE-L), 'none', a TERAN or RVLR "
                                  "relevance FILE for the one evaluation split, or SPLIT=FILE|compute|none,...; "
                                  "SPLIT:KIND=FILE imports another kind, e.g. test:spice=FILE (TERAN's SPICE)."),
    rouge_tokens: RougeTokens = typer.Option(RougeTokens.teran, "--rouge-tokens", help="Tokens of the computed "
                                             "ROUGE-L: 'teran' (lower-case, split on single spaces, as TERAN's "
                                             "published files) or 'whitespace' (split on any run of whitespace)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Captions per text-encoder forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="Text-encoder device (cuda, cpu...). Default: CUDA "
                                                                "when present."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache (kept until the new one "
                                                              "is complete)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """SCAN/BUTD precomp features (Flickr30K, COCO): regions, caption tokens, pooled vectors, relevance.

    Example: featvlr extract precomp --root data/f30k_precomp --out features/f30k.h5
    """
    from featvlr.extract.precomp import default_out_path, extract_precomp
    from featvlr.retrieval.relevance import ROUGE_TOKENS

    path = _interruptible(out or default_out_path(root), lambda: extract_precomp(
        root, out, splits=_split_list(splits), text_model=text_model, dtype=dtype.value, overwrite=overwrite,
        relevance=relevance, batch_size=batch_size, device=device, progress=progress, command=_command_line(),
        rouge_split_on=ROUGE_TOKENS[rouge_tokens.value]))
    typer.echo(f"wrote {path}")


@extract_app.command("images")
def images(
    images_dir: Path = typer.Option(..., "--images", help="The image folder (<images>/<filepath>/<filename>, or "
                                                          "<images>/<filename>)."),
    annotations: Path = typer.Option(..., "--annotations", help="Karpathy split JSON (dataset_flickr30k.json, "
                                     "dataset_coco.json): images[].filename, filepath, split, sentences[].raw."),
    backbone: Path = typer.Option(..., "--backbone", help="Local Hugging Face vision model folder (CLIP, SigLIP, "
                                  "ViT, DINOv2 vision tower, or a full CLIP/SigLIP model) with its "
                                  "preprocessor_config.json. Nothing is downloaded."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache to write. Default: features/<name>.h5 from "
                                                           "dataset_<name>.json."),
    restval: Restval = typer.Option(Restval.skip, "--restval", help="COCO's restval images: skip them, join them "
                                    "to train (the RC training set), or keep them as a split of their own."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated splits: train,dev,test (Karpathy "
                                                                "'val' is dev). Default: all."),
    text_model: Optional[Path] = typer.Option(None, "--text-model", help="Local sentence-transformers or Hugging "
                                              "Face BERT folder. Default: all-MiniLM-L6-v2 (384-d)."),
    dtype: Dtype = typer.Option(Dtype.float16, "--dtype", help="Storage type of image and text features."),
    relevance: str = typer.Option("compute", "--relevance", help="As for `extract precomp`: 'compute', 'none', a "
                                  "FILE for the one evaluation split, or SPLIT=FILE|compute|none,..."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Leave out missing or unreadable images (and their "
                                  "captions), name and count them, instead of stopping with exit status 2."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per backbone forward pass."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Processes decoding and preprocessing "
                                          "images. Default: up to 8, one core left free."),
    device: Optional[str] = typer.Option(None, "--device", help="Backbone and text-encoder device. Default: CUDA "
                                                                "when present (fp16 autocast there)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache (kept until the new one "
                                                              "is complete)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Raw images through a local vision backbone: patch tokens, pooled vector, captions, relevance.

    Example: featvlr extract images --images data/flickr30k-images --annotations
    data/dataset_flickr30k.json --backbone models/clip-vit-base-patch32 --out features/f30k_clip.h5
    """
    from featvlr.extract.images import default_out_path, extract_images

    path = _interruptible(out or default_out_path(annotations), lambda: extract_images(
        images_dir, annotations, backbone, out, restval=restval.value, splits=_split_list(splits),
        text_model=text_model, dtype=dtype.value, relevance=relevance, skip_bad=skip_bad, batch_size=batch_size,
        workers=workers, device=device, overwrite=overwrite, progress=progress, command=_command_line()))
    typer.echo(f"wrote {path}")


@extract_app.command("composed")
def composed(
    dataset: Dataset = typer.Option(..., "--dataset", help="Which JSON layout ROOT holds."),
    root: Path = typer.Option(..., "--root", help="The dataset folder (cirr/, fashionIQ_dataset/, shoes/) or its "
                                                  "parent."),
    out: Optional[Path] = typer.Option(None, "--out", help="Cache to write. Default: features/<dataset>.h5."),
    image_features: Optional[Path] = typer.Option(None, "--image-features", help="Global image features by name: "
                                                  ".npy [N, Dg] with --image-names, or .npz / .h5 keyed by name "
                                                  "(or holding 'names' + 'features')."),
    image_names: Optional[Path] = typer.Option(None, "--image-names", help="Names of the .npy rows: one per line, "
                                               "or a JSON list."),
    aug_features: Optional[Path] = typer.Option(None, "--aug-features", help="K augmented views per reference "
                                                "image, [N, K, Dg], keyed like --image-features."),
    clip_model: Optional[Path] = typer.Option(None, "--clip-model", help="Local sentence-transformers CLIP folder: "
                                              "encodes the raw images (without --image-features) and the texts "
                                              "(without --text-model)."),
    backbone: Optional[Path] = typer.Option(None, "--backbone", help="Local vision model folder (as for `extract "
                                            "images`) encoding the raw images into its pooled vector."),
    images: Optional[Path] = typer.Option(None, "--images", help="Raw image folder for --clip-model or --backbone. "
                                          "Default: the dataset's own image folder."),
    text_model: Optional[Path] = typer.Option(None, "--text-model", help="Text encoder folder. Default: the CLIP "
                                              "text tower with --clip-model, else all-MiniLM-L6-v2."),
    splits: Optional[str] = typer.Option(None, "--splits", help="Comma-separated base splits (train,val,test1...). "
                                                                "Default: all found."),
    dtype: Dtype = typer.Option(Dtype.float32, "--dtype", help="Storage type of the features."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Texts or images per forward pass."),
    device: Optional[str] = typer.Option(None, "--device", help="Encoder device. Default: CUDA when present."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing cache."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """CIRR, FashionIQ or Shoes triplets with global image features and modifier-text vectors.

    Example: featvlr extract composed --dataset cirr --root data/cirr_dataset
    --image-features clip_rn50x4.npz --out features/cirr.h5
    """
    from featvlr.extract.composed import extract_composed

    path = _interruptible(out or Path("features") / f"{dataset.value}.h5", lambda: extract_composed(
        dataset.value, root, out, image_features=image_features, image_names=image_names,
        aug_features=aug_features, clip_model=clip_model, backbone=backbone, images_dir=images, text_model=text_model,
        dtype=dtype.value, overwrite=overwrite, progress=progress, splits=_split_list(splits),
        batch_size=batch_size, device=device, command=_command_line()))
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add `featvlr extract precomp|images|composed` to the app."""
    app.add_typer(extract_app, name="extract")
