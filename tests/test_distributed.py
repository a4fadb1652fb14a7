"""``distributed.backend: ray``: the same artefacts as one process, faults rescheduled, one-line errors.

The Ray tests are slow (a local Ray of 2 CPUs, on 127.0.0.1 only; `make test-slow` installs the ray
extra); the others check the config and the errors without Ray.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from dits.context import StageContext
from dits.distributed import chunks
from dits.engines.base import GenerationRequest, SamplingParams
from dits.engines.batching import GenerateCall, Program
from dits.errors import DitsError
from dits.recipes import run
from dits.runtime import ModelHost
from dits.store import JsonlLog
from test_loop import DITS_SMALL, artefacts
from test_loop import config as loop_config

MORE = [  # on top of test_loop's SMALL: enough tasks that two workers get several chunks each
    "isft.tasks_per_iteration=6",
    "search.tasks_per_iteration=5",
    "search.token_budget_tasks=3",
    "eval.limit=5",
]
RACING = ["influence.estimator=racing", "influence.racing_initial_tasks=1"]
RAY = ["distributed.backend=ray", "distributed.workers=2"]


def config(tmp_path, tiny_model, method: str, *extra: str):
    return loop_config(tmp_path, tiny_model, method, *MORE, *extra)


# ---------------------------------------------------------------------------------------- without Ray
def test_where_inference_runs_is_not_part_of_a_runs_identity(tmp_path, tiny_model) -> None:
    from dits.executor import Run

    Run(config(tmp_path, tiny_model, "isft")).close()
    placed = config(tmp_path, tiny_model, "isft", *RAY, "distributed.address=auto", "distributed.num_gpus=1")
    Run(placed).close()  # a run may resume on a cluster, or back here
    launched = config(tmp_path, tiny_model, "isft", "distributed.train_launcher=accelerate")
    with pytest.raises(DitsError, match=r"distributed.train_launcher: 'in-process' saved, 'accelerate' now"):
        Run(launched)  # data-parallel training trains another model


def test_ray_backend_without_ray_names_the_extra(tmp_path, tiny_model, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    ctx = StageContext(config(tmp_path, tiny_model, "isft", *RAY))
    with pytest.raises(DitsError, match=r"pip install 'dits\[ray\]'"):
        ctx.map_programs(_echo_program, [1])


def test_workers_that_do_not_fit_the_cluster_are_one_line_naming_the_keys() -> None:
    from dits.config import DistributedConfig
    from dits.distributed import check_resources

    dist = DistributedConfig(backend="ray", workers=4, num_gpus=1)
    check_resources(dist, {"CPU": 8.0, "GPU": 4.0})
    with pytest.raises(DitsError, match=r"needs 4 GPUs but the Ray cluster has 2; lower distributed.workers"):
        check_resources(dist, {"CPU": 8.0, "GPU": 2.0})


def test_chunks_are_consecutive_and_cover_every_item() -> None:
    assert chunks(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert chunks(0, 3) == []


# ------------------------------------------------------------------------------------------ with Ray
def _echo_program(host: ModelHost, item: int, delay: float = 0.0) -> Program[tuple[int, int]]:
    """One engine call, then ``delay`` seconds of work: ``(item, worker pid)``."""
    yield GenerateCall(
        GenerationRequest([{"role": "user", "content": str(item)}], seed=item), SamplingParams()
    )
    time.sleep(delay)
    return item, os.getpid()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[object]:
    """A local Ray of 2 CPUs for the module, every address on 127.0.0.1, no usage report."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray then binds its node to the loopback address
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this module
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_a_worker_killed_mid_chunk_has_its_unfinished_items_rescheduled(
    tmp_path, tiny_model, ray_local
) -> None:
    from functools import partial

    from dits.distributed import Cluster

    cluster = Cluster(config(tmp_path, tiny_model, "isft", *RAY, "engine.batch_size=2"))
    killed: list[int] = []
    seen: list[int] = []

    def on_done(index: int, result: tuple[int, int]) -> None:
        seen.append(index)
        if not killed:  # its worker is now playing the next item of the same chunk (max_active=1)
            killed.append(result[1])
            os.kill(result[1], signal.SIGKILL)

    try:
        items = list(range(16))  # 2 workers x 4 chunks of two items (the engine's batch)
        results = cluster.map_programs(
            partial(_echo_program, delay=0.3), items, max_active=1, on_done=on_done
        )
    finally:
        cluster.close()
    assert [item for item, _ in results] == items
    assert sorted(seen) == items  # every item delivered once: nothing lost, nothing twice
    assert cluster.deaths == 1
    first = seen[0]  # the first item of its chunk: the chunk's second item was being played
    assert first % 2 == 0 and results[first + 1][1] != killed[0]  # played again by a fresh worker


