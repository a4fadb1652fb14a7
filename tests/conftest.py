"""Shared fixtures: a tiny scripted task and the tiny-random model (built offline once per session)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dits.tasks.base import Task, TaskInstance
from dits.tasks.types import Split

REPO = Path(__file__).resolve().parents[1]


class CapitalsTask(Task):
    """A hand-made QA task: the answer is a capital city, stated as <A>...</A>."""

    name = "capitals"
    family = "qa"

    def instances(self, split: Split) -> Iterator[TaskInstance]:
        for i, (country, city) in enumerate([("France", "paris"), ("England", "london"), ("Italy", "rome")]):
            yield TaskInstance(
                id=f"{split}-{i}",
                task=self.name,
                family="qa",
                question=f"What is the capital of {country}?",
                answers=(city,),
                metric="f1",
                answer_format="tag",
                context={"alice": (f"{country} is in Europe.",), "bob": (f"Its capital is {city.title()}.",)},
            )

    def extract(self, text: str, instance: TaskInstance) -> str | None:
        found = re.findall(r"<A>(.*?)</A>", text, re.S)
        return found[-1].strip() if found else None

    def score(self, prediction: str | None, instance: TaskInstance) -> float:
        return float(bool(prediction) and prediction.lower() == instance.answers[0])


@pytest.fixture
def capitals() -> CapitalsTask:
    return CapitalsTask()


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Folder of the tiny-random model (2-layer Llama, SmolLM2 tokenizer)."""
    from dits.models import pull_builtin

    return str(pull_builtin("tiny-random"))


@pytest.fixture(scope="session")
def vllm_stub(tiny_model: str) -> Iterator[object]:
    """A vLLM-shaped stub server on 127.0.0.1 answered by the tiny model in this process (`servers.VLLMStub`)."""
    from servers import VLLMStub

    stub = VLLMStub(tiny_model)
    yield stub
    stub.close()


@pytest.fixture(scope="session")
def transformers_server(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """`transformers serve` with the tiny model on 127.0.0.1 (needs the `serve` extra)."""
    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("transformers serve needs the serve extra: pip install -e '.[serve]' (make test does)")
    from dits.engines.launch import transformers_serve

    server = transformers_serve(tiny_model, tmp_path_factory.mktemp("serve") / "server.log").start()
    yield server
    server.kill()
