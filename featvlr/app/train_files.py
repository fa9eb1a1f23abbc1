"""Application layer of ``featvlr train``: a run from config files.

Above the library (:mod:`featvlr.training.trainer` never imports this): it reads the config and its
overrides, picks the run folder, and builds the built-in demo cache first when a demo config
asks for it (``data.build_demo``) and the cache is missing.
"""
from __future__ import annotations

from pathlib import Path

from featvlr.config import Config, load_config
from featvlr.core import distributed as dist_utils
from featvlr.core.device import pick_device
from featvlr.core.errors import InputError
from featvlr.training.trainer import TrainResult, train


def maybe_build_demo(cfg: Config) -> None:
    """Build the demo cache named by ``data.cache`` when ``data.build_demo`` asks for it
    (rank 0 builds, the other ranks wait)."""
    cache = Path(cfg.data.cache)
    if cache.exists() or not cfg.data.build_demo:
        return
    from featvlr.app.demo import build_demo_caches

    if dist_utils.is_main():
        where = cache.resolve()
        if cache.is_absolute():
            print(f"data.cache {cache} does not exist", flush=True)
        else:
            print(f"data.cache {cache} is relative to the current folder: {where} does not exist", flush=True)
        print(f"the config asks for the demo data there (data.build_demo: true): building the demo dataset and its "
              f"caches in {where.parent} once (--set data.cache=PATH uses an existing cache instead)", flush=True)
        build_demo_caches(cache_dir=cache.parent, say=lambda text: print(text, flush=True))
    dist_utils.barrier()
    if not cache.exists():
        raise InputError(cache, "the demo build did not produce this cache (check data.cache in the config)")


def train_from_files(config: str | Path, overrides: list[str], out: str | Path | None, *, resume: bool = False
                     ) -> TrainResult:
    """``featvlr train``: load the config, choose the run folder, build the demo if asked, train."""
    cfg = load_config(config, overrides)
    if out is None:
        out = Path("runs") / (cfg.name or Path(config).stem)
    with dist_utils.process_group(pick_device(cfg.train.device).type):  # torchrun: one group for both steps
        maybe_build_demo(cfg)
        return train(cfg, out, resume=resume)
