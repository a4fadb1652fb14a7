"""Build the engine a config asks for."""

from __future__ import annotations

from dits.config import EngineConfig
from dits.engines.base import Engine


def make_engine(cfg: EngineConfig, model: str, reference: str | None = None) -> Engine:
    """An engine serving ``model`` (a built-in name, folder, adapter folder or hub id); ``reference`` is
    the frozen model that scores readability when ``model`` is a fully fine-tuned policy."""
    if cfg.kind == "fake":
        from dits.engines.fake import FakeEngine

        return FakeEngine()
    from dits.engines.hf import HFEngine

    return HFEngine(
        model,
        batch_size=cfg.batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        kv_cache_mb=cfg.kv_cache_mb,
        reference=reference,
    )
