"""Task options: one small pydantic model per task, validated with errors that name the option."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from dits.errors import DitsError


class TaskOptions(BaseModel):
    """Base of every task's options: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=TaskOptions)


def parse_options(task: str, model: type[OptionsT], options: Mapping[str, Any]) -> OptionsT:
    """Validate ``options`` for ``task``; a bad or unknown option raises :class:`DitsError` naming it."""
    try:
        return model(**options)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            key = ".".join(str(part) for part in item["loc"])
            if item["type"] == "extra_forbidden":
                problems.append(f"unknown option {key!r}")
            else:
                problems.append(f"option {key!r}: {item['msg']} (got {item['input']!r})")
        valid = ", ".join(model.model_fields) or "none"
        raise DitsError(f"task {task}: {'; '.join(problems)}. Valid options: {valid}") from None
