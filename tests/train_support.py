"""A hand-made instance and dialogue shared by the training tests."""

from __future__ import annotations

from dits.mas.dialogue import Turn
from dits.tasks.base import TaskInstance

INSTANCE = TaskInstance(
    id="q1",
    task="synth",
    family="qa",
    question="Who directed Film X, and when was that person born?",
    answers=("Ann Lee, 1950",),
    metric="f1",
    answer_format="tag",
    context={"alice": ("Film X was directed by Ann Lee.",), "bob": ("Ann Lee was born in 1950.",)},
)
TURNS = [
    Turn("alice", "Film X -> dir. -> Ann Lee. Born when?", 12),
    Turn("bob", "Ann Lee b. 1950. <A>Ann Lee, 1950</A>", 14, "Ann Lee, 1950"),
    Turn("alice", "Agreed. <A>Ann Lee, 1950</A>", 10, "Ann Lee, 1950"),
]
