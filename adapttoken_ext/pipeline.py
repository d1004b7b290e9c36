"""AdaptToken and AdaptToken-Lite: answer a question about a long video (method.md steps 0-9).

The loop over groups and the final pass. Model specifics live in the adapter
(``adapttoken_ext.models``); the selection maths in ``adapttoken_ext.selection``; the
kernels in ``torch.ops.adapttoken``.
"""
from __future__ import annotations

import json
import math
import os
import re
import resource
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

from . import ops, selection
from .config import MC_INSTRUCTION, AdaptTokenConfig
from .video import VideoReader, sample_frame_indices

__all__ = ["AdaptToken", "AdaptTokenResult", "GroupRecord", "parse_options", "STAGES"]

STAGES = ("decode", "vision_encoder", "group_prefill", "scoring", "entropy", "selection",
          "final_prefill", "generate")
_OPTION = re.compile(r"^\s*\(?([A-Z])\s*[.):]\s*\S")


def parse_options(options) -> list[str]:
    """Option letters of ``["A. text", "B. text", ...]`` (also ``"A) text"``, ``"(A) text"``).

    Raises:
        ValueError: naming ``options`` for an unknown format or a repeated letter.
    """
    letters = []
    for o in options:
        m = _OPTION.match(o) if isinstance(o, str) else None
        if m is None:
            raise ValueError(f"options: unknown option format {o!r}; expected 'A. text'")
        letters.append(m.group(1))
    if len(set(letters)) != len(letters):
        raise ValueError(f"options: repeated option letter in {letters}")
    return letters


@dataclass
class GroupRecord:
    """One visited group: its sampled video frame indices, visual tokens, entropy (nats),
    budget ``B_g`` and the number of tokens finally selected from it."""
    index: int
    frames: list[int]
    num_tokens: int
    entropy: float
    budget: int = 0
    selected: int = 0


@dataclass
class AdaptTokenResult:
    """What :meth:`AdaptToken.answer` returns. ``selected_tokens`` lists dicts
    ``{frame, h, w, score}``: the first video frame of the token's unit, its row and column
    in the merged token grid, and its attention score. ``timings_s`` has one entry per
    stage in :data:`STAGES` plus ``total``; ``peak_memory_bytes`` has ``host_rss`` and, on
    GPU, ``cuda``."""
    answer: str
    model: str
    frames: list[int]
    groups: list[GroupRecord]
    budget: int
    selected_tokens: list[dict]
    stopped_after_group: int | None
    timings_s: dict
    peak_memory_bytes: dict
    tiny_model: bool = False
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
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return text


class _Timer:
    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.t = {s: 0.0 for s in STAGES}

    @contextmanager
    def __call__(self, stage):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.t[stage] += time.perf_counter() - t0


