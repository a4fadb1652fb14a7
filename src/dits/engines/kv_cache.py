"""Keys and values of token prefixes, kept so that no prompt token is computed twice.

`PrefixTree` holds, per adapter, a radix tree over token ids whose edges carry the keys and values of
their tokens for every layer (one tensor ``[layers, 2, kv_heads, tokens, head_dim]`` per edge). A new
prompt is looked up for its longest cached prefix; a finished row inserts what it computed. Memory is
bounded: least recently used leaves are evicted beyond ``budget_bytes``.

`SlotCache` is the cache object the model sees while a batch runs: one slot per row, every row at its
own length, new keys and values written at per-row positions. Occupied slots are kept contiguous
(``[0, rows)``), so the keys and values handed to attention are views, never copies.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class _Node:
    """An edge of the radix tree: its tokens and their keys/values (the root has neither)."""

    tokens: list[int]
    kv: torch.Tensor | None
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)
    last_used: int = 0

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()


@dataclass
class PrefixStats:
    """Lookups and tokens served from the tree; insertions, evictions."""

    lookups: int = 0
    hit_tokens: int = 0
    inserted_tokens: int = 0
    evicted_tokens: int = 0


class PrefixTree:
    """Cached keys/values of token prefixes, one radix tree per adapter, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self.stats = PrefixStats()
        self._roots: dict[str, _Node] = {}
        self._clock = itertools.count(1)

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def match(self, adapter: str, tokens: Sequence[int]) -> tuple[int, list[torch.Tensor]]:
        """The longest cached prefix of ``tokens`` under ``adapter``: its length and its keys/values as
        pieces in order (views; concatenate along dimension -2)."""
        self.stats.lookups += 1
        node = self._roots.get(adapter)
        pieces: list[torch.Tensor] = []
        length = 0
        now = next(self._clock)
        while node is not None and length < len(tokens):
            child = node.children.get(tokens[length])
            if child is None:
                break
            common = _common(child.tokens, tokens, length)
            assert child.kv is not None
            pieces.append(child.kv[..., :common, :] if common < len(child.tokens) else child.kv)
            child.last_used = now
            length += common
            if common < len(child.tokens):
                break
            node = child
        self.stats.hit_tokens += length
        return length, pieces

    def insert(self, adapter: str, tokens: Sequence[int], kv: torch.Tensor) -> None:
        """Store the keys/values ``kv`` (``[layers, 2, heads, len(tokens), dim]``) of ``tokens`` under
        ``adapter``; only the part not cached yet is copied. Evicts old leaves beyond the budget."""
        if not self.enabled or not tokens:
            return
        node = self._roots.setdefault(adapter, _Node([], None, None))
        now = next(self._clock)
        length = 0
        while length < len(tokens):
            child = node.children.get(tokens[length])
            if child is None:
                leaf = _Node(list(tokens[length:]), kv[..., length:, :].clone(), node, last_used=now)
                node.children[tokens[length]] = leaf
                self.bytes += leaf.nbytes
                self.stats.inserted_tokens += len(leaf.tokens)
                break
            common = _common(child.tokens, tokens, length)
            if common < len(child.tokens):
                child = self._split(child, common)
            child.last_used = now
            length += common
            node = child
        self._evict()

    def forget(self, adapter: str) -> None:
        """Drop everything cached under ``adapter`` (its weights changed or it was removed)."""
        root = self._roots.pop(adapter, None)
        if root is not None:
            self.bytes -= sum(n.nbytes for n in _walk(root))

    def clear(self) -> None:
        self._roots.clear()
        self.bytes = 0

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut ``node``'s edge after ``at`` tokens; returns the new upper part (same bytes in total)."""
        assert node.kv is not None and node.parent is not None
        upper = _Node(node.tokens[:at], node.kv[..., :at, :].clone(), node.parent, last_used=node.last_used)
        node.parent.children[node.tokens[0]] = upper
        old = node.nbytes
        node.tokens, node.kv, node.parent = node.tokens[at:], node.kv[..., at:, :].clone(), upper
        upper.children[node.tokens[0]] = node
        self.bytes += upper.nbytes + node.nbytes - old
        return upper

    def _evict(self) -> None:
        if self.bytes <= self.budget_bytes:
            return
        leaves = sorted(
            (n for root in self._roots.values() for n in _walk(root) if not n.children and n.parent),
            key=lambda n: n.last_used,
        )
        for leaf in leaves:
            if self.bytes <= self.budget_bytes:
                break
            while leaf.parent is not None and not leaf.children and self.bytes > self.budget_bytes:
                parent = leaf.parent
                del parent.children[leaf.tokens[0]]
                self.bytes -= leaf.nbytes
                self.stats.evicted_tokens += len(leaf.tokens)
                leaf = parent


