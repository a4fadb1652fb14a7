"""``distributed.train_launcher``: SFT and DPO under ``accelerate launch`` (2 CPU processes over gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dits.config import DistributedConfig, TrainConfig
from dits.engines.base import GenerationRequest, SamplingParams
from dits.engines.hf import HFEngine
from dits.errors import DitsError
from dits.mas.dialogue import Dialogue
from dits.models import ModelRef, resolve_model
from dits.search.pairs import PreferencePair
from dits.train.common import LOG_FILE, RESULT_FILE
from dits.train.launch import train
from dits.train.records import dpo_rows, sft_rows
from train_support import INSTANCE, TURNS

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
CFG = TrainConfig(learning_rate=1e-2, epochs=1, batch_size=2, warmup_ratio=0.0, lr_scheduler="constant")
ACCELERATE = DistributedConfig(train_launcher="accelerate", num_processes=2)


def sft_data() -> list[dict]:
    return sft_rows(Dialogue("q1", TURNS), INSTANCE, demonstrate=False) * 4  # 8 rows


def test_a_missing_accelerate_config_is_one_line_naming_the_key(tiny_model, tmp_path) -> None:
    dist = DistributedConfig(train_launcher="accelerate", accelerate_config=str(tmp_path / "zero2.yaml"))
    with pytest.raises(DitsError, match="distributed.accelerate_config .* does not exist"):
        train("sft", resolve_model(tiny_model), sft_data(), CFG, tmp_path / "out", seed=0, dist=dist)
    assert not list(tmp_path.iterdir())  # no job file left behind


@pytest.mark.slow
def test_accelerate_trains_sft_then_dpo_on_two_processes_and_saves_loadable_adapters(
    tiny_model, tmp_path
) -> None:
    base = resolve_model(tiny_model)
    sft = train("sft", base, sft_data(), CFG, tmp_path / "sft", seed=0, dist=ACCELERATE)
    # data parallel: each step averages 2 processes x 2 rows, so 8 rows take 2 steps (4 in one process)
    assert (sft.examples, sft.steps, len(sft.losses)) == (8, 2, 2)
    assert json.loads((sft.output / RESULT_FILE).read_text())["steps"] == 2
    assert len((sft.output / LOG_FILE).read_text().splitlines()) == 2
    assert resolve_model(str(sft.output)) == ModelRef(base.base, sft.output)

    prompt = [{"role": "user", "content": "Who directed Film X?"}]
    pairs = [
        PreferencePair(f"p{i}", "t", 0, "q1", "alice", prompt, "<A>Ann Lee</A>", "No idea.", 1.0, 0.0, {})
        for i in range(4)
    ]
    start = resolve_model(str(sft.output))
    dpo = train("dpo", start, dpo_rows(pairs), CFG, tmp_path / "dpo", seed=0, dist=ACCELERATE)
    assert (dpo.examples, dpo.steps) == (4, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpo", "sft"]  # no work or job files left

    engine = HFEngine(str(dpo.output), batch_size=2)
    (completion,) = engine.generate([GenerationRequest(prompt)], SamplingParams(max_new_tokens=4))[0]
    assert completion.num_tokens > 0


@pytest.mark.slow
def test_a_failed_launch_is_one_line(tiny_model, tmp_path: Path) -> None:
    dist = DistributedConfig(train_launcher="accelerate", num_processes=2)
    with pytest.raises(DitsError, match="accelerate launch of the SFT stage failed"):
        train(
            "sft", ModelRef(str(tmp_path / "no-model")), sft_data(), CFG, tmp_path / "out", seed=0, dist=dist
        )
