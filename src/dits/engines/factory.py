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
    if cfg.kind == "openai":
        from dits.engines.openai_server import OpenAIServerEngine

        return OpenAIServerEngine(
            model,
            base_urls=cfg.base_urls,
            server=cfg.server,
            served_model=cfg.served_model,
            reference=reference,
            max_concurrency=cfg.max_concurrency,
            timeout_s=cfg.timeout_s,
            adapter_dir=cfg.adapter_dir,
            scorer_options={"batch_size": cfg.batch_size, "device": cfg.device, "dtype": cfg.dtype},
        )
    from dits.engines.hf import HFEngine

    return HFEngine(
        model,
        batch_size=cfg.batch_size,
        device=cfg.device,
        dtype=cfg.dtype,
        kv_cache_mb=cfg.kv_cache_mb,
        reference=reference,
    )
