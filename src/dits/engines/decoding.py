"""Continuous batching for the HF engine: every prompt token computed once, every decode slot used.

`Decoder.run` takes rows (a prompt, an adapter, a seed, optionally a draft) and returns each row's
generated tokens. How:

* **Prefix reuse.** A row's prompt is looked up in the `PrefixTree`; only the tokens after its longest
  cached prefix are computed. A finished row inserts what it computed (prompt and reply), so the next
  turn of the same agent — whose view extends the previous one — and the rollouts from a search-tree
  node find their prefix there. Prefixes that several new rows share but the tree lacks (the system
  prompt and worked example at the first turn) are computed once, before those rows start.
* **Continuous refill.** Rows occupy slots of a `SlotCache`; when one finishes, a waiting row takes
  its slot at the next step, so no decode slot idles while work waits.
* **Drafts.** A row may carry a draft — tokens it is expected to produce (θ*'s greedy reply, when an
  influence probe replays θ*'s validation dialogue). The draft is checked in the same forward pass as
  the prompt: the row keeps the longest prefix the model itself would produce and decodes only from the
  first difference. Where the top-two scores of a draft position are closer than ``tie_margin``, that
  position is recomputed by an ordinary decode step, so numerical noise between a batched pass and a
  decode step cannot flip a near-tie.
* **Sampling** is the per-row Gumbel-max of `SeededSampler`'s rule: row ``r``'s ``k``-th token uses the
  ``k``-th draw of a generator seeded with the row's seed, so a completion never depends on its batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from dits.engines.base import BatchEvent, EngineStats, SamplingParams
from dits.engines.kv_cache import PrefixTree, SlotCache
from dits.utils import common_prefix_length

MIN_SHARED_PREFIX = 16
"""New rows that share at least this many uncached leading tokens compute them once."""
MAX_SHARING_PASSES = 4
"""Nesting levels of shared prefixes computed ahead (system prompt, then a shared history, ...)."""
PREFILL_TOKENS = 8192
"""Most padded input positions of one prefill pass (bounds the attention scores' memory)."""
TIE_MARGIN = 1e-3
"""Draft positions whose top-two scores are closer than this are recomputed by a decode step."""

AdapterContext = Callable[[Sequence[str]], AbstractContextManager[dict[str, Any]]]
"""Given one adapter name per row, a context that makes a forward pass run each row under its adapter
and yields extra keyword arguments for the model (PEFT's ``adapter_names``)."""


class NoiseStream:
    """The Gumbel noise of one sampled row: draw ``k`` is the ``k``-th draw of a generator seeded with
    the row's seed (uniform → −log(−log u)), whatever the batch."""

    def __init__(self, seed: int, vocab: int) -> None:
        self.seed, self.vocab = seed, vocab
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0

    def draw(self, k: int) -> torch.Tensor:
        if k < self.drawn:  # recompute an earlier draw (a near-tie redone by a decode step)
            self.generator = torch.Generator().manual_seed(self.seed)
            self.drawn = 0
        while self.drawn < k:
            torch.rand(self.vocab, generator=self.generator)
            self.drawn += 1
        uniform = torch.rand(self.vocab, generator=self.generator)
        self.drawn += 1
        return -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))


