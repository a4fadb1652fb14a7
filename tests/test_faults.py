"""Fault injection: nothing lost, nothing silent.

Real processes where it matters (``kill -9`` of ``dits run`` at chosen points, two runs on one
directory, every bad input in a process of its own: `@pytest.mark.slow`), in-process elsewhere: a full
disk, diverging training, damaged and deleted outputs of finished stages and ``--redo``, bad inputs
that must end in exactly one line on stderr with exit code 2 and write nothing. All on the fake engine
and the tiny random model.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dits.cli import app
from dits.config import RunConfig, dump_config, load_config
from dits.recipes import run
from dits.store import RunStore
from test_loop import SMALL

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


# --------------------------------------------------------------------------------------- helpers
def small_config(runs: Path, model: str, name: str = "run", *extra: str) -> RunConfig:
    """The loop tests' toy isft-dpo run on the fake engine (via the config, as `dits run` does)."""
    return load_config(
        None, [f"name={name}", f"runs_dir={runs}", f"model={model}", "method=isft-dpo", *SMALL, *extra]
    )


def write_config(cfg: RunConfig, path: Path) -> Path:
    path.write_text(dump_config(cfg))
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line(result: Any, *fragments: str) -> str:
    """Exit code 2, nothing on stdout, exactly one line on stderr (containing ``fragments``)."""
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_ends_in_one_line(result: Any, *fragments: str) -> str:
    """Exit code 2 after some work: the progress shown so far, then one error line (``fragments``)."""
    assert result.exit_code == 2, (result.output, result.exception)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), result.stderr
    return last


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """What a run produced, without timings: every JSONL file, the evaluation records and summaries,
    the digests of trained weights."""
    found: dict[str, Any] = {}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if path.suffix == ".jsonl" and path.name != "train_log.jsonl":
            found[rel] = path.read_bytes()
        elif path.suffix == ".safetensors":
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif rel.startswith("eval/"):
            data = json.loads(path.read_text())
            data["summary"].pop("wall_time")
            found[rel] = data
    return found


def stages(run_dir: Path) -> dict[str, dict[str, Any]]:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


