"""`featvlr demo`: make the built-in dataset, extract it, train ``vse`` briefly, evaluate it.

The whole job a new user runs first::

    featvlr demo

writes, under the current folder (``--out`` to choose another), ``features/demo_data`` (the
raw dataset in the SCAN precomp and CIRR layouts), ``features/demo.h5`` and
``features/demo_composed.h5`` (the caches: the paths every ``configs/demo_*.yaml`` names,
so ``featvlr train --config configs/demo_hrem.yaml`` afterwards reuses them), and
``runs/demo_vse`` (config, checkpoints, log, ``eval/test.json`` and plots; the folder
``featvlr train --config configs/demo_vse.yaml`` would use).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from featvlr.core.errors import InputError

DEMO_CACHE = "demo.h5"
DEMO_COMPOSED_CACHE = "demo_composed.h5"


def find_config(name: str) -> Path:
    """A shipped config by file name: the checkout's ``configs/`` or the installed copy."""
    candidates = [Path(__file__).resolve().parents[2] / "configs" / name,
                  Path(sys.prefix) / "share" / "featvlr" / "configs" / name]
    for path in candidates:
        if path.exists():
            return path
    raise InputError(candidates[0], "shipped config not found (is featvlr installed from its checkout?)")


def _check_same_generation(data: Path, wanted: dict[str, Any]) -> None:
    """An existing demo folder is reused only when it was generated with the parameters asked for."""
    from featvlr.demo import load_demo_meta

    have = load_demo_meta(data).get("params", {})
    differ = [f"{k}={have.get(k)!r} (asked {v!r})" for k, v in wanted.items() if have.get(k) != v]
    if differ:
        raise InputError(data, "holds a demo dataset generated with other parameters: " + ", ".join(differ)
                         + "; choose another output folder (its caches were made from that dataset)")


def build_demo_caches(cache_dir: str | Path = "features", *, seed: int = 0, progress: bool = True,
                      data_dir: str | Path | None = None, say=None,
                      params: dict[str, Any] | None = None) -> dict[str, Path]:
    """Generate the demo dataset (if missing) and extract its caches (if missing).

    ``params`` are further generator parameters (sizes, ``visual_noise``; see
    :data:`featvlr.demo.DEMO_DEFAULTS`) for a differently configured synthetic dataset.
    ``say`` (e.g. ``print``) is told each stage as it starts. Returns the paths of ``data``,
    ``cache`` (cross-modal) and ``composed_cache``.
    """
    from featvlr.core.interrupts import StopSignals, interrupted, signal_of

    cache_dir = Path(cache_dir)
    data = Path(data_dir) if data_dir is not None else cache_dir / "demo_data"
    targets = [cache_dir, data, cache_dir / DEMO_CACHE, cache_dir / DEMO_COMPOSED_CACHE]
    existed = {path: path.exists() for path in targets}
    with StopSignals("raise"):
        try:
            return _build_demo_caches(cache_dir, data, seed=seed, progress=progress, say=say or (lambda text: None),
                                      params=params)
        except KeyboardInterrupt as exc:
            raise interrupted(signal_of(exc), _remove_unfinished(targets, existed)) from None


