"""AdaptToken and AdaptToken-Lite: answer a question about a long video (method.md steps 0-9).

:meth:`AdaptToken.answer` composes the plan (``adapttoken_ext.stages``, steps 0-1), a
selection method looked up by name (``adapttoken_ext.methods``; AdaptToken's own: group scan,
steps 2-4 and 8, allocation and selection, steps 5-7) and the shared final pass (step 9).
Model specifics live in the adapter (``adapttoken_ext.models``), the selection maths in
``adapttoken_ext.selection``, the kernels in ``torch.ops.adapttoken``.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from dataclasses import asdict, dataclass, field

import torch

from . import methods, stages
from .config import AdaptTokenConfig
from .stages import STAGES, GroupRecord, greedy_decode, parse_options
from .video import VideoReader
from .visual_cache import CachedEncoder, VisualCache, video_key

__all__ = ["AdaptToken", "AdaptTokenResult", "GroupRecord", "parse_options", "greedy_decode", "STAGES"]

@dataclass
class AdaptTokenResult:
    """What :meth:`AdaptToken.answer` returns. ``frames``: the sampled frame indices;
    ``timestamps_s``: their presentation times in seconds (method.md step 0).
    ``selected_tokens`` lists dicts ``{frame, time_s, h, w, score}``: the first video frame
    of the token's unit and its time, its row and column in the merged token grid, and its
    attention score (EntropySelect's fused score under ``scorer="local_entropy"`` or
    ``method="entropyselect"``; 0 under ``uniform`` and ``random``, which rank nothing).
    ``method``: the selection method's name (:data:`adapttoken_ext.methods.METHODS`).
    ``timings_s`` has one entry per
    stage in :data:`STAGES` plus ``total``; ``peak_memory_bytes`` has ``host_rss`` and, on
    GPU, ``cuda``. ``candidate_rows_peak``: the most candidate embeddings held on the
    host at once (rows of ``hidden``); ``reencodes``: groups encoded again for step 7's
    refill (at most one per group on static video). ``budget_used``: the tokens the groups
    could be given, ``min(budget, visual tokens of the visited groups)`` (method.md step 5);
    ``budget_capped``: ``budget`` exceeded those tokens, so ``budget_used`` is smaller.
    Each group's ``redundant`` and ``ran_out`` say why fewer than ``budget_used`` tokens
    can be kept (step 7).
    ``stop_threshold``: Lite's tau in nats (method.md step 8) when ``lite`` is on, else None."""
    answer: str
    model: str
    frames: list[int]
    timestamps_s: list[float]
    groups: list[GroupRecord]
    budget: int
    selected_tokens: list[dict]
    stopped_after_group: int | None
    timings_s: dict
    peak_memory_bytes: dict
    tiny_model: bool = False
    candidate_rows_peak: int = 0
    reencodes: int = 0
    budget_used: int = 0
    budget_capped: bool = False
    method: str = "adapttoken"
    stop_threshold: float | None = None
    grid: tuple = field(default=(0, 0))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("grid")
        return d

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The result as JSON; written to ``path`` (atomically) when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            tmp = f"{path}.partial"
            try:
                with open(tmp, "w") as f:
                    f.write(text)
                os.replace(tmp, path)
            finally:  # a failed write leaves nothing behind
                if os.path.exists(tmp):
                    os.remove(tmp)
        return text


