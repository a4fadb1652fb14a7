"""The `dits` command line. Thin: parse, load config, call one function, print."""

from __future__ import annotations

import errno
import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dits.errors import DitsError
from dits.progress import console

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
models_app = typer.Typer(no_args_is_help=True, help="Built-in models.")
tasks_app = typer.Typer(no_args_is_help=True, help="Tasks: built-in, real datasets, your own JSONL.")
tree_app = typer.Typer(no_args_is_help=True, help="Inspect search trees of a run.")
config_app = typer.Typer(no_args_is_help=True, help="Run configs: every key with its default and meaning.")
app.add_typer(models_app, name="models")
app.add_typer(tasks_app, name="tasks")
app.add_typer(tree_app, name="tree")
app.add_typer(config_app, name="config")


WRITE_ERRORS = {
    errno.ENOSPC: "free disk space",
    errno.EDQUOT: "free disk space (the quota is used up)",
    errno.EROFS: "the file system is read-only: choose a writable folder (runs_dir, --out)",
    errno.EACCES: "fix the permissions or choose a writable folder (runs_dir, --out)",
    errno.EPERM: "fix the permissions or choose a writable folder (runs_dir, --out)",
}
"""Errors of the machine, not of dits (a full disk, a read-only folder), and what to do about them."""


def _write_error(exc: BaseException | None) -> OSError | None:
    """The first `WRITE_ERRORS` error in ``exc``'s chain (libraries wrap them in their own errors)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRORS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _fail(message: str) -> typer.Exit:
    """Print ``message`` as one error line; the exit (status 2) to raise."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user mistake, or a full disk or read-only folder, as one line (no traceback) and exit
    with status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DitsError as exc:
            raise _fail(str(exc)) from None
        except Exception as exc:
            found = _write_error(exc)
            if found is None:
                raise
            raise _fail(
                f"{found.filename or 'writing'}: {found.strerror}; {WRITE_ERRORS[found.errno]}. Nothing was "
                "left half-written (a run keeps its finished stages and records): run the same command "
                "again to continue"
            ) from None

    return wrapper


