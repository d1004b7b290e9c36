"""The stages of AdaptToken (method.md steps 0-9), each a function on an adapter and tensors.

- :func:`make_plan` (steps 0-1): frames, sizes, groups, prompt, every check of the
  configuration against the video and the model (positions within the trained context,
  step 9), before any model work.
- :func:`encode_group` (step 1): decode and vision tower; independent of the question, so
  one encoding can serve several questions about the same video.
- :func:`score_group` (steps 2-4): the group pass for a question: attention scores of the
  visual tokens and the answer entropy.
- :func:`scan_groups` (steps 2-4 and 8): every group in turn, with Lite's stop, keeping a
  bounded set of candidates (:class:`selection.GroupCandidates`).
- :func:`allocate_and_select` (steps 5-7): budgets, per-group top-k, redundancy removal.
- :func:`final_pass` (step 9): the kept tokens (M-RoPE: at their full-video positions; 1-D
  RoPE: compact), greedy decoding.

The adapter (:class:`~adapttoken_ext.models.base.VideoAdapter`) hides the model family.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import ops, selection
from .config import MC_INSTRUCTION, AdaptTokenConfig
from .models.base import Clip, Prompt, Sequence, Visual
from .video import VideoInfo, sample_frame_indices

STAGES = ("decode", "vision_encoder", "group_prefill", "scoring", "entropy", "selection",
          "final_prefill", "generate")


class Timer:
    """Seconds per stage of :data:`STAGES`; synchronises every CUDA device around each
    stage when ``cuda`` (a model may span several)."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda
        self.t = {s: 0.0 for s in STAGES}

    def _sync(self):
        for i in range(torch.cuda.device_count() if self.cuda else 0):
            torch.cuda.synchronize(i)

    @contextmanager
    def __call__(self, stage):
        self._sync()
        t0 = time.perf_counter()
        yield
        self._sync()
        self.t[stage] += time.perf_counter() - t0


# ---- plan (steps 0-1) ---------------------------------------------------------------------

