"""The server engine against the in-process engine on this machine: the same greedy two-agent dialogues
through `transformers serve` (``engine.kind=openai``) and with `HFEngine` (their ratio of wall times, and
whether the dialogues are identical), and what loading one probe adapter costs in process; with
``--vllm-url``, the same dialogues and adapters through a vLLM server too.

    python bench/engines.py --quick                   # 4 dialogues, 4 adapters
    python bench/engines.py --vllm-url http://127.0.0.1:8000/v1   # vLLM serving the same model, --enable-lora

Without ``--base-url`` the script starts `transformers serve MODEL` on a free port of 127.0.0.1 (its start
is not timed) and stops it at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    bench_config,
    elapsed,
    finish,
    make_parser,
    new_report,
    ratio,
    sized,
    summary_row,
)

NAME = "engines"
SIZES = {"dialogues": (16, 4), "adapters": (16, 4)}  # (full, quick)


def parse_args() -> argparse.Namespace:
    parser = make_parser(NAME, __doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, help="greedy dialogues (test tasks); full 16, quick 4")
    parser.add_argument("--adapters", type=int, help="probe adapters loaded and removed; full 16, quick 4")
    parser.add_argument("--base-url", help="a running transformers serve of --model (default: start one)")
    parser.add_argument("--vllm-url", help="a vLLM server of --model with runtime LoRA loading (optional)")
    args = parser.parse_args()
    sized(args, SIZES)
    return args


def dialogues(cfg: Any, engine: Any, count: int) -> tuple[list[Any], float]:
    """``count`` greedy dialogues of the config's system on the test split, and their wall time."""
    from dits.evaluate import evaluate
    from dits.runtime import build_system, take

    system = build_system(cfg)
    instances = take(system.task, "test", count)
    with elapsed() as seconds:
        records, _ = evaluate(system, instances, engine, model_label=cfg.model, split="test", seed=cfg.seed)
    return [(r["dialogues"], r["tokens"]) for r in records], seconds()


def adapter_seconds(engine: Any, cfg: Any, count: int) -> float:
    """Mean wall time of `add_adapter` + `remove_adapter` of a probe-shaped LoRA adapter (the config's
    LoRA settings, random weights), over ``count`` adapters."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from dits.engines.base import AdapterWeights

    lora = cfg.sft.lora_settings
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules, init_lora_weights=False
    )
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(engine.ref.base), config)
    weights = AdapterWeights(config, {k: v.clone() for k, v in get_peft_model_state_dict(model).items()})
    with elapsed() as seconds:
        for i in range(count):
            engine.add_adapter(f"probe_{i}", weights)
            engine.remove_adapter(f"probe_{i}")
    return seconds() / count


def main() -> None:
    args = parse_args()
    from dits.engines.hf import HFEngine
    from dits.engines.launch import transformers_serve
    from dits.engines.openai_server import OpenAIServerEngine
    from dits.models import resolve_model

    report = new_report(NAME, args)
    cfg = bench_config(args.model, args.overrides)
    folder = resolve_model(cfg.model).base
    server = None
    if args.base_url is None:
        Path(args.scratch_dir).mkdir(parents=True, exist_ok=True)
        server = transformers_serve(folder, Path(args.scratch_dir) / "engines-transformers-serve.log").start()
    url = args.base_url or server.url
    try:
        local = HFEngine(cfg.model, batch_size=cfg.engine.batch_size, kv_cache_mb=cfg.engine.kv_cache_mb)
        served = OpenAIServerEngine(cfg.model, base_urls=[url], server="transformers")
        here, hf_s = dialogues(cfg, local, args.dialogues)
        there, served_s = dialogues(cfg, served, args.dialogues)
    finally:
        if server is not None:
            server.kill()
    results: dict[str, Any] = {
        "dialogues": args.dialogues,
        "tokens": sum(tokens for _, tokens in here),
        "hf_seconds": hf_s,
        "transformers_serve_seconds": served_s,
        "served_over_hf": ratio(served_s, hf_s),
        "identical_dialogues": here == there,
        "hf_adapter_seconds": adapter_seconds(local, cfg, args.adapters),
    }
    if args.vllm_url:
        vllm = OpenAIServerEngine(cfg.model, base_urls=[args.vllm_url], server="vllm")
        through_vllm, vllm_s = dialogues(cfg, vllm, args.dialogues)
        results["vllm_seconds"], results["vllm_over_hf"] = vllm_s, ratio(vllm_s, hf_s)
        results["vllm_identical_dialogues"] = through_vllm == here
        results["vllm_adapter_seconds"] = adapter_seconds(vllm, cfg, args.adapters)
    report["config"] = {"engine": cfg.engine.model_dump(), "dialogue": cfg.dialogue.model_dump()}
    report["results"] = results
    report["summary"] = summary_rows(results)
    finish(NAME, args, report)
    if not results["identical_dialogues"]:
        print("FAILED: the served dialogues differ from the in-process ones", file=sys.stderr)
        sys.exit(1)


def summary_rows(r: dict[str, Any]) -> list[dict[str, str]]:
    rows = [
        summary_row("greedy dialogues (tokens)", f"{r['dialogues']} ({r['tokens']})"),
        summary_row("hf engine in process: s", r["hf_seconds"]),
        summary_row("transformers serve through engine.kind=openai: s", r["transformers_serve_seconds"]),
        summary_row("wall time served / in process", r["served_over_hf"]),
        summary_row("identical dialogues", r["identical_dialogues"], "required"),
        summary_row("adapter add + remove, in process: s per probe", r["hf_adapter_seconds"]),
    ]
    if "vllm_seconds" in r:
        rows += [
            summary_row("vLLM through engine.kind=openai: s", r["vllm_seconds"]),
            summary_row("wall time vLLM / in process", r["vllm_over_hf"]),
            summary_row("vLLM: identical dialogues", r["vllm_identical_dialogues"]),
            summary_row("adapter write + load + unload, vLLM: s per probe", r["vllm_adapter_seconds"]),
        ]
    return rows


if __name__ == "__main__":
    main()