def moved_copy(reference: RunConfig, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the finished reference run in another runs folder, and its config file there."""
    copy = tmp_path / "moved" / reference.name
    shutil.copytree(reference.run_dir, copy)
    config = reference.model_copy(update={"runs_dir": str(copy.parent)})
    return copy, write_config(config, tmp_path / "config.yaml")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model) -> RunConfig:
    """One finished, uninterrupted run: what every resumed or redone run must reproduce."""
    cfg = small_config(tmp_path_factory.mktemp("reference"), tiny_model)
    run(cfg)
    return cfg


# --------------------------------------------------------------------------------------- the lock
def test_a_second_process_on_the_same_run_directory_is_refused_with_one_line(tmp_path, tiny_model) -> None:
    cfg = small_config(tmp_path / "runs", tiny_model)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from dits.lock import RunLock; lock = RunLock({str(cfg.run_dir)!r}); print('held', flush=True); input()",
        ],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        line = assert_one_line(
            invoke("run", str(write_config(cfg, tmp_path / "c.yaml"))), "in use by another dits process"
        )
        assert f"pid {holder.pid} on host" in line
        assert not (cfg.run_dir / "config.yaml").exists() and not (cfg.run_dir / "manifest.json").exists()
    finally:
        holder.kill()  # kill -9: the kernel releases the lock
        holder.wait()
    from dits.lock import RunLock

    RunLock(cfg.run_dir).release()  # free again


# --------------------------------------------------------------------------------------- damage
DAMAGE = {
    "deleted dpo folder": ("iter_0/dpo", "iter_0/dpo", "is missing", lambda p: shutil.rmtree(p)),
    "deleted pairs": ("iter_0/pairs.jsonl", "iter_0/pairs", "is missing", lambda p: p.unlink()),
    "torn last line of samples": (
        "iter_0/sft_samples.jsonl",
        "iter_0/samples",
        "was cut",
        lambda p: p.write_bytes(p.read_bytes()[:-20]),
    ),
    "changed byte in trees": (
        "iter_0/trees.jsonl",
        "iter_0/trees",
        "was changed",
        lambda p: p.write_bytes(p.read_bytes().replace(b"<A>", b"<a>", 1)),
    ),
    "not UTF-8 in trees": (
        "iter_0/trees.jsonl",
        "iter_0/trees",
        "was changed",
        lambda p: p.write_bytes(p.read_bytes().replace(b"<A>", b"\xff\xfe\xfd", 1)),
    ),
    "appended record": (
        "iter_0/pairs.jsonl",
        "iter_0/pairs",
        "bytes more",
        lambda p: p.write_text(p.read_text() + '{"id": "extra"}\n'),
    ),
    "deleted SFT weights": (
        "iter_0/sft",
        "iter_0/sft",
        "has lost its file adapter_model.safetensors",
        lambda p: (p / "adapter_model.safetensors").unlink(),
    ),
    "deleted evaluation": ("eval/base.json", "eval/base", "is missing", lambda p: p.unlink()),
}


def test_a_moved_run_directory_resumes_without_running_anything(reference, tmp_path) -> None:
    copy, config = moved_copy(reference, tmp_path)
    before = stages(copy)
    result = invoke("run", str(config))
    assert result.exit_code == 0, result.output
    assert stages(copy) == before  # every stage was verified and skipped


@pytest.mark.parametrize("case", DAMAGE)
def test_damage_to_a_finished_stage_is_named_in_one_line_and_never_repaired(
    reference, tmp_path, case
) -> None:
    target, stage, issue, damage = DAMAGE[case]
    copy, config = moved_copy(reference, tmp_path)
    damage(copy / target)
    damaged = fingerprint(copy)
    assert_one_line(invoke("run", str(config)), str(copy / target), issue, f"--redo {stage}")
    assert fingerprint(copy) == damaged  # reported, not silently repaired or deleted


def test_redo_runs_the_stage_and_every_later_one_again(reference, tmp_path) -> None:
    copy, config = moved_copy(reference, tmp_path)
    (copy / "iter_0" / "pairs.jsonl").unlink()
    shutil.rmtree(copy / "iter_0" / "dpo")
    result = invoke("run", str(config), "--redo", "iter_0/pairs")
    assert result.exit_code == 0, result.output
    assert (
        "--redo iter_0/pairs: these stages run again: iter_0/pairs, iter_0/dpo, eval/iter_0\n"
        in result.stderr
    )
    assert fingerprint(copy) == fingerprint(reference.run_dir)
    redone, original = stages(copy), stages(reference.run_dir)
    assert redone["iter_0/trees"] == original["iter_0/trees"]  # untouched
    assert_one_line(invoke("run", str(config), "--redo", "iter_9/pairs"), "no such stage", "iter_0/pairs")


# --------------------------------------------------------------------------------------- full disk
def test_a_full_disk_ends_in_one_line_leaves_no_torn_line_and_the_run_resumes(
    reference, tmp_path, monkeypatch
) -> None:
    cfg = small_config(tmp_path / "runs", reference.model)
    config = write_config(cfg, tmp_path / "c.yaml")
    real_write, records = os.write, []

    def full_after_two_records(fd: int, data: bytes) -> int:
        if data.startswith(b"{"):
            records.append(data)
            if len(records) == 3:
                real_write(fd, data[:10])  # the disk took part of the line before it filled up
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_after_two_records)
    line = assert_ends_in_one_line(
        invoke("run", str(config)), "sft_samples.jsonl", "No space left on device", "same command"
    )
    assert "half-written" in line
    monkeypatch.undo()
    samples = (cfg.run_dir / "iter_0" / "sft_samples.jsonl").read_text()
    assert samples.endswith("\n") and len(samples.splitlines()) == 2  # nothing torn
    assert stages(cfg.run_dir)["iter_0/samples"]["status"] == "running"
    assert invoke("run", str(config)).exit_code == 0
    assert fingerprint(cfg.run_dir) == fingerprint(reference.run_dir)
    # accounting adds up across the two processes: the first one's tokens are not forgotten
    resumed, uninterrupted = stages(cfg.run_dir), stages(reference.run_dir)
    assert resumed["iter_0/samples"]["summary"]["attempts"] == 2
    for key, entry in uninterrupted.items():
        tokens, again = entry["summary"]["tokens_generated"], resumed[key]["summary"]["tokens_generated"]
        assert again >= tokens if key == "iter_0/samples" else again == tokens, key


# --------------------------------------------------------------------------------------- divergence
def test_diverging_training_stops_with_one_line_and_nothing_is_saved_or_done(tmp_path, tiny_model) -> None:
    diverging = ["sft.learning_rate=1e30", "sft.warmup_ratio=0", "sft.lr_scheduler=constant", "sft.epochs=3"]
    cfg = small_config(tmp_path / "runs", tiny_model, "run", "method=isft", *diverging)
    line = assert_ends_in_one_line(
        invoke("run", str(write_config(cfg, tmp_path / "c.yaml"))), "stage iter_0/sft", "diverged"
    )
    assert "Lower sft.learning_rate (now 1e+30)" in line
    entry = stages(cfg.run_dir)["iter_0/sft"]
    assert entry["status"] == "running" and entry["partial"]["attempts"] == 1
    assert sorted(p.name for p in (cfg.run_dir / "iter_0").iterdir()) == ["sft_samples.jsonl"]  # no model


# --------------------------------------------------------------------------------------- bad inputs
def jsonl_task(tmp_path: Path, extra: bytes = b"") -> Path:
    path = tmp_path / "mine.jsonl"
    line = {
        "id": "a",
        "family": "qa",
        "question": "q?",
        "answers": ["x"],
        "context": {"alice": [], "bob": []},
        "split": "train",
    }
    path.write_bytes(json.dumps(line).encode() + b"\n" + extra)
    return path


RUN_MISTAKES = {
    "adapter-less server for dits": (
        ["method=dits", "engine.kind=openai", "engine.server=transformers"],
        "engine.server=transformers cannot host them",
    ),
    "empty probe grid": (["influence.probe_lr_grid=[]"], "probe_lr_grid is empty"),
    "negative probe lr": (["influence.probe_lr=-0.001"], "influence.probe_lr"),
    "negative sft lr": (["sft.learning_rate=-1"], "sft.learning_rate"),
    "no epochs": (["sft.epochs=0"], "sft.epochs"),
    "negative dialogue cap": (["dialogue.max_total_tokens=-5"], "dialogue.max_total_tokens"),
    "negative eval limit": (["eval.limit=-3"], "eval.limit"),
    "negative temperature": (["search.temperature=-0.5"], "search.temperature"),
    "infinite learning rate": (["dpo.learning_rate=.inf"], "dpo.learning_rate"),
    "name outside runs_dir": (["name=../../x"], "one folder name inside runs_dir"),
    "typo in the task": (["task.name=synth-ei"], "unknown task 'synth-ei'"),
    "typo in the model": (["model=smolm2-135m"], "unknown model 'smolm2-135m'"),
    "bad override value": (["search.expansions=[1"], "not a YAML value"),
    "whole endless split": (["eval.limit=null"], "generated without end"),
}


@pytest.mark.parametrize("case", RUN_MISTAKES)
def test_a_bad_run_input_ends_in_one_line_and_writes_nothing(tmp_path, tiny_model, case) -> None:
    overrides, fragment = RUN_MISTAKES[case]
    config = write_config(small_config(tmp_path / "runs", tiny_model), tmp_path / "c.yaml")
    assert_one_line(invoke("run", str(config), *overrides), fragment)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_a_corrected_typo_is_not_refused_as_another_config(tmp_path, tiny_model) -> None:
    config = write_config(
        small_config(tmp_path / "runs", tiny_model, "run", "method=isft"), tmp_path / "c.yaml"
    )
    assert_one_line(invoke("run", str(config), "task.name=synth-ei", "isft.min_reward=100"), "unknown task")
    result = invoke("run", str(config), "isft.min_reward=100")  # fails fast, after the config check
    assert_ends_in_one_line(result, "no sampled dialogue reached isft.min_reward=100")


def test_bad_files_and_commands_end_in_one_line(tmp_path, tiny_model, monkeypatch) -> None:
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    assert_one_line(invoke("run", str(folder)), "is a directory")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n")
    assert_one_line(invoke("run", str(latin)), "not UTF-8")
    bad = jsonl_task(tmp_path, b'{"id": "b\xff"}\n')
    assert_one_line(invoke("tasks", "show", f"jsonl:{bad}", "--split", "train"), f"{bad}:2", "not UTF-8")
    wrong = tmp_path / "hotpot.jsonl"
    wrong.write_text('{"q": "who?", "a": "me"}\n')
    assert_one_line(invoke("tasks", "show", "hotpotqa", "--data-file", f"test={wrong}"), str(wrong), "layout")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": ')
    for args, fragment in [
        (
            ["eval", "--model", tiny_model, "--task", "synth-ie", "--limit", "-3"],
            "--limit must be at least 1",
        ),
        (["eval", "--model", tiny_model, "--task", "synth-ie", "--limit", "0"], "--limit must be at least 1"),
        (["tasks", "show", "synth-ie", "--n", "-1"], "--n must be at least 1"),
        (
            ["eval", "--model", str(adapter), "--task", "synth-ie", "--limit", "1"],
            "adapter_config.json is damaged",
        ),
        (["eval", "--model", tiny_model, "--task", "synth-ie"], "generated without end"),
        (["report", str(tmp_path)], "holds no run"),
    ]:
        assert_one_line(invoke(*args), fragment)


@pytest.mark.parametrize("content", [b"", b'{"version": "0.1.0", "stages": {"eval/ba'])
def test_an_emptied_or_truncated_manifest_is_named_in_one_line(reference, tmp_path, content) -> None:
    copy, config = moved_copy(reference, tmp_path)
    (copy / "manifest.json").write_bytes(content)
    assert_one_line(invoke("run", str(config)), str(copy / "manifest.json"), "damaged")
    assert_one_line(invoke("report", str(copy)), "manifest.json", "damaged")
    (copy / "iter_0" / "trees.jsonl").write_bytes(b'{"id": "\xff"}\n')
    assert_one_line(invoke("tree", "show", str(copy), "0", "x"), "trees.jsonl:1", "not UTF-8")


def read_only(monkeypatch, under: Path) -> None:
    """Make folders under ``under`` behave like a read-only file system (tests run as root, so
    permissions alone would not stop a write)."""
    mkdir = Path.mkdir

    def refuse(self: Path, *args: Any, **kwargs: Any) -> None:
        if self.is_relative_to(under):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)


def test_a_read_only_runs_dir_and_eval_out_end_in_one_line_before_any_work(
    tmp_path, tiny_model, monkeypatch
) -> None:
    config = write_config(small_config(tmp_path / "ro" / "runs", tiny_model), tmp_path / "c.yaml")
    read_only(monkeypatch, tmp_path / "ro")
    assert_one_line(invoke("run", str(config)), "Read-only file system", "writable folder")
    monkeypatch.setattr(
        "dits.evaluate.evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out")
    )
    args = ["eval", "--model", tiny_model, "--task", "synth-ie", "--set", "engine.kind=fake"]
    assert_one_line(
        invoke(*args, "--out", str(tmp_path / "ro" / "e.json")), "cannot be written", "nothing was computed"
    )


def test_eval_config_brings_dialogue_settings_not_the_runs_task(tmp_path, tiny_model) -> None:
    cfg = small_config(tmp_path / "runs", tiny_model, "run", "task.options.distractors=0")
    config = write_config(cfg, tmp_path / "c.yaml")
    task = jsonl_task(tmp_path)
    out = tmp_path / "e.json"
    result = invoke(
        "eval",
        "--config",
        str(config),
        "--model",
        tiny_model,
        "--task",
        f"jsonl:{task}",
        "--split",
        "train",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["summary"]["task"] == f"jsonl:{task}"


# --------------------------------------------------------------------------------------- real processes
def dits(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dits.cli", *args],
        env=ENV,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


KILL_POINTS = [
    "record@iter_0/samples:2",  # half a record written
    "step@iter_0/sft:2",
    "renamed@iter_0/sft:1",  # the model folder in place, the stage not yet done
    "record@iter_0/trees:2",
    "done@iter_0/pairs:1",  # between two stages
    "step@iter_0/dpo:1",
    "renamed@iter_0/dpo:1",
    "generate@eval/iter_0:1",
]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_anywhere_then_resume_gives_identical_artefacts(reference, tmp_path, point) -> None:
    cfg = small_config(tmp_path / "runs", reference.model)
    config = write_config(cfg, tmp_path / "c.yaml")
    child = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fault_child.py"), point, "run", str(config)],
        env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert child.returncode == -9, child.stderr[-3000:]
    killed = point.split("@")[1].rsplit(":", 1)[0]
    assert not RunStore(cfg.run_dir).is_done(killed) or point.startswith("done")
    resumed = dits("run", str(config), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if point.startswith("record"):  # said, not silent
        assert f"{killed}: dropped the torn last line" in resumed.stderr
    if point.startswith(("step", "renamed")):
        assert "temp files or work folders of an interrupted run" in resumed.stderr
    assert fingerprint(cfg.run_dir) == fingerprint(reference.run_dir)
    assert not [p for p in cfg.run_dir.rglob(".*") if p.name != ".lock"]  # no temp file or work folder left
    for key, entry in stages(reference.run_dir).items():
        tokens, again = entry["summary"]["tokens_generated"], stages(cfg.run_dir)[key]["summary"]
        assert again["tokens_generated"] >= tokens if key == killed else again["tokens_generated"] == tokens


@pytest.mark.slow
def test_two_concurrent_runs_the_second_is_refused_with_one_line(reference, tmp_path) -> None:
    config = write_config(small_config(tmp_path / "runs", reference.model), tmp_path / "c.yaml")
    first = subprocess.Popen(
        [sys.executable, "-m", "dits.cli", "run", str(config)],
        env=ENV,
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = tmp_path / "runs" / "run" / "manifest.json"
    while not manifest.exists():
        assert first.poll() is None
        time.sleep(0.2)
    second = dits("run", str(config), cwd=tmp_path)
    assert second.returncode == 2 and second.stdout == ""
    assert len(second.stderr.strip().splitlines()) == 1 and f"pid {first.pid} on host" in second.stderr
    assert first.wait(timeout=600) == 0
    assert fingerprint(tmp_path / "runs" / "run") == fingerprint(reference.run_dir)


@pytest.mark.slow
@pytest.mark.parametrize("case", RUN_MISTAKES)
def test_a_bad_input_in_a_real_process_prints_exactly_one_line(tmp_path, tiny_model, case) -> None:
    overrides, fragment = RUN_MISTAKES[case]
    config = write_config(small_config(tmp_path / "runs", tiny_model), tmp_path / "c.yaml")
    result = dits("run", str(config), *overrides, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.mark.slow
def test_diverging_dpo_is_stopped_in_a_real_process(tmp_path, tiny_model) -> None:
    overrides = ["dpo.learning_rate=1e30", "dpo.warmup_ratio=0", "dpo.lr_scheduler=constant"]
    config = write_config(small_config(tmp_path / "runs", tiny_model, "run", *overrides), tmp_path / "c.yaml")
    result = dits("run", str(config), cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "stage iter_0/dpo: DPO training diverged" in last and "Lower dpo.learning_rate" in last
    assert not (tmp_path / "runs" / "run" / "iter_0" / "dpo").exists()
    assert stages(tmp_path / "runs" / "run")["iter_0/dpo"]["status"] == "running"