def _remove_unfinished(targets: list[Path], existed: dict[Path, bool]) -> str:
    """Remove what an interrupted demo build created (the folders only when it created them and
    they hold nothing else); the sentence that says what was removed and what was left."""
    import shutil

    from featvlr.core.fileio import partial_name

    cache_dir, data, *caches = targets
    removed, left = [], []
    for path in [data, *caches]:
        for partial in (path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")):
            if partial.is_dir():
                shutil.rmtree(partial, ignore_errors=True)
            elif partial.exists():
                partial.unlink(missing_ok=True)
        for partial in path.parent.glob(partial_name(path).name):
            partial.unlink(missing_ok=True)
        if existed[path]:
            left.append(str(path))
        elif path.exists():
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(str(path))
    if not existed[cache_dir] and cache_dir.is_dir() and not any(cache_dir.iterdir()):
        cache_dir.rmdir()
        removed.append(str(cache_dir))
    message = "the demo build stopped before its caches were complete; "
    message += f"removed what it had written ({', '.join(removed)})" if removed else "it had written nothing to keep"
    if left:
        message += f"; left what was there before ({', '.join(left)})"
    return message + "; run the command again to build it"


def _build_demo_caches(cache_dir: Path, data: Path, *, seed: int, progress: bool, say,
                       params: dict[str, Any] | None) -> dict[str, Path]:
    from featvlr.demo import demo_is_complete, make_demo_dataset
    from featvlr.extract.composed import extract_composed
    from featvlr.extract.precomp import extract_precomp

    if not demo_is_complete(data):
        say(f"generating the demo dataset in {data}")
        make_demo_dataset(data, seed=seed, overwrite=data.exists(), **(params or {}))
    else:
        _check_same_generation(data, {"seed": seed, **(params or {})})
    cache = cache_dir / DEMO_CACHE
    if not cache.exists():
        say(f"extracting {cache} (captions through the bundled all-MiniLM-L6-v2)")
        extract_precomp(data, cache, splits=["train", "dev", "test"], dtype="float32", progress=progress)
    composed = cache_dir / DEMO_COMPOSED_CACHE
    cirr = data / "cirr"
    if not composed.exists() and cirr.exists():
        aug = cirr / "image_features_aug.npz"
        say(f"extracting {composed}")
        extract_composed("cirr", cirr, composed, image_features=cirr / "image_features.npz",
                         aug_features=aug if aug.exists() else None, progress=progress)
    return {"data": data, "cache": cache, "composed_cache": composed}


# The options of `featvlr demo` and the config keys they set: an error names the option typed.
_DEMO_OPTIONS = {"train.epochs": "--epochs", "train.seed": "--seed"}


def demo_config(out: str | Path = ".", *, epochs: int | None = None, seed: int = 0,
                overrides: list[str] | None = None, progress: bool = True):
    """The resolved ``configs/demo_vse.yaml`` of a demo under ``out``, checked before any work.

    A bad ``--epochs`` or ``--seed`` is reported under that option's name, a bad ``--set``
    under ``--set``, and an ``out`` that is a file as ``--out``."""
    from featvlr.config import load_config
    from featvlr.core.errors import ConfigError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "--out: is a file, not a folder")
    cache = out / "features" / DEMO_CACHE
    sets = [f"data.cache={cache}", f"train.seed={seed}", f"train.progress={str(progress).lower()}"]
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    user = list(overrides or [])
    try:
        return load_config(find_config("demo_vse.yaml"), sets + user)
    except ConfigError as exc:
        option = _DEMO_OPTIONS.get(exc.key or "")
        if option and not any(text.split("=", 1)[0].strip() == exc.key for text in user):
            message = str(exc)
            for prefix in (f"--set {exc.key}: ", f"{exc.key}: "):
                message = message[len(prefix):] if message.startswith(prefix) else message
            raise ConfigError(f"{option}: {message}", key=exc.key) from None
        raise


def run_demo(out: str | Path = ".", *, epochs: int | None = None, seed: int = 0,
             overrides: list[str] | None = None, progress: bool = True, say=None) -> dict[str, Any]:
    """Check the options, then build, train and evaluate; returns the test results and where they are."""
    from featvlr.training.trainer import train

    out = Path(out)
    cfg = demo_config(out, epochs=epochs, seed=seed, overrides=overrides, progress=progress)
    run_dir = out / "runs" / "demo_vse"
    resume = (run_dir / "ckpt" / "last.pt").exists()
    if resume:
        _check_demo_resume(run_dir, cfg, epochs, list(overrides or []))
    paths = build_demo_caches(out / "features", seed=seed, progress=progress, data_dir=out / "features" / "demo_data",
                              say=say)
    cfg.data.cache = str(paths["cache"])
    if say is not None:
        say(f"{'resuming' if resume else 'training'} vse in {run_dir} ({cfg.train.epochs} epochs), then "
            "evaluating the test split")
    result = train(cfg, run_dir, resume=resume)
    return {"paths": paths, "run_dir": run_dir, "result": result}


def _check_demo_resume(run_dir: Path, cfg, epochs: int | None, overrides: list[str]) -> None:
    """Before any work: a finished (or stopped) demo run is resumed only with at least the
    epochs it has done, and with the config it was trained with. Fewer epochs are refused
    under the option that asked for them (``--epochs 4``, ``--set train.epochs=4``)."""
    from featvlr.config.provenance import check_run_config
    from featvlr.core.errors import ConfigError
    from featvlr.training.guard import saved_state

    done, _ = saved_state(run_dir)
    wanted = cfg.train.epochs
    if wanted < done:
        typed = next((f"--set {text.strip()}" for text in reversed(overrides)
                      if text.split("=", 1)[0].strip() == "train.epochs"), None)
        if typed is None:
            typed = f"--epochs {epochs}" if epochs is not None else f"{find_config('demo_vse.yaml')}: train.epochs"
        raise ConfigError(f"{typed}: {run_dir} has done {done} epochs; resuming it to {wanted} would describe it "
                          f"wrongly (ask for {done} or more, or give another --out)", key="train.epochs")
    check_run_config(run_dir, cfg, resume=True, done_epochs=done)