def _at_least(option: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise DitsError(f"{option} must be at least {minimum}, not {value}")


# --------------------------------------------------------------------------------------- models
@models_app.command("pull")
@user_errors
def models_pull(name: str) -> None:
    """Prepare a built-in model (smollm2-135m, tiny-random) for offline use."""
    from dits.models import pull_builtin

    console.print(f"{name}: {pull_builtin(name)}")


@models_app.command("list")
def models_list() -> None:
    """The built-in model names."""
    from dits.models import BUILTIN_MODELS

    for name, description in BUILTIN_MODELS.items():
        console.print(f"{name:14s} {description}")


# --------------------------------------------------------------------------------------- tasks
@tasks_app.command("list")
def tasks_list() -> None:
    """Every task name with its family and metric."""
    from dits.tasks.registry import list_tasks

    for info in list_tasks():
        console.print(f"[bold]{info.name:18s}[/bold] {info.family:7s} {info.metric:8s} {info.description}")


def _parse_pairs(items: list[str], what: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise DitsError(f"{what} {item!r} must look like key=value")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


DataFileOpt = Annotated[
    list[str] | None, typer.Option("--data-file", help="SPLIT=PATH of a local data file (repeatable)")
]
TaskOptionOpt = Annotated[
    list[str] | None, typer.Option("--option", help="task option KEY=VALUE (repeatable)")
]


@tasks_app.command("show")
@user_errors
def tasks_show(
    name: str,
    split: str = "test",
    n: int = 2,
    data_file: DataFileOpt = None,
    option: TaskOptionOpt = None,
) -> None:
    """A few instances of a task, rendered as Alice and Bob see them."""
    from dits.mas.render import agent_view
    from dits.tasks.registry import get_task

    _at_least("--n", n, 1)
    task = get_task(
        name, _parse_pairs(data_file or [], "--data-file") or None, **_parse_pairs(option or [], "--option")
    )
    for instance in itertools.islice(task.instances(split), n):  # type: ignore[arg-type]
        console.rule(f"{instance.id}  gold: {list(instance.answers)}")
        for speaker in ("alice", "bob"):
            for message in agent_view(instance, speaker, [], demonstrate=False)[1:]:
                console.print(f"[bold]{speaker} sees[/bold]\n{message['content']}")


# --------------------------------------------------------------------------------------- config
@config_app.command("show")
@user_errors
def config_show(
    config: Annotated[
        str | None, typer.Argument(help="YAML run config (see configs/); leave out for the defaults")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted overrides, e.g. loop.iterations=1")
    ] = None,
) -> None:
    """Print the resolved config as YAML, each key with its meaning as a comment (a valid run config)."""
    from dits.config import load_config
    from dits.config_docs import commented_yaml

    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *(overrides or [])]
    typer.echo(commented_yaml(load_config(config, overrides or [])), nl=False)


# --------------------------------------------------------------------------------------- eval
@app.command("eval")
@user_errors
def eval_command(
    model: Annotated[str, typer.Option(help="built-in name, model/adapter folder or hub id")],
    task: Annotated[str, typer.Option(help="task name (see `dits tasks list`)")],
    split: str = "test",
    limit: int | None = None,
    out: Path | None = None,
    data_file: DataFileOpt = None,
    option: TaskOptionOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(help="take dialogue/engine settings from this run config (not its task: see --task)"),
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override KEY=VALUE")] = None,
    self_consistency: int = 0,
    seed: int = 0,
) -> None:
    """Greedy two-agent dialogues on a split: prints score and mean tokens, writes records."""
    from dits.config import TaskConfig, load_config
    from dits.evaluate import evaluate, write_eval
    from dits.runtime import build_system, take

    _at_least("--limit", limit, 1)
    _at_least("--self-consistency", self_consistency, 0)
    cfg = load_config(config, set_ or [])
    cfg.task = TaskConfig(
        name=task,
        data_files={k: str(v) for k, v in _parse_pairs(data_file or [], "--data-file").items()},
        options=_parse_pairs(option or [], "--option"),
    )
    if out:
        _check_writable(out)
    from dits.engines.factory import make_engine

    system = build_system(cfg)
    instances = take(system.task, split, limit)
    engine = make_engine(cfg.engine, model)
    records, summary = evaluate(
        system,
        instances,
        engine,
        model_label=model,
        split=split,
        seed=seed,
        self_consistency=self_consistency,
    )
    console.print(
        f"[bold]{task}[/bold] {split}: score {summary.score:.3f}  mean tokens {summary.mean_tokens:.1f}  "
        f"answered {summary.answered:.0%}  n {summary.n}  wall {summary.wall_time:.0f}s"
    )
    if out:
        write_eval(out, records, summary)
        console.print(f"records: {out}")


def _check_writable(path: Path) -> None:
    """Fail now, before any work, when the file ``path`` cannot be written (a probe file is created and
    removed next to it)."""
    from dits.utils import private_path

    if path.is_dir():
        raise DitsError(f"--out {path} is a folder; give a file name, e.g. {path / 'eval.json'}")
    probe = private_path(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DitsError(
            f"--out {path} cannot be written ({exc.strerror}); nothing was computed: choose another file"
        ) from None


# --------------------------------------------------------------------------------------- run
@app.command("demo")
@user_errors
def demo_command(
    quick: Annotated[
        bool, typer.Option(help="one iteration, small sizes (about 20 minutes on 2 CPU cores)")
    ] = False,
    runs_dir: str = "runs",
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted config overrides for both runs")
    ] = None,
) -> None:
    """SmolLM2-135M on synth-ie: base vs Optima iSFT-DPO vs DITS iSFT-DPO, a table and report.html."""
    from dits.demo import run_demo

    run_demo(quick=quick, runs_dir=runs_dir, overrides=overrides or [])


@app.command("run")
@user_errors
def run_command(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted overrides, e.g. loop.iterations=1")
    ] = None,
    redo: Annotated[
        str | None,
        typer.Option(help="run this stage (e.g. iter_0/pairs) and every stage after it again"),
    ] = None,
) -> None:
    """Run the whole iterative pipeline of a config; re-running the same command resumes it."""
    from dits.config import load_config
    from dits.recipes import run

    run(load_config(config, overrides or []), redo=redo)


@app.command("report")
@user_errors
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="a run directory, or a folder of runs")],
) -> None:
    """(Re)build the HTML report and plots of a run (or of all runs in a folder, side by side)."""
    from dits.report import build_report

    console.print(f"report: {build_report(run_dir)}")


# --------------------------------------------------------------------------------------- tree
@tree_app.command("show")
@user_errors
def tree_show(run_dir: Path, iteration: int, tree_id: str, max_chars: int = 60) -> None:
    """Print one search tree of a run with visits, Q values and influences."""
    from dits.search.show import format_tree
    from dits.search.tree import Tree
    from dits.store import JsonlLog

    _at_least("--max-chars", max_chars, 1)
    log = JsonlLog(run_dir / f"iter_{iteration}" / "trees.jsonl")
    if not log.path.exists():
        raise DitsError(
            f"{log.path} does not exist; is {run_dir} a run directory with iteration {iteration}?"
        )
    for record in log:
        if str(record["instance"]["id"]) == tree_id:
            console.print(format_tree(Tree.from_dict(record), max_chars=max_chars))
            return
    raise DitsError(f"no tree {tree_id!r} in {log.path}; ids: {', '.join(sorted(log.ids())[:10])} ...")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