@dataclass
class Plan:
    """Everything decided before the first group pass (method.md steps 0-1).

    ``frames``: sampled frame indices; ``frame_times_s``: their times in seconds;
    ``size``: (H, W) pixels of every frame; ``grid``: (rows, cols) visual tokens per unit;
    ``groups``: units of each group in visit order; ``capacity``: int64 ``[G]`` visual
    tokens per group; ``option_ids``: per option letter its token ids (option-letter
    entropy) or None (full vocabulary); ``stop_threshold``: Lite's tau in nats.
    """
    unit: int
    frames: list[int]
    frame_times_s: list[float]
    size: tuple[int, int]
    grid: tuple[int, int]
    groups: list[list[int]]
    capacity: torch.Tensor
    seconds_per_unit: float
    group_stride: int
    prompt: Prompt
    option_ids: list[list[int]] | None
    stop_threshold: float
    max_new_tokens: int
    full: Sequence | None = dataclasses.field(default=None, repr=False)
    """The whole video's unpruned sequence (built by the position check; the final pass
    prunes it)."""

    @property
    def tokens_per_unit(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_units(self) -> int:
        return len(self.frames) // self.unit

    def unit_frames(self, units) -> list[int]:
        return [self.frames[u * self.unit + j] for u in units for j in range(self.unit)]

    def full_sequence(self, adapter) -> Sequence:
        """The whole video's unpruned sequence by the adapter's rules (built once)."""
        if self.full is None:
            self.full = adapter.sequence(self.prompt, self.clip(range(self.num_units), whole_video=True), self.grid)
        return self.full

    def clip(self, units, whole_video: bool = False) -> Clip:
        """A group (a short video whose units are ``group_stride`` apart) or the whole video."""
        spu = self.seconds_per_unit * (1 if whole_video else self.group_stride)
        t, n = self.frame_times_s, self.unit
        return Clip(list(units), [(t[u * n] + t[u * n + n - 1]) / 2 for u in units], spu,
                    [t[u * n + j] for u in units for j in range(n)])


_LETTERS = re.compile(r"^\s*\(?([A-Z])\s*[.):]\s*\S")


def parse_options(options) -> list[str]:
    """Option letters of ``["A. text", "B. text", ...]`` (also ``"A) text"``, ``"(A) text"``).

    Raises:
        ValueError: naming ``options`` for an unknown format or a repeated letter.
    """
    letters = []
    for o in options:
        m = _LETTERS.match(o) if isinstance(o, str) else None
        if m is None:
            raise ValueError(f"options: unknown option format {o!r}; expected 'A. text'")
        letters.append(m.group(1))
    if len(set(letters)) != len(letters):
        raise ValueError(f"options: repeated option letter in {letters}")
    return letters


def make_plan(adapter, info: VideoInfo, cfg: AdaptTokenConfig, question: str,
              options: list[str] | None) -> Plan:
    """Sample frames, size them, group the units, render the prompt (method.md steps 0-1),
    and check every setting that depends on the video or the model, including that the
    final pass stays within the model's positions (:func:`check_positions`, step 9).

    Raises:
        ValueError: naming ``question``, ``options`` or the config field at fault
            (``frames``/``budget`` for positions past ``max_position_embeddings``).
    """
    cfg.validate()
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question: must be a non-empty string")
    letters = parse_options(options) if options else []
    mode = cfg.entropy_mode if cfg.entropy_mode != "auto" else ("options" if letters else "vocab")
    if mode == "options" and not letters:
        raise ValueError("entropy_mode: 'options' needs options")
    idx = sample_frame_indices(info.num_frames, cfg.frames, adapter.unit, info.timestamps_s)
    H, W = adapter.frame_size(info.height, info.width, cfg.max_pixels)
    rows, cols = adapter.unit_grid(H, W)
    groups = selection.make_groups(len(idx) // adapter.unit, cfg.units_per_group, cfg.group_layout)
    capacity = torch.tensor([len(g) * rows * cols for g in groups])
    if int(capacity.clamp(max=cfg.per_group_floor).sum()) > cfg.budget:
        raise ValueError(f"per_group_floor: {cfg.per_group_floor} tokens for each of {len(groups)} "
                         f"groups exceeds the budget {cfg.budget}")
    instruction = cfg.instruction if cfg.instruction is not None else (MC_INSTRUCTION if letters else None)
    option_ids = adapter.option_token_ids(letters) if mode == "options" else None
    tau = cfg.stop_threshold if cfg.stop_threshold is not None else selection.stop_threshold(
        len(letters) if option_ids else None)
    if not info.fps > 0:  # a stream without a rate: 1 frame per second
        info = dataclasses.replace(info, fps=1.0)
    plan = Plan(
        unit=adapter.unit, frames=idx, frame_times_s=[info.frame_time(i) for i in idx], size=(H, W),
        grid=(rows, cols), groups=groups, capacity=capacity,
        # the processor's rule: temporal patch size / sampling rate (frames over the duration)
        seconds_per_unit=info.duration_s * adapter.unit / len(idx),
        group_stride=len(groups) if cfg.group_layout == "interleaved" else 1,
        prompt=adapter.prompt(question, options, instruction), option_ids=option_ids,
        stop_threshold=tau, max_new_tokens=cfg.max_new_tokens or (16 if letters else 128))
    check_positions(adapter, plan, cfg.budget)
    return plan


def check_positions(adapter, plan: Plan, budget: int) -> None:
    """No position of the final pass may reach the language model's
    ``max_position_embeddings`` (method.md step 9): the prefill's largest possible position
    (:meth:`~.models.base.Sequence.final_position_bound` of the full sequence) plus the
    ``max_new_tokens`` generated tokens. Integer work on the whole video's sequence only.

    Raises:
        ValueError: naming ``frames``/``budget``, with the positions needed and the limit.
    """
    limit = getattr(adapter.text_config, "max_position_embeddings", None)
    if not limit:
        return
    full = plan.full_sequence(adapter)
    last = full.final_position_bound(budget) + plan.max_new_tokens
    if last >= limit:
        what = ("lower budget or frames (each kept frame's text counts)" if full.compact
                else "lower frames (M-RoPE positions span the whole video)")
        raise ValueError(f"frames/budget: the final pass could reach position {last} with "
                         f"{len(plan.frames)} frames and budget {budget}, past the model's "
                         f"max_position_embeddings {limit}; {what}")


# ---- encoding and scoring one group (steps 1-4) -------------------------------------------

@dataclass
class GroupEncoding:
    """A group's visual tokens (question-independent): ``visual`` rows in (unit, h, w)
    raster order of ``units``; ``local``: EntropySelect's score of each row (float32
    ``[N]``, host) when :func:`encode_group` was given a scorer."""
    units: list[int]
    visual: Visual
    local: torch.Tensor | None = None


def encode_group(adapter, reader, plan: Plan, g: int, timer: Timer | None = None,
                 scorer=None) -> GroupEncoding:
    """Decode group ``g``'s frames and run the vision tower (method.md step 1). With an
    :class:`~adapttoken_ext.entropyselect.EntropySelect` ``scorer``, also score the tokens
    from them and the frames (timed as ``scoring``); each unit's frames form one grid."""
    timer = timer or Timer()
    units = plan.groups[g]
    with timer("decode"):
        frames = reader.get_frames(plan.unit_frames(units), *plan.size)
    with timer("vision_encoder"):
        visual = adapter.encode(frames)
    enc = GroupEncoding(units, visual)
    if scorer is not None:
        with timer("scoring"):
            tokens = visual.embeds.view(len(units), *plan.grid, -1)
            enc.local = scorer.scores(tokens, frames).flatten().cpu()
    return enc


@dataclass
class GroupScores:
    """A group pass's result: ``entropy`` in nats; ``scores`` float32 ``[N]`` on the host,
    in the encoding's row order; ``max_entropy``: ``ln K`` or ``ln V``, its upper bound."""
    entropy: float
    scores: torch.Tensor
    max_entropy: float


def score_group(adapter, capture, plan: Plan, enc: GroupEncoding, reduce: str = "max",
                timer: Timer | None = None, scorer: str = "attention") -> GroupScores:
    """The group pass for the question (method.md steps 2-4).

    Prefills ``[prefix][group's visual tokens][question...]`` at compact positions (the
    group as a short video), scores every visual key with the text queries after the video
    at the reference layer (``capture``), and takes the answer entropy at the last position.
    ``scorer`` (``AdaptTokenConfig.scorer``) ``"local_entropy"`` ranks by ``enc.local``
    instead, ``"fused"`` by the attention score over the group's maximum times ``enc.local``.
    """
    timer = timer or Timer()
    with timer("group_prefill"):
        seq = adapter.sequence(plan.prompt, plan.clip(enc.units), plan.grid)
        vs, ve = seq.visual_span()
        capture.arm(ve, vs, ve, reduce)
        try:
            logits, _ = adapter.prefill(seq, enc.visual)
        finally:  # a failed forward must not leave the capture armed for the next one
            capture.disarm()
        span = capture.take()[0]
    timer.t["scoring"] += capture.elapsed
    timer.t["group_prefill"] -= capture.elapsed
    with timer("scoring"):
        scores = span[(seq.visual_columns - vs).to(span.device)].cpu()
        if scorer == "local_entropy":
            scores = enc.local
        elif scorer == "fused":
            top = scores.max()
            scores = torch.where(top > 0, scores / top.clamp(min=1e-30), 0.0) * enc.local
    with timer("entropy"):
        h = float(answer_entropy(logits, plan.option_ids))
    k = len(plan.option_ids) if plan.option_ids else logits.shape[-1]
    return GroupScores(h, scores, math.log(k))


def answer_entropy(logits: torch.Tensor, option_ids: list[list[int]] | None) -> torch.Tensor:
    """Entropy (nats) of the answer distribution (method.md step 4): over the option letters,
    each letter's logit the log-sum-exp of its surface forms, or over the full vocabulary."""
    logits = logits.float()
    if option_ids is None:
        return ops.softmax_entropy(logits)
    letter = torch.stack([logits[torch.tensor(f, device=logits.device)].logsumexp(0) for f in option_ids])
    return ops.softmax_entropy(letter)


# ---- the scan over groups (steps 2-4, 8) ----------------------------------------------------

def rank_group(enc: GroupEncoding, scores: torch.Tensor, limit: int, tpu: int,
               counter: selection.RowCounter) -> selection.GroupCandidates:
    """A group's tokens ranked by score (descending, ties to the lower index, NaN last;
    method.md step 6), holding the embeddings and side rows of the first ``limit`` ranks."""
    n = scores.numel()
    val, rows = ops.segmented_topk(scores, torch.tensor([0, n]), torch.tensor([n]), False)
    keys = torch.tensor(enc.units)[rows // tpu] * tpu + rows % tpu
    return selection.GroupCandidates(keys, val, rows, enc.visual.embeds, enc.visual.side,
                                     hold=limit, counter=counter)


@dataclass
class GroupRecord:
    """One visited group: its sampled video frame indices, visual tokens, entropy (nats;
    None under EntropySelect, which has no group pass), budget ``B_g``, the number of
    tokens finally selected from it, ``redundant``: how many of its tokens step 7 dropped
    as redundant, and ``ran_out``: it kept fewer than ``B_g`` because its non-redundant
    candidates ran out (every token was walked, method.md step 7)."""
    index: int
    frames: list[int]
    num_tokens: int
    entropy: float | None
    budget: int = 0
    selected: int = 0
    redundant: int = 0
    ran_out: bool = False


def scan_groups(adapter, capture, reader, plan: Plan, cfg: AdaptTokenConfig, timer: Timer,
                progress: bool = False, encode=None, entropy_weighted: bool = True):
    """Visit the groups in order (method.md steps 2-4), stopping early under Lite (step 8).
    ``encode(g) -> GroupEncoding`` replaces :func:`encode_group` (e.g. a cache of encodings).

    Each visited group's tokens are ranked (:func:`rank_group`); embeddings are held for
    the first ``headroom * bound_g`` ranks only, ``bound_g`` being the largest budget any
    completion of the run can still give the group (:func:`selection.budget_bound`), so the
    rows held stay within ``headroom * (B + V)`` for ``V`` visited groups, whatever the
    frame count (``headroom`` 2 with redundancy removal, else 1). ``entropy_weighted``
    False: the bounds of equal group weights (as :func:`allocate_and_select`'s).

    Returns:
        ``(records, candidates, stopped)``: a :class:`GroupRecord` and a
        :class:`selection.GroupCandidates` per visited group, and the index of the group
        after which Lite stopped (or None).
    """
    pool, counter = [], selection.RowCounter()
    headroom = 2 if cfg.redundancy_threshold is not None else 1
    records, stopped = [], None
    bar = progress_bar(range(len(plan.groups)), progress, desc="groups")
    local = cfg.entropy_select() if cfg.scorer != "attention" else None
    if encode is not None and local is not None:  # the cache holds no frames to score
        raise ValueError(f"scorer: {cfg.scorer!r} needs the frames; cached encodings serve 'attention' only")
    for g in bar:
        enc = encode(g) if encode else encode_group(adapter, reader, plan, g, timer, local)
        res = score_group(adapter, capture, plan, enc, cfg.reduce, timer, cfg.scorer)
        h = res.entropy
        records.append(GroupRecord(g, plan.unit_frames(plan.groups[g]), res.scores.numel(), h))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(entropy=f"{h:.3f}")
        forced = cfg.force_stop_after is not None and g + 1 >= cfg.force_stop_after
        last = g + 1 == len(plan.groups)
        if (forced or (cfg.lite and h < plan.stop_threshold)) and not last:  # step 8
            stopped = g
        with timer("selection"):  # hold only embeddings some completion of the run can use
            final = stopped is not None or last
            bounds = selection.budget_bound(
                _weights(records, entropy_weighted),
                plan.capacity[: len(records)] if final else plan.capacity, cfg.budget,
                res.max_entropy if entropy_weighted else 0.0,
                cfg.temperature, cfg.per_group_floor, cfg.lite or cfg.force_stop_after is not None)
            for c, bound in zip(pool, bounds[:-1].tolist()):
                c.trim(headroom * bound)
            pool.append(rank_group(enc, res.scores, headroom * int(bounds[-1]), plan.tokens_per_unit, counter))
        del enc
        if stopped is not None:
            break
    if hasattr(bar, "close"):
        bar.close()
    return records, pool, stopped


# ---- allocation and selection (steps 5-7) --------------------------------------------------

def _weights(records: list[GroupRecord], entropy_weighted: bool) -> torch.Tensor:
    """Step 5's entropies: the groups' own, or all 0 (equal weights) when not ``entropy_weighted``."""
    h = torch.tensor([r.entropy for r in records], dtype=torch.float64)
    return h if entropy_weighted else torch.zeros_like(h)


def allocate_and_select(plan: Plan, cfg: AdaptTokenConfig, records: list[GroupRecord],
                        candidates: list[selection.GroupCandidates],
                        encode=None, entropy_weighted: bool = True
                        ) -> tuple[torch.Tensor, torch.Tensor, Visual]:
    """Budgets by entropy (step 5; ``entropy_weighted`` False: every group the same weight,
    FlexSelect's rule), per-group top-``B_g`` (step 6) and location-aware
    redundancy removal with refill (step 7) over the visited groups
    (:func:`selection.select_tokens`).

    ``encode(g) -> GroupEncoding`` re-encodes group ``g`` when the refill needs tokens
    beyond those its candidates hold (the policy is :class:`selection.GroupCandidates`').
    Fills each record's ``budget``, ``selected``, ``redundant`` and ``ran_out``.

    Returns:
        ``(keys, scores, visual)`` of the kept tokens in ascending key (temporal, raster)
        order: int64 ``[K]``, float32 ``[K]``, and their :class:`Visual` (embeddings and
        side inputs) on the host.
    """
    V = len(records)
    budgets = selection.allocate_budget(_weights(records, entropy_weighted),
                                        plan.capacity[:V], cfg.budget, cfg.temperature,
                                        cfg.per_group_floor)
    encoded = torch.tensor(sorted(u for g in range(V) for u in plan.groups[g]))
    def reencode(g):
        v = encode(g).visual
        return v.embeds, v.side
    for g, c in enumerate(candidates):
        if encode is not None:
            c.encode = functools.partial(reencode, g)
    keep = selection.select_tokens(candidates, budgets, plan.tokens_per_unit, encoded,
                                   cfg.redundancy_threshold)
    keys = torch.cat([c.keys[k] for c, k in zip(candidates, keep)])
    scores = torch.cat([c.scores[k] for c, k in zip(candidates, keep)])
    visual = Visual.cat([Visual(*c.take(k)) for c, k in zip(candidates, keep)])
    order = torch.argsort(keys)
    for r, b, k, c in zip(records, budgets.tolist(), keep, candidates):
        r.budget, r.selected, r.redundant = b, k.numel(), c.redundant
        r.ran_out = k.numel() < b
    return keys[order], scores[order], visual.take(order)


# ---- final pass (step 9) ------------------------------------------------------------------

def final_pass(adapter, plan: Plan, keys: torch.Tensor, visual: Visual,
               timer: Timer | None = None) -> list[int]:
    """Answer from the kept tokens (method.md step 9): the full unpruned sequence from the
    adapter's rules, its kept columns in original order (M-RoPE: at their full-video
    positions; 1-D RoPE: at compact positions ``0..len-1``), one prefill, greedy decoding.
    ``keys`` ascending, ``visual`` in the same order."""
    timer = timer or Timer()
    with timer("final_prefill"):
        logits, state = adapter.prefill(plan.full_sequence(adapter).prune(keys), visual, use_cache=True)
    with timer("generate"):
        return greedy_decode(adapter, logits, state, plan.max_new_tokens)


def greedy_decode(adapter, logits, state, max_new_tokens: int) -> list[int]:
    """Greedy generation after a prefill (method.md step 9): the adapter's decode state
    places generated token ``s`` at the pruned sequence's ``next_position + s`` (M-RoPE:
    the full sequence's maximum position + 1; 1-D RoPE: the pruned length). Stops at any
    of ``adapter.eos_token_ids``."""
    out = []
    for step in range(max_new_tokens):
        nxt = int(logits.argmax())
        if nxt in adapter.eos_token_ids:
            break
        out.append(nxt)
        if step + 1 < max_new_tokens:
            logits, state = adapter.decode_step(state, nxt)
    return out


def progress_bar(it, enabled, **kw):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, **kw)