def sampling_scores(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled, top-p-filtered scores of one position (before the noise)."""
    scores = logits.float() / params.temperature
    if params.top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probabilities = sorted_scores.softmax(dim=-1)
        drop_sorted = probabilities.cumsum(dim=-1) - probabilities > params.top_p
        scores = scores.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return scores


@dataclass
class Row:
    """One sequence to generate. ``draft``: tokens to verify first (the stop token included when the
    draft ended by stopping)."""

    prompt: list[int]
    adapter: str
    seed: int
    draft: list[int] = field(default_factory=list)
    generated: list[int] = field(default_factory=list)
    finish: str | None = None
    length: int = 0  # positions of the slot holding valid keys/values
    pending: int | None = None  # the last chosen token, not yet fed to the model
    noise: NoiseStream | None = None

    @property
    def fed(self) -> list[int]:
        """Tokens whose keys/values the slot holds."""
        return (self.prompt + self.generated)[: self.length]


@dataclass
class DecodeStats:
    """Work of the decoder: prompt tokens asked for, taken from the prefix tree, computed; drafts."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    computed_tokens: int = 0
    shared_prefix_tokens: int = 0
    decode_steps: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0


class Decoder:
    """Runs rows to completion on ``model`` with continuous batching over ``slots`` slots."""

    def __init__(
        self,
        model: Callable[[], Any],
        adapter_context: AdapterContext,
        tree: PrefixTree,
        *,
        slots: int,
        stop_ids: set[int],
        stats: EngineStats,
        dtype: torch.dtype,
        device: Any,
        tie_margin: float = TIE_MARGIN,
    ) -> None:
        self._model = model
        self.adapter_context = adapter_context
        self.tree = tree
        self.slots = slots
        self.stop_ids = stop_ids
        self.engine_stats = stats
        self.dtype, self.device = dtype, device
        self.tie_margin = tie_margin
        self.stats = DecodeStats()

    @property
    def model(self) -> Any:
        return self._model()

    # ------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def run(
        self, rows: Sequence[Row], params: SamplingParams, done: Callable[[Row], bool] | None = None
    ) -> None:
        """Generate every row to its end (fills ``generated`` and ``finish``); ``done(row)`` may end a
        row early (e.g. on a stop string)."""
        if not rows:
            return
        vocab = self.model.config.get_text_config().vocab_size
        if not params.greedy:
            for row in rows:
                row.noise = NoiseStream(row.seed, vocab)
        waiting = sorted(rows, key=lambda r: (r.adapter, r.prompt))  # siblings start together
        longest = max(len(r.prompt) + len(r.draft) for r in rows) + params.max_new_tokens + 1
        cache = SlotCache(self.model.config, min(self.slots, len(rows)), longest, self.dtype, self.device)
        active: list[Row] = []
        while waiting or active:
            free = cache.slots - len(active)
            if free and waiting:
                newcomers, waiting = waiting[:free], waiting[free:]
                self._share_prefixes(cache, len(active), newcomers)
                for group in _token_groups(newcomers, PREFILL_TOKENS):
                    start = len(active)
                    active += group
                    self._prefill(cache, active, start, params, done)
            active = self._retire(cache, active)
            if active:
                self._decode_step(cache, active, params, done)
                active = self._retire(cache, active)

    # ------------------------------------------------------------------ prefill
    def _share_prefixes(self, cache: SlotCache, start: int, rows: Sequence[Row]) -> None:
        """Compute once, in the free slots from ``start``, the uncached prefixes that several of ``rows``
        share, and put them in the tree (shallowest first, so a deeper one reuses a shallower one)."""
        if not self.tree.enabled:
            return
        for _ in range(MAX_SHARING_PASSES):
            prefixes = self._shared_prefixes(rows)
            shallow = [p for p in prefixes if not any(_extends(p, q) for q in prefixes)]
            if not shallow:
                return
            for group in _chunks(shallow, cache.slots - start):
                members = [Row(list(tokens), adapter, 0) for adapter, tokens in group]
                feeds = []
                for slot, row in enumerate(members, start):
                    row.length = cache.load(slot, self.tree.match(row.adapter, row.prompt)[1])
                    feeds.append(row.prompt[row.length :])
                self._forward_feeds(cache, start, members, feeds, keep=1)
                for slot, (row, feed) in enumerate(zip(members, feeds, strict=True), start):
                    row.length += len(feed)
                    self.tree.insert(row.adapter, row.prompt, cache.read(slot, row.length))
                    self.stats.shared_prefix_tokens += len(feed)
                    self.stats.computed_tokens += len(feed)

    def _shared_prefixes(self, rows: Sequence[Row]) -> list[tuple[str, tuple[int, ...]]]:
        """Distinct (adapter, prefix) pairs that ≥ 2 rows share beyond what the tree already holds."""
        found: set[tuple[str, tuple[int, ...]]] = set()
        ordered = sorted(rows, key=lambda r: (r.adapter, r.prompt))
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.adapter != b.adapter:
                continue
            shared = common_prefix_length([a.prompt, b.prompt], limit=min(len(a.prompt), len(b.prompt)) - 1)
            if shared < MIN_SHARED_PREFIX:
                continue
            cached, _ = self.tree.match(a.adapter, a.prompt[:shared])
            if shared - cached >= MIN_SHARED_PREFIX:
                found.add((a.adapter, tuple(a.prompt[:shared])))
        return sorted(found)

    def _prefill(
        self,
        cache: SlotCache,
        active: list[Row],
        start: int,
        params: SamplingParams,
        done: Callable[[Row], bool] | None,
    ) -> None:
        """Admit ``active[start:]`` into their slots: load cached prefixes, then one forward pass over
        every row's uncached prompt tokens and draft; choose each row's first tokens."""
        rows = active[start:]
        feeds = []
        for slot, row in enumerate(rows, start):
            cached, pieces = self.tree.match(row.adapter, row.prompt) if self.tree.enabled else (0, [])
            cached = min(cached, len(row.prompt) - 1)  # the last prompt token is always fed: its scores
            row.length = cache.load(slot, _trim(pieces, cached))
            feeds.append(row.prompt[cached:] + row.draft)
            self.stats.prompt_tokens += len(row.prompt)
            self.stats.cached_tokens += cached
            self.stats.computed_tokens += len(row.prompt) - cached
            self.stats.draft_tokens += len(row.draft)
        keep = max(len(r.draft) for r in rows) + 1
        logits = self._forward_feeds(cache, start, rows, feeds, keep)
        for index, (row, feed) in enumerate(zip(rows, feeds, strict=True)):
            row.length += len(feed)
            self._accept(row, logits[index, keep - len(row.draft) - 1 :], params, done)

    def _accept(
        self, row: Row, logits: torch.Tensor, params: SamplingParams, done: Callable[[Row], bool] | None
    ) -> None:
        """Choose the row's tokens from the scores of its last prompt token (``logits[0]``) and of its
        draft positions: the draft is kept while the model agrees with it. A draft position whose scores
        are a near-tie is recomputed by the next decode step instead."""
        draft, row.draft = row.draft, []
        base = len(row.prompt)
        for k in range(len(draft) + 1):
            token, margin = self._choose(row, logits[k], params)
            if k > 0 and margin < self.tie_margin:
                row.length, row.pending = base + k - 1, draft[k - 1]  # feed d[k-1] again, decide there
                return
            self._append(row, token, params, done)
            agrees = k < len(draft) and token == draft[k]
            self.stats.accepted_draft_tokens += int(agrees)
            if row.finish is not None or not agrees:
                row.length = base + k  # keys/values hold the prompt and draft[:k]
                return

    def _choose(self, row: Row, logits: torch.Tensor, params: SamplingParams) -> tuple[int, float]:
        """The row's next token from one position's logits, and the top-two margin of the scores."""
        if params.greedy or row.noise is None:
            scores = logits.float()
        else:
            scores = sampling_scores(logits, params) + row.noise.draw(len(row.generated))
        top = torch.topk(scores, 2)
        return int(top.indices[0]), float(top.values[0] - top.values[1])

    def _append(
        self, row: Row, token: int, params: SamplingParams, done: Callable[[Row], bool] | None
    ) -> None:
        if token in self.stop_ids:
            row.finish = "stop"
            return
        row.generated.append(token)
        if len(row.generated) >= params.max_new_tokens:
            row.finish = "length"
        elif done is not None and done(row):
            row.finish = "stop"
        else:
            row.pending = token

    # ------------------------------------------------------------------ decode
    def _decode_step(
        self, cache: SlotCache, active: list[Row], params: SamplingParams, done: Callable[[Row], bool] | None
    ) -> None:
        """Feed every active row its pending token; choose each row's next token."""
        ids = torch.tensor([[r.pending] for r in active], device=self.device)
        positions = torch.tensor([[r.length] for r in active], device=self.device)
        logits = self._forward(cache, (0, len(active)), ids, positions, active, [1] * len(active), 1)
        self.stats.decode_steps += 1
        for index, row in enumerate(active):
            row.length += 1
            row.pending = None
            token, _ = self._choose(row, logits[index, 0], params)
            self._append(row, token, params, done)

    def _retire(self, cache: SlotCache, active: list[Row]) -> list[Row]:
        """Put finished rows' keys/values in the tree and free their slots: the last running row moves
        into each freed slot, so the running rows stay in the leading slots at one row copy per finish."""
        kept = list(active)
        slot = 0
        while slot < len(kept):
            row = kept[slot]
            if row.finish is None and (row.pending is not None or row.draft):
                slot += 1
                continue
            if self.tree.enabled and row.length:
                self.tree.insert(row.adapter, row.fed, cache.read(slot, row.length))
            last = kept.pop()
            if slot < len(kept):
                cache.move(len(kept), slot, last.length)
                kept[slot] = last
        return kept

    # ------------------------------------------------------------------ the model
    def _forward_feeds(
        self, cache: SlotCache, start: int, rows: Sequence[Row], feeds: Sequence[list[int]], keep: int
    ) -> torch.Tensor:
        """One forward pass of slots ``start..`` on each row's ``feed`` (left-padded to a common width;
        the padding is written past each row's end and attended by nothing); logits of the last ``keep``
        inputs."""
        width = max(len(f) for f in feeds)
        cache.ensure_capacity(max(r.length for r in rows) + width + 1)
        ids = torch.tensor([[0] * (width - len(f)) + f for f in feeds], device=self.device)
        positions = torch.stack(
            [
                torch.cat(
                    [
                        torch.arange(r.length + len(f), r.length + width),
                        torch.arange(r.length, r.length + len(f)),
                    ]
                )
                for r, f in zip(rows, feeds, strict=True)
            ]
        ).to(self.device)
        return self._forward(
            cache, (start, start + len(rows)), ids, positions, rows, [len(f) for f in feeds], keep
        )

    def _forward(
        self,
        cache: SlotCache,
        rows: tuple[int, int],
        ids: torch.Tensor,
        positions: torch.Tensor,
        members: Sequence[Row],
        real: Sequence[int],
        keep: int,
    ) -> torch.Tensor:
        """One forward pass of slots ``rows`` on ``ids`` (left-padded; ``real[i]`` real tokens at the end of
        row i) written at ``positions``; returns the logits of the last ``keep`` inputs."""
        started = time.perf_counter()
        width = ids.shape[1]
        kv_length = int(positions.max()) + 1
        cache.rows, cache.positions, cache.kv_length = rows, positions, kv_length
        keys = torch.arange(kv_length, device=self.device)
        allowed = keys[None, None, :] <= positions[:, :, None]
        pads = (
            torch.arange(width, device=self.device)[None, :]
            < (width - torch.tensor(real, device=self.device))[:, None]
        )
        allowed = torch.where(pads[:, :, None], keys[None, None, :] == positions[:, :, None], allowed)
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        with self.adapter_context([r.adapter for r in members]) as extra:
            out = self.model(
                input_ids=ids,
                attention_mask=mask[:, None],
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=keep,
                **extra,
            )
        self.engine_stats.emit(
            BatchEvent(
                kind="decode" if width == 1 else "prefill",
                rows=len(members),
                positions=sum(real),
                padded=len(members) * width,
                adapters=len({r.adapter for r in members}),
                seconds=time.perf_counter() - started,
            )
        )
        return out.logits


def _trim(pieces: Sequence[torch.Tensor], length: int) -> list[torch.Tensor]:
    """The first ``length`` positions of a list of key/value pieces."""
    out, total = [], 0
    for piece in pieces:
        take = min(piece.shape[-2], length - total)
        if take <= 0:
            break
        out.append(piece[..., :take, :])
        total += take
    return out


def _extends(prefix: tuple[str, tuple[int, ...]], other: tuple[str, tuple[int, ...]]) -> bool:
    """Whether ``prefix`` is a longer prefix than ``other`` under the same adapter."""
    return prefix[0] == other[0] and len(prefix[1]) > len(other[1]) and prefix[1][: len(other[1])] == other[1]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), max(size, 1)):
        yield items[start : start + max(size, 1)]


def _token_groups(rows: Sequence[Row], budget: int) -> Iterator[list[Row]]:
    """Consecutive rows whose padded prefill (rows × longest prompt and draft) stays within ``budget``."""
    group: list[Row] = []
    for row in rows:
        widest = max([len(r.prompt) + len(r.draft) for r in group] + [len(row.prompt) + len(row.draft)])
        if group and widest * (len(group) + 1) > budget:
            yield group
            group = []
        group.append(row)
    if group:
        yield group