def _host_peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class AdaptToken:
    """AdaptToken on a loaded model.

    Args:
        adapter: a model adapter (``adapttoken_ext.models``), or use :meth:`from_pretrained`.
        config: :class:`AdaptTokenConfig`; defaults follow method.md.
    """

    def __init__(self, adapter, config: AdaptTokenConfig | None = None, name: str = "",
                 tiny: bool = False):
        self.adapter = adapter
        self.config = (config or AdaptTokenConfig()).validate()
        self.name = name or getattr(adapter.model.config, "_name_or_path", "")
        self.tiny = tiny
        layer = self.config.reference_layer
        self.reference_layer = adapter.default_reference_layer() if layer is None else layer
        self.capture = adapter.install_hook(self.reference_layer)

    @classmethod
    def from_pretrained(cls, model: str | None = None, config: AdaptTokenConfig | None = None,
                        device: str = "cpu", dtype=None) -> "AdaptToken":
        """Load a checkpoint (hub id or local path). ``model=None`` builds/loads the offline
        tiny Qwen2.5-VL with random weights (its answers are meaningless)."""
        from . import models
        from .models.tiny import TINY_MODEL_ID, ensure_tiny_model
        tiny = model in (None, TINY_MODEL_ID)
        path = str(ensure_tiny_model()) if tiny else model
        return cls(models.load(path, device=device, dtype=dtype), config,
                   name=TINY_MODEL_ID if tiny else model, tiny=tiny)

    # ------------------------------------------------------------------------------------
    def answer(self, video, question: str, options: list[str] | None = None,
               progress: bool = True) -> AdaptTokenResult:
        """Answer ``question`` about ``video`` (method.md steps 0-9).

        Args:
            video: path of a video file.
            question: non-empty text.
            options: optional ``["A. ...", "B. ...", ...]``; enables option-letter entropy.
            progress: show a tqdm bar over groups.

        Raises:
            FileNotFoundError: ``video`` does not exist.
            ValueError: naming the argument: not a video, no frames, empty question, bad
                options, or a bad config field.
        """
        cfg, ad = self.config, self.adapter
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question: must be a non-empty string")
        letters = parse_options(options) if options else []
        mode = cfg.entropy_mode if cfg.entropy_mode != "auto" else ("options" if letters else "vocab")
        if mode == "options" and not letters:
            raise ValueError("options: entropy_mode='options' needs options")
        dev = ad.device
        cuda = dev.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        timer = _Timer(dev)
        t_start = time.perf_counter()

        with VideoReader(video, cache_bytes=cfg.decode_cache_mb << 20) as reader:
            info = reader.info
            # Step 0: sampling and frame size.
            idx = sample_frame_indices(info.num_frames, cfg.frames, ad.unit)
            H, W = ad.frame_size(info.height, info.width, cfg.max_pixels)
            rows, cols = ad.unit_grid(H, W)
            tpu = rows * cols
            U = len(idx) // ad.unit
            # Step 1: groups.
            groups = selection.make_groups(U, cfg.units_per_group, cfg.group_layout)
            stride = len(groups) if cfg.group_layout == "interleaved" else 1
            reader.plan(idx, H, W)
            spu = info.duration_s * ad.unit / len(idx)  # seconds per unit over the full video
            instruction = cfg.instruction if cfg.instruction is not None else (MC_INSTRUCTION if letters else None)
            prefix, suffix = ad.prompt_ids(question, options, instruction)
            P, S = len(prefix), len(suffix)
            pre_emb, suf_emb = ad.embed(prefix), ad.embed(suffix)
            opt_ids = torch.tensor(ad.option_token_ids(letters), device=dev) if mode == "options" else None
            K = len(letters) if mode == "options" else None
            tau = cfg.stop_threshold if cfg.stop_threshold is not None else selection.stop_threshold(K)
            # Candidates kept per group: its largest possible budget, doubled for the
            # redundancy refill (step 7), so memory does not grow with the frame count.
            headroom = 2 if cfg.redundancy_threshold is not None else 1
            min_cap = min(len(u) for u in groups) * tpu
            positions = {}

            records, cand = [], []  # cand: (keys, scores, embeddings) per visited group
            stopped = None
            bar = _progress(groups, progress, desc="groups")
            for g, units in enumerate(bar):
                with timer("decode"):
                    fidx = [idx[u * ad.unit + j] for u in units for j in range(ad.unit)]
                    frames = reader.get_frames(fidx, H, W)
                with timer("vision_encoder"):
                    vis = ad.encode_video(frames.to(dev))
                del frames
                N = vis.shape[0]
                with timer("group_prefill"):
                    # Step 2: compact fresh positions for this group, from get_rope_index.
                    if len(units) not in positions:
                        positions[len(units)] = ad.position_ids(P, len(units), rows, cols, S, spu * stride)
                    emb = torch.cat([pre_emb, vis, suf_emb])
                    self.capture.arm(P + N, P, P + N, cfg.reduce)
                    logits, _ = ad.forward(emb, positions[len(units)], logits_to_keep=1)
                scores = self.capture.take()[0]
                timer.t["scoring"] += self.capture.elapsed
                timer.t["group_prefill"] -= self.capture.elapsed
                with timer("entropy"):  # Step 4
                    h = float(ops.softmax_entropy(logits[-1].float(), opt_ids))
                with timer("selection"):  # Step 6 candidates: top min(N, B) by score
                    c = min(N, headroom * cfg.budget)
                    val, loc = ops.segmented_topk(scores, torch.tensor([0, N], device=scores.device),
                                                  torch.tensor([c], device=scores.device), False)
                    loc_cpu = loc.cpu()
                    unit_t = torch.tensor(units)[loc_cpu // tpu]
                    keys = unit_t * tpu + loc_cpu % tpu
                    cand.append((keys, val.cpu(), vis[loc].cpu()))
                del vis, emb
                records.append(GroupRecord(g, fidx, N, h))
                if progress and hasattr(bar, "set_postfix"):
                    bar.set_postfix(entropy=f"{h:.3f}")
                forced = cfg.force_stop_after is not None and g + 1 >= cfg.force_stop_after
                if (forced or (cfg.lite and h < tau)) and g + 1 < len(groups):  # Step 8
                    stopped = g
                    break
                with timer("selection"):  # drop candidates no completion of the run can use
                    h_max = math.log(K) if K else math.log(logits.shape[-1])
                    bound = selection.budget_bound(
                        torch.tensor([r.entropy for r in records]), len(groups) - g - 1, h_max,
                        cfg.budget, min_cap, cfg.temperature, cfg.per_group_floor,
                        cfg.lite or cfg.force_stop_after is not None)
                    for j, b in enumerate(bound.tolist()):
                        if cand[j][0].numel() > headroom * b:
                            cand[j] = tuple(x[: headroom * b].clone() for x in cand[j])
            if hasattr(bar, "close"):
                bar.close()

        with timer("selection"):
            # Step 5: budgets over the visited groups.
            cap = torch.tensor([r.num_tokens for r in records])
            budgets = selection.allocate_budget(torch.tensor([r.entropy for r in records]), cap,
                                                cfg.budget, cfg.temperature, cfg.per_group_floor)
            budgets = torch.minimum(budgets, torch.tensor([k.numel() for k, _, _ in cand]))
            # Steps 6-7: top-B_g with redundancy removal and refill.
            keep = selection.remove_redundant([k for k, _, _ in cand], [s for _, s, _ in cand],
                                              [e for _, _, e in cand], budgets, tpu,
                                              cfg.redundancy_threshold)
            keys = torch.cat([cand[g][0][keep[g]] for g in range(len(cand))])
            kscore = torch.cat([cand[g][1][keep[g]] for g in range(len(cand))])
            kemb = torch.cat([cand[g][2][keep[g]] for g in range(len(cand))])
            order = torch.argsort(keys)  # original temporal / raster order
            keys, kscore, kemb = keys[order], kscore[order], kemb[order]
            for r, b, k in zip(records, budgets.tolist(), keep):
                r.budget, r.selected = b, k.numel()
        del cand

        with timer("final_prefill"):
            # Step 9: full-video positions of the kept tokens, from the unpruned sequence.
            full = ad.position_ids(P, U, rows, cols, S, spu)
            pos = torch.cat([full[:, :P], full[:, P + keys], full[:, P + U * tpu:]], dim=1)
            emb = torch.cat([pre_emb, kemb.to(dev), suf_emb])
            logits, past = ad.forward(emb, pos, use_cache=True, logits_to_keep=1)
        with timer("generate"):
            max_new = cfg.max_new_tokens or (16 if letters else 128)
            out_ids = greedy_decode(ad, logits, past, pos, max_new)
            answer = ad.decode(out_ids).strip()
        del past

        timings = dict(timer.t)
        timings["total"] = time.perf_counter() - t_start
        mem = {"host_rss": _host_peak_rss()}
        if cuda:
            mem["cuda"] = int(torch.cuda.max_memory_allocated(dev))
        tokens = [{"frame": idx[int(k) // tpu * ad.unit], "h": int(k) % tpu // cols,
                   "w": int(k) % cols, "score": float(s)} for k, s in zip(keys.tolist(), kscore.tolist())]
        return AdaptTokenResult(answer=answer, model=self.name, frames=idx, groups=records,
                                budget=cfg.budget, selected_tokens=tokens,
                                stopped_after_group=stopped, timings_s=timings,
                                peak_memory_bytes=mem, tiny_model=self.tiny, grid=(rows, cols))


def greedy_decode(adapter, logits, past, positions, max_new_tokens: int) -> list[int]:
    """Greedy generation after a prefill (method.md step 9).

    ``logits``/``past`` come from the prefill of ``positions`` ``[3, L]``; generated
    tokens continue at ``L + step + rope_deltas`` with ``rope_deltas = max position + 1 - L``,
    so pruned (non-contiguous) positions decode correctly. Stops at an EOS token.
    """
    L = positions.shape[1]
    rope_delta = int(positions.max()) + 1 - L
    out = []
    for step in range(max_new_tokens):
        nxt = int(logits[-1].argmax())
        if nxt in adapter.eos_token_ids:
            break
        out.append(nxt)
        if step + 1 == max_new_tokens:
            break
        p = torch.full((3, 1), L + step + rope_delta, dtype=torch.long)
        logits, past = adapter.forward(adapter.embed([nxt]), p, past_key_values=past, use_cache=True)
    return out


def _progress(it, enabled, **kw):
    if not enabled:
        return it
    from tqdm.auto import tqdm
    return tqdm(it, **kw)