def _common(edge: Sequence[int], tokens: Sequence[int], start: int) -> int:
    """How many leading tokens of ``edge`` equal ``tokens[start:]``."""
    limit = min(len(edge), len(tokens) - start)
    count = 0
    while count < limit and edge[count] == tokens[start + count]:
        count += 1
    return count


def _walk(node: _Node) -> list[_Node]:
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(current.children.values())
    return out


class SlotCache:
    """Keys and values of the rows of a running batch, one slot per row (the model's ``cache``).

    ``storage`` is ``[layers, 2, slots, kv_heads, capacity, head_dim]``. Before each forward pass the
    caller sets `rows` (how many leading slots take part, or a ``(start, stop)`` range) and
    `positions` (``[rows, new_tokens]``: where each new token's keys and values go); `update` writes them
    and returns the first `kv_length` positions of those slots for attention.
    """

    def __init__(self, model_config: Any, slots: int, capacity: int, dtype: torch.dtype, device: Any) -> None:
        config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        self.layers = config.num_hidden_layers
        self.heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.dtype, self.device = dtype, device
        self.storage = torch.zeros(
            self.layers, 2, slots, self.heads, capacity, self.head_dim, dtype=dtype, device=device
        )
        self.rows = (0, 0)
        self.positions: torch.Tensor | None = None
        self.kv_length = 0

    @property
    def slots(self) -> int:
        return self.storage.shape[2]

    @property
    def capacity(self) -> int:
        return self.storage.shape[4]

    def ensure_capacity(self, needed: int) -> None:
        """Grow the position dimension to at least ``needed`` (copying what is stored)."""
        if needed <= self.capacity:
            return
        grown = torch.zeros(
            *self.storage.shape[:4],
            max(needed, 2 * self.capacity),
            self.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        grown[..., : self.capacity, :] = self.storage
        self.storage = grown

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, **_: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys/values of the current rows at `positions`; return their first `kv_length`
        positions (views)."""
        assert self.positions is not None
        start, stop = self.rows
        keys, values = self.storage[layer_idx, 0, start:stop], self.storage[layer_idx, 1, start:stop]
        index = torch.arange(stop - start, device=self.device)[:, None]
        keys[index, :, self.positions] = key_states.transpose(1, 2).to(self.dtype)
        values[index, :, self.positions] = value_states.transpose(1, 2).to(self.dtype)
        return keys[:, :, : self.kv_length], values[:, :, : self.kv_length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_length

    def load(self, slot: int, pieces: Sequence[torch.Tensor]) -> int:
        """Copy cached prefix pieces (from `PrefixTree.match`) into ``slot``; returns their length."""
        position = 0
        for piece in pieces:
            n = piece.shape[-2]
            self.storage[:, :, slot, :, position : position + n] = piece
            position += n
        return position

    def read(self, slot: int, length: int) -> torch.Tensor:
        """The first ``length`` positions of ``slot`` (a view: ``[layers, 2, heads, length, dim]``)."""
        return self.storage[:, :, slot, :, :length]

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``source`` into slot ``target``."""
        self.storage[:, :, target, :, :length] = self.storage[:, :, source, :, :length]