@pytest.mark.slow
def test_ray_run_writes_the_artefacts_of_one_process_even_when_a_worker_dies(
    tmp_path, tiny_model, ray_local, monkeypatch
) -> None:
    from dits.distributed import Cluster

    reference = config(tmp_path / "a", tiny_model, "isft-dpo")
    run(reference)

    clusters: list[Cluster] = []
    start = Cluster.__init__

    def remember(self, cfg) -> None:
        start(self, cfg)
        clusters.append(self)

    appended: list[str] = []
    append = JsonlLog.append

    def kill_a_worker_once(self, record) -> None:
        if self.path.name == "sft_samples.jsonl":
            appended.append(record["id"])
            if len(appended) == 1:
                os.kill(ray_local.get(clusters[0].actors[0].pid.remote()), signal.SIGKILL)
        append(self, record)

    monkeypatch.setattr(Cluster, "__init__", remember)
    monkeypatch.setattr(JsonlLog, "append", kill_a_worker_once)
    distributed = config(tmp_path / "b", tiny_model, "isft-dpo", *RAY)
    run(distributed)
    assert artefacts(distributed.run_dir) == artefacts(reference.run_dir)
    assert Counter(appended) == Counter({i: 1 for i in appended}) and len(appended) == 6
    assert clusters[0].deaths == 1


class Crash(Exception):
    pass


@pytest.mark.slow
def test_a_ray_run_killed_mid_stage_resumes_in_one_process_to_the_same_artefacts(
    tmp_path, tiny_model, ray_local, monkeypatch
) -> None:
    reference = config(tmp_path / "a", tiny_model, "isft-dpo")
    run(reference)
    append = JsonlLog.append
    trees: list[str] = []

    def crash_at_the_third_tree(self, record) -> None:
        if self.path.name == "trees.jsonl":
            trees.append(record["id"])
            if len(trees) == 3:
                raise Crash  # the driver dies with two trees written
        append(self, record)

    monkeypatch.setattr(JsonlLog, "append", crash_at_the_third_tree)
    with pytest.raises(Crash):
        run(config(tmp_path / "b", tiny_model, "isft-dpo", *RAY))
    monkeypatch.undo()
    resumed = config(tmp_path / "b", tiny_model, "isft-dpo")  # the same run, without Ray
    run(resumed)
    assert artefacts(resumed.run_dir) == artefacts(reference.run_dir)


@pytest.mark.slow
def test_ray_dits_run_on_tiny_random_writes_byte_identical_artefacts(tmp_path, tiny_model, ray_local) -> None:
    # racing probes; the workers' chunks of groups are smaller than one process's batches of 4
    single = config(tmp_path / "a", tiny_model, "dits", *DITS_SMALL, *RACING)
    run(single)
    distributed = config(tmp_path / "b", tiny_model, "dits", *DITS_SMALL, *RACING, *RAY)
    run(distributed)
    ours, theirs = artefacts(distributed.run_dir), artefacts(single.run_dir)
    assert "iter_0/trees_round0.jsonl" in ours
    assert len(ours["iter_0/influence.jsonl"].splitlines()) >= 4  # groups of both stages, over both workers
    assert ours == theirs


@pytest.mark.slow
def test_the_distributed_benchmark_runs_at_toy_size(tmp_path, tiny_model) -> None:
    from test_bench import run_benchmark

    sizes = ("--trees", "3", "--expansions", "1", "--validation", "1", "--records", "8")
    report = run_benchmark("distributed", tmp_path, *sizes)
    assert report["results"]["identical"] is True
    assert set(report["results"]["modes"]) == {"one process", "ray, 1 worker", "ray, 2 workers"}


@pytest.mark.slow
def test_accelerate_training_stops_the_workers_and_the_next_stage_starts_new_ones(
    tmp_path, tiny_model, ray_local, monkeypatch
) -> None:
    from dits.distributed import Cluster

    started: list[Cluster] = []
    start = Cluster.__init__

    def remember(self, cfg) -> None:
        start(self, cfg)
        started.append(self)

    monkeypatch.setattr(Cluster, "__init__", remember)
    cfg = config(tmp_path, tiny_model, "isft", *RAY, "distributed.train_launcher=accelerate")
    results = run(cfg)
    assert set(results) == {"base", "iter_0"}
    assert len(started) == 2 and all(not c.actors for c in started)  # before and after SFT; both stopped
    assert (cfg.run_dir / "iter_0" / "sft" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_an_error_on_a_worker_is_the_same_one_line_error_here(tmp_path, tiny_model, ray_local) -> None:
    from dits.distributed import Cluster

    cluster = Cluster(
        config(tmp_path, tiny_model, "isft", *RAY, "engine.kind=hf", f"model={tmp_path / 'none'}")
    )
    try:
        with pytest.raises(DitsError, match="none") as caught:
            cluster.map_programs(_echo_program, [1, 2])
    finally:
        cluster.close()
    assert "\n" not in str(caught.value) and cluster.deaths == 0
