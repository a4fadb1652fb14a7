"""Where SFT and DPO stages train (``distributed.train_launcher``): in this process, or under
``accelerate launch``.

With ``accelerate`` the stage's rows and settings go to a job file next to the output folder, and
``accelerate launch`` runs this module (``python -m dits.train.launch JOB``) in
``distributed.num_processes`` processes: one per GPU, or CPU processes talking over gloo on a machine
without CUDA. ``distributed.accelerate_config`` is passed as ``--config_file`` (TRL ships
``examples/accelerate_configs/{multi_gpu,zero2,zero3,fsdp}.yaml``; DeepSpeed needs ``pip install
deepspeed``). Every process trains on its shard of each batch; the main one saves the output with the
same atomic rename as in-process training (`dits.train.common.train_and_save`), and the stage reads its
``train_result.json``.

What stays the same: the rows, their tokenisation and length fitting, the start model and the seeded
LoRA initialisation (DDP starts every process from the main one's weights), the loss, the epochs, the
learning-rate schedule's shape and the saved folder. What differs: an optimizer step averages
``num_processes`` × ``batch_size`` × ``grad_accum`` rows, so an epoch has ``num_processes`` times fewer
steps, and the batches are made differently (a seeded shuffle split between the processes): the
trained weights are not those of the in-process launcher (divide ``batch_size`` by ``num_processes`` to
keep the effective batch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dits.config import DistributedConfig, TrainConfig
from dits.errors import DitsError
from dits.models import ModelRef
from dits.utils import write_atomic

if TYPE_CHECKING:
    from dits.train.common import TrainResult

Kind = Literal["sft", "dpo"]


@dataclass(frozen=True)
class TrainJob:
    """One training stage as plain data: what `train_sft` / `train_dpo` are called with."""

    kind: Kind
    base: str
    adapter: str | None
    rows: list[dict[str, Any]]
    cfg: dict[str, Any]
    out_dir: str
    seed: int
    init_adapter: str | None = None
    stage: str | None = None

    def run(self) -> TrainResult:
        """Train in this process (one of the launched ones, or the only one)."""
        model = ModelRef(self.base, Path(self.adapter) if self.adapter else None)
        cfg = TrainConfig.model_validate(self.cfg)
        if self.kind == "sft":
            from dits.train.sft import train_sft

            init = Path(self.init_adapter) if self.init_adapter else None
            return train_sft(
                model, self.rows, cfg, Path(self.out_dir), seed=self.seed, init_adapter=init, stage=self.stage
            )
        from dits.train.dpo import train_dpo

        return train_dpo(model, self.rows, cfg, Path(self.out_dir), seed=self.seed, stage=self.stage)


def train(
    kind: Kind,
    model: ModelRef,
    rows: list[dict[str, Any]],
    cfg: TrainConfig,
    out_dir: Path,
    *,
    seed: int,
    dist: DistributedConfig,
    init_adapter: Path | None = None,
    stage: str | None = None,
) -> TrainResult:
    """Train stage ``kind`` with the configured launcher; returns what the training saved (``stage``: the
    run's stage key, named if training diverges)."""
    job = TrainJob(
        kind,
        model.base,
        str(model.adapter) if model.adapter else None,
        rows,
        cfg.model_dump(mode="json"),
        str(out_dir),
        seed,
        str(init_adapter) if init_adapter else None,
        stage,
    )
    if dist.train_launcher == "in-process":
        return job.run()
    return _launch(job, dist)


def _launch(job: TrainJob, dist: DistributedConfig) -> TrainResult:
    """``accelerate launch`` of ``job`` (module docstring); the saved result, read back."""
    import torch

    from dits.train.common import RESULT_FILE, TrainResult

    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(dist.num_processes)]
    command += ["--num_machines", "1", "--main_process_port", "0"]  # 0: a free port on 127.0.0.1
    env = dict(os.environ)
    if dist.accelerate_config:
        if not Path(dist.accelerate_config).is_file():
            raise DitsError(
                f"distributed.accelerate_config {dist.accelerate_config} does not exist; give an accelerate "
                "config file (e.g. TRL's examples/accelerate_configs/zero2.yaml) or null"
            )
        command += ["--config_file", dist.accelerate_config]
    else:
        command += ["--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "true"  # the processes talk over gloo
    out_dir = Path(job.out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    job_file = out_dir.parent / f".{out_dir.name}.job.json"
    write_atomic(job_file, json.dumps(asdict(job)))
    command += ["-m", "dits.train.launch", str(job_file)]
    try:
        done = subprocess.run(command, env=env, check=False)
    finally:
        job_file.unlink(missing_ok=True)
    if done.returncode != 0:
        raise DitsError(
            f"accelerate launch of the {job.kind.upper()} stage failed (exit {done.returncode}; its output is "
            "above); check distributed.num_processes and distributed.accelerate_config, or set "
            "distributed.train_launcher=in-process"
        )
    data = json.loads((out_dir / RESULT_FILE).read_text())
    return TrainResult(**{**data, "output": out_dir})


def main(argv: list[str]) -> None:
    """Entry point of a launched process: ``python -m dits.train.launch JOB``."""
    (job_file,) = argv
    TrainJob(**json.loads(Path(job_file).read_text())).run()


if __name__ == "__main__":
    main(sys.argv[1:])