def _host_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class AdaptToken:
    """AdaptToken on a loaded model.

    Args:
        adapter: a model adapter (:class:`adapttoken_ext.models.base.VideoAdapter`), or use
            :meth:`from_pretrained`.
        config: :class:`AdaptTokenConfig`; defaults follow method.md.

    Raises:
        ValueError: naming the config field at fault (``reference_layer`` out of range, ...).
    """

    def __init__(self, adapter, config: AdaptTokenConfig | None = None, name: str = "",
                 tiny: bool = False):
        self.adapter = adapter
        self.config = (config or AdaptTokenConfig()).validate()
        self.name = name or getattr(adapter.model.config, "_name_or_path", "")
        self.tiny = tiny
        layer = self.config.reference_layer
        self.reference_layer = adapter.default_reference_layer() if layer is None else layer
        self.capture = adapter.install_score_hook(self.reference_layer)
        self.visual_cache = VisualCache(int(self.config.visual_cache_gb * 2**30))
        """Group encodings reused by :meth:`answer_many` (host memory)."""

    def close(self) -> None:
        """Detach this pipeline's score hook. Once every pipeline on the model is closed,
        the model is left exactly as it was loaded. Also ``with AdaptToken(...) as at:``."""
        self.capture.remove()

    def __enter__(self) -> "AdaptToken":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def from_pretrained(cls, model: str | None = None, config: AdaptTokenConfig | None = None,
                        device: str = "cpu", dtype=None, device_map=None,
                        attn_implementation: str | None = None,
                        family: str = "qwen2_5_vl") -> "AdaptToken":
        """Load a checkpoint (hub id or local path); its ``model_type`` picks the adapter
        (``adapttoken_ext.models.load``). ``model=None`` builds/loads the offline tiny
        checkpoint of ``family`` (a ``model_type``) with random weights (its answers are
        meaningless); ``model="needle"`` the trained needle checkpoint of ``family``
        (``qwen2_5_vl`` or ``llava_onevision``: tiny models that answer the built-in needle
        questions of ``adapttoken_ext.niah``, Qwen2.5-VL's on frames of at most
        ``niah.NEEDLE_MAX_PIXELS`` pixels; README "Needle in a haystack"). ``device_map`` (None, ``"auto"`` or a dict) splits a large model
        across devices.

        Raises:
            ValueError: no adapter for the checkpoint's ``model_type``, or no tiny ``family``.
        """
        from . import models
        from .models.tiny import (FAMILIES, NEEDLE_FAMILIES, ensure_needle_model, ensure_tiny_model,
                                  needle_model_id, tiny_model_id)
        family = next((f for f in FAMILIES if model in (tiny_model_id(f), needle_model_id(f))), family)
        tiny = model is None or model == tiny_model_id(family)
        name, path = model, model
        if tiny:
            name, path = tiny_model_id(family), str(ensure_tiny_model(family))
        elif model in ("needle", needle_model_id(family)):  # a trained needle checkpoint (README)
            if family not in NEEDLE_FAMILIES:
                raise ValueError(f"family: no needle checkpoint for {family!r} (trained: "
                                 f"{', '.join(NEEDLE_FAMILIES)})")
            name, path = needle_model_id(family), str(ensure_needle_model(family))
        adapter = models.load(path, device=device, dtype=dtype, device_map=device_map,
                              attn_implementation=attn_implementation)
        return cls(adapter, config, name=name, tiny=tiny)

    def answer(self, video, question: str, options: list[str] | None = None,
               progress: bool = True, method: str = "adapttoken") -> AdaptTokenResult:
        """Answer ``question`` about ``video`` (method.md steps 0-9).

        Args:
            video: path of a video file, or an open reader with ``VideoReader``'s
                interface (``info``, ``plan``, ``get_frames``; e.g.
                :class:`adapttoken_ext.niah.NeedleVideo`), used and left open.
            question: non-empty text.
            options: optional ``["A. ...", "B. ...", ...]``; enables option-letter entropy.
            progress: show a tqdm bar over groups.
            method: the token selection, one of :data:`adapttoken_ext.methods.METHODS`
                (README "Baselines"): ``"adapttoken"`` (method.md steps 1-8), ``"uniform"``,
                ``"flexselect"``, ``"entropyselect"`` or ``"random"``; all at ``budget``,
                all answered by the same final pass (step 9).

        Raises:
            FileNotFoundError: ``video`` does not exist.
            ValueError: naming the argument: not a video, no frames, empty question, bad
                options, an unknown ``method`` or a setting it does not take, or a bad
                config field; all raised before the first group pass.
        """
        methods.get(method).check(self.config)
        return self._answer_all(video, [(question, options)], progress, None, method)[0]

    def answer_many(self, video, questions, progress: bool = True,
                    method: str = "adapttoken") -> list[AdaptTokenResult]:
        """Answer several questions about one video, decoding and encoding each group once
        (method.md step 1 is question-independent; steps 2-9 run per question).

        Encodings stay in :attr:`visual_cache` (host memory, at most
        ``config.visual_cache_gb``), also across calls: asking about the same file again
        (same path, size and mtime) reuses them. Results equal :meth:`answer`'s, timings aside.
        With ``config.scorer`` other than ``"attention"`` the groups are encoded per question:
        the local-entropy scorer needs the frames, which the cache does not hold.

        Args:
            video: path of a video file, or an open reader as in :meth:`answer` (then
                nothing is cached).
            questions: a list of question strings or ``(question, options)`` pairs.
            progress: show a tqdm bar over groups.
            method: as in :meth:`answer` (only ``adapttoken`` and ``flexselect`` use the
                cached group encodings).

        Returns:
            one :class:`AdaptTokenResult` per question, in order.

        Raises:
            FileNotFoundError, ValueError: as :meth:`answer`, for any question, before any
                model work; ``questions`` not a list of strings or pairs.
        """
        if isinstance(questions, str) or not isinstance(questions, (list, tuple)):
            raise ValueError("questions: must be a list of questions or (question, options) pairs")
        items = [(q, None) if isinstance(q, str) else tuple(q) for q in questions]
        if any(len(i) != 2 for i in items):
            raise ValueError("questions: each item must be a question or a (question, options) pair")
        methods.get(method).check(self.config)
        cache = self.visual_cache if self.config.scorer == "attention" else None
        return self._answer_all(video, items, progress, cache, method)

    def _answer_all(self, video, items, progress, cache, method="adapttoken") -> list[AdaptTokenResult]:
        cfg, ad = self.config, self.adapter
        t_start = time.perf_counter()
        is_reader = hasattr(video, "get_frames")
        vkey = video_key(video) if cache is not None and not is_reader else None
        cache = cache if vkey is not None else None
        with (contextlib.nullcontext(video) if is_reader else
              VideoReader(video, cache_bytes=cfg.decode_cache_mb << 20, decoder=cfg.decoder)) as reader:
            plans = [stages.make_plan(ad, reader.info, cfg, q, o) for q, o in items]
            out = []
            for plan in plans:
                out.append(self._run(reader, plan, progress, cache, vkey, t_start, method))
                t_start = time.perf_counter()
        return out

    def _run(self, reader, plan, progress, cache, vkey, t_start, method) -> AdaptTokenResult:
        """Steps 1-9 for one question on an open reader; ``cache`` (or None) serves encodings."""
        cfg, ad = self.config, self.adapter
        cuda = ad.input_device.type == "cuda" or any(p.is_cuda for p in ad.model.parameters())
        for i in range(torch.cuda.device_count() if cuda else 0):
            torch.cuda.reset_peak_memory_stats(i)
        timer = stages.Timer(cuda)
        encode = None
        if cache is not None:
            encode = CachedEncoder(cache, vkey, (self.name, str(ad.model.dtype)), ad, reader, plan, timer)
            # announce only the frames of groups that still need decoding
            todo = [g for g in range(len(plan.groups)) if not encode.cached(g)]
            reader.plan(plan.unit_frames([u for g in todo for u in plan.groups[g]]), *plan.size)
        else:
            reader.plan(plan.frames, *plan.size)
        sel = methods.get(method).select(methods.Context(ad, self.capture, reader, plan, cfg, timer,
                                                         progress, encode))
        records, keys, scores = sel.records, sel.keys, sel.scores
        out_ids = stages.final_pass(ad, plan, keys, sel.visual, timer)
        sel_stopped, rows_peak, reencodes = sel.stopped, sel.rows_peak, sel.reencodes
        del sel  # the kept embeddings
        timings = dict(timer.t)
        timings["total"] = time.perf_counter() - t_start
        mem = {"host_rss": _host_peak_rss()}
        if cuda:  # the most any one device held
            mem["cuda"] = max(int(torch.cuda.max_memory_allocated(i)) for i in range(torch.cuda.device_count()))
        rows, cols = plan.grid
        tpu = rows * cols
        tokens = [{"frame": plan.frames[k // tpu * plan.unit], "time_s": plan.frame_times_s[k // tpu * plan.unit],
                   "h": k % tpu // cols, "w": k % cols, "score": s}
                  for k, s in zip(keys.tolist(), scores.tolist())]
        return AdaptTokenResult(
            answer=ad.decode(out_ids).strip(), model=self.name, frames=plan.frames,
            timestamps_s=plan.frame_times_s, groups=records,
            budget=cfg.budget, selected_tokens=tokens, stopped_after_group=sel_stopped,
            timings_s=timings, peak_memory_bytes=mem, tiny_model=self.tiny,
            candidate_rows_peak=rows_peak, reencodes=reencodes,
            budget_used=sum(r.budget for r in records),
            budget_capped=cfg.budget > sum(r.num_tokens for r in records), method=method, grid=plan.grid,
            stop_threshold=plan.stop_threshold if cfg.lite else None)
