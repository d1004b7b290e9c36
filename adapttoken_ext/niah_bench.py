"""``adapttoken niah``: the video needle-in-a-haystack benchmark (V-NIAH, LongVA, arXiv
2406.16852) for any supported model, every selection method at one matched budget.

A *trial* is one needle (:mod:`adapttoken_ext.niah`) at one relative depth of a haystack
sampled to one frame count; each method answers the same trial. Per trial and method one
line goes to ``DIR/trials.jsonl`` (:func:`trial_record`), appended and fsynced, so a killed
run loses at most the trial in flight and a rerun skips what is there. ``DIR/run.json``
says what produced them (model, settings, budget, needles, haystack); a rerun that differs
is refused unless ``restart``. Depths, needles per cell, methods and frame counts up to the
haystack's length may be added on a rerun: trials are keyed by ``(method, frames, depth,
trial)``.
:func:`summarize` gives ``DIR/summary.json``; :func:`plot_heatmaps` and
:func:`plot_entropy` the LongVA figure and the paper's per-group entropy figure.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
from pathlib import Path

import torch

from .niah import KINDS, LETTERS, Needle, NeedleVideo, make_needle, render_needle
from .video import VideoReader, sample_frame_indices

__all__ = ["NIAH_METHODS", "DecodedVideo", "answer_letter", "check", "latest", "make_haystack", "run", "stats",
           "summarize",
           "trial_needles", "trial_record", "plot_heatmaps", "plot_entropy"]

NIAH_METHODS = ("adapttoken", "lite", "uniform", "flexselect", "entropyselect", "random")
"""Method names in trials: those of :data:`adapttoken_ext.methods.METHODS`, and ``lite``
(AdaptToken-Lite: ``adapttoken`` with ``config.lite``, method.md step 8)."""

# decode a haystack once for every trial when its sampled frames fit in this much memory
DECODED_LIMIT_BYTES = 4 << 30


def trial_needles(kinds, count: int, depth: float) -> list[Needle]:
    """The ``count`` built-in needles of the cell at ``depth``: trial ``i`` has option
    letter ``letters[i % 4]`` and kind ``kinds[(i + i // 4) % len(kinds)]``, ``letters`` and
    ``kinds`` in an order drawn from a generator seeded by the depth's value. So every 4
    trials of a cell cover the 4 letters (a method that always answers one letter scores
    exactly chance there), every ``4 * len(kinds)`` trials every (kind, class) once, the
    order differs from depth to depth, and a needle depends only on ``(depth, i)``: adding
    depths or trials on a rerun changes no earlier needle. The same at every frame count.

    Raises:
        ValueError: naming ``kinds`` (empty, repeated or unknown) or ``count`` (< 1).
    """
    import random
    kinds = list(kinds)
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds: must be some of {', '.join(KINDS)} (each once), got {kinds!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"needles: must be >= 1 per cell, got {count!r}")
    rng = random.Random(f"niah depth {float(depth)!r}")
    letters, kinds = rng.sample(range(4), 4), rng.sample(kinds, len(kinds))
    return [make_needle(kinds[(i + i // 4) % len(kinds)], letters[i % 4]) for i in range(count)]


def answer_letter(answer: str, letters=LETTERS) -> str | None:
    """The option letter an answer starts with (``"B"``, ``"B. green"``, ``"(B)"``,
    ``"BBB"``), or None."""
    m = re.match(r"\s*\(?([A-Z])(?![a-z])", answer)
    return m.group(1) if m and m.group(1) in letters else None


class DecodedVideo:
    """The frames a run samples from a video, decoded once at one size and served from
    memory, read like :class:`~adapttoken_ext.video.VideoReader` (``path``, ``info``,
    ``backend``, ``plan``, ``get_frames``, ``close``): the haystack of many trials.

    ``frames`` sampled frames (method.md step 0, ``unit`` frames per unit) at
    ``height`` x ``width``; ``get_frames`` of any other frame or size raises ValueError."""

    cache_bytes = 0

    def __init__(self, path, frames: int, unit: int, height: int, width: int, decoder: str = "pyav"):
        with VideoReader(path, decoder=decoder) as r:
            self.path, self.info, self.backend = r.path, r.info, r.backend
            self.sampled = sample_frame_indices(r.info.num_frames, frames, unit, r.info.timestamps_s)
            self._frames = r.get_frames(self.sampled, height, width)
        self.size = (height, width)
        self._row = {f: i for i, f in enumerate(self.sampled)}

    def plan(self, indices, height: int, width: int) -> None:
        pass

    def get_frames(self, indices, height: int, width: int) -> torch.Tensor:
        """uint8 ``[len(indices), 3, height, width]``, as ``VideoReader.get_frames``."""
        rows = [self._row.get(int(i)) for i in indices]
        if (height, width) != self.size or None in rows:
            raise ValueError(f"indices: this haystack holds only its {len(self.sampled)} sampled "
                             f"frames at {self.size[0]} x {self.size[1]}")
        return self._frames[rows]

    def close(self) -> None:
        pass


def make_haystack(videos, num_frames: int, out_dir) -> Path:
    """The haystack file: one given video that has ``num_frames`` frames is used as it is;
    else the videos (default: the sample clips) concatenated in turn to ``num_frames``
    frames at 320 x 180 (:func:`adapttoken_ext.video.make_long_video`), written once to
    ``out_dir/haystack-<frames>-<stamp>.mp4`` and reused (``stamp``: a hash of the source
    files' paths, sizes and times).

    Raises:
        FileNotFoundError, ValueError: naming ``--haystack`` for a missing or unreadable file.
    """
    from .video import make_long_video
    videos = [str(v) for v in videos or []]
    for v in videos:
        if not os.path.isfile(v):
            raise FileNotFoundError(f"--haystack: no such file: {v!r}")
        try:
            with VideoReader(v) as r:
                n = r.info.num_frames
        except ValueError as e:
            raise ValueError(f"--haystack: {e}") from None
        if len(videos) == 1 and n >= num_frames:
            return Path(v)
    stamp = hashlib.sha256(json.dumps([(os.path.abspath(v), os.path.getsize(v), os.path.getmtime(v))
                                       for v in videos]).encode()).hexdigest()[:10]
    out = Path(out_dir) / f"haystack-{num_frames}-{stamp}.mp4"
    if not out.exists():  # make_long_video writes it atomically
        kw = {"sources": videos} if videos else {}
        make_long_video(out, num_frames, **kw)
    return out


def needle_tokens(needle: Needle, video: NeedleVideo, unit: int, size, grid) -> set[tuple[int, int, int]]:
    """The needle's visual tokens ``(frame, h, w)``: in every unit that holds it (``frame``
    the unit's first sampled frame, as in ``AdaptTokenResult.selected_tokens``), the
    merged-token cells of the ``rows x cols`` ``grid`` whose pixels overlap its mask."""
    H, W = size
    rows, cols = grid
    _, mask = render_needle(needle, H, W)
    cells = [(h, w) for h in range(rows) for w in range(cols)
             if mask[h * H // rows:(h + 1) * H // rows, w * W // cols:(w + 1) * W // cols].any()]
    return {(video.sampled[u * unit], h, w) for u in video.units for h, w in cells}


def trial_record(method: str, frames: int, depth: float, trial: int, needle: Needle, result,
                 video: NeedleVideo, unit: int, size) -> dict:
    """One line of ``trials.jsonl``: ``method, frames, depth, trial, needle, answer,
    letter, correct, needle_recall`` (the fraction of :func:`needle_tokens` kept),
    ``needle_group`` (the group holding the needle's first unit), ``entropies`` (per
    group, nats; None where a method runs no group pass), ``lowest_entropy_group``,
    ``groups_visited`` (fewer under Lite), ``seconds`` (the answer's wall time) and ``kept`` (visual tokens kept)."""
    if result.frames != video.sampled:  # the needle must be where the pipeline looked
        raise ValueError(f"frames: the pipeline sampled other frames than the needle video ({frames})")
    truth = needle_tokens(needle, video, unit, size, result.grid)
    kept = {(t["frame"], t["h"], t["w"]) for t in result.selected_tokens}
    first = video.sampled[video.units[0] * unit]
    group = next((g.index for g in result.groups if first in g.frames), None)
    ents = [g.entropy for g in result.groups]
    seen = [(h, g.index) for h, g in zip(ents, result.groups) if h is not None]
    from .stages import parse_options
    letter = answer_letter(result.answer, parse_options(list(needle.options)))
    return {"method": method, "frames": frames, "depth": depth, "trial": trial, "needle": needle.name,
            "answer": result.answer, "letter": letter, "correct": letter == needle.answer,
            "needle_recall": len(truth & kept) / len(truth) if truth else None,
            "needle_group": group, "entropies": ents,
            "lowest_entropy_group": min(seen)[1] if seen else None, "groups_visited": len(result.groups),
            "seconds": round(result.timings_s["total"], 4), "kept": len(result.selected_tokens)}


def _key(r) -> tuple:
    return (r["method"], r["frames"], float(r["depth"]), r["trial"])


def _journal(path: Path) -> list[dict]:
    from .batch import _read_journal
    return [r for r in _read_journal(str(path), repair=True) if isinstance(r, dict) and "method" in r]


def check(frames, depths, needles: int, methods, kinds=tuple(KINDS), needle_image=None,
          needle_frames: int | None = None, budget: int | None = None) -> None:
    """The arguments of :func:`run` that need no model (the CLI checks them before loading one).

    Raises:
        ValueError: naming ``frames``, ``depths``, ``needles``, ``methods``, ``kinds``,
            ``needle_frames`` or ``budget``.
    """
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"budget: must be >= 1 visual token, got {budget!r}")
    if needle_frames is not None and (isinstance(needle_frames, bool) or not isinstance(needle_frames, int)
                                      or needle_frames < 1):
        raise ValueError(f"needle_frames: must be an int >= 1, got {needle_frames!r}")
    frames, depths, methods = list(frames), list(depths), list(methods)
    if not frames or any(isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in frames):
        raise ValueError(f"frames: must be frame counts >= 1, got {frames}")
    if needle_frames is not None and frames and needle_frames > min(frames):
        raise ValueError(f"needle_frames: {needle_frames} frames do not fit in {min(frames)} sampled frames")
    if not depths or any(isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0
                         for d in depths):
        raise ValueError(f"depths: must be numbers in [0, 1], got {depths}")
    for name, v in (("frames", frames), ("depths", depths), ("methods", methods)):
        if len(set(v)) != len(v):
            raise ValueError(f"{name}: repeated values {v}")
    if not methods or any(m not in NIAH_METHODS for m in methods):
        raise ValueError(f"methods: must be some of {', '.join(NIAH_METHODS)}, got {methods}")
    if needle_image is None:
        trial_needles(kinds, needles, 0.0)  # checks kinds and needles
    elif needles < 1:
        raise ValueError(f"needles: must be >= 1 per cell, got {needles}")


def run(at, out_dir, frames, depths, needles: int = 4, methods=NIAH_METHODS[:1], haystack=None,
        kinds=tuple(KINDS), needle_image: Needle | None = None, needle_frames: int | None = None,
        budget: int | None = None, restart: bool = False, progress: bool = True) -> list[dict]:
    """Run every trial not yet in ``out_dir/trials.jsonl`` (module docstring) and write
    ``summary.json`` and the figures. Returns the latest record of every trial in the journal.

    Args:
        at: an :class:`~adapttoken_ext.pipeline.AdaptToken`; its config gives every setting
            but ``frames``, ``budget`` and ``lite``.
        frames: frame counts sampled from the haystack; depths: relative depths in [0, 1].
        needles: trials per (frames, depth) cell: built-in needles of ``kinds``
            (:func:`trial_needles`), or ``needle_image`` (a :class:`Needle` of kind
            ``"image"``) each time.
        methods: names of :data:`NIAH_METHODS`.
        haystack: video files (:func:`make_haystack`); None: the sample clips.
        needle_frames: sampled frames the needle spans (default one unit).
        budget: visual tokens kept by every method (default: two units' worth).

    Raises:
        ValueError: naming the argument (``frames``, ``depths``, ``methods``, ``needles``,
            ``budget``, ``--output`` for another run's trials) before any model work.
    """
    from . import methods as registry
    from .batch import _differences, _load_record, _sha256, _write_atomic
    out = Path(out_dir)
    check(frames, depths, needles, methods, kinds, needle_image, needle_frames, budget)
    frames = [int(f) for f in frames]
    ad, base = at.adapter, at.config
    out.mkdir(parents=True, exist_ok=True)
    hay = make_haystack(haystack, max(frames), out)
    with VideoReader(hay) as r:
        info = r.info
    size = ad.frame_size(info.height, info.width, base.max_pixels)
    tpu = math.prod(ad.unit_grid(*size))
    budget = 2 * tpu if budget is None else budget
    configs = {(m, F): dataclasses.replace(base, frames=F, budget=budget, lite=m == "lite")
               for m in methods for F in frames}
    for (m, _), c in configs.items():
        registry.get("adapttoken" if m == "lite" else m).check(c.validate())
    spec = ({"kind": "image", "question": needle_image.question, "options": list(needle_image.options),
             "answer": needle_image.answer, "image_sha256": hashlib.sha256(
                 needle_image.image.tobytes()).hexdigest()} if needle_image is not None
            else {"kinds": list(kinds)})
    record = {"model": at.name, "settings": {k: v for k, v in base.to_dict().items()
                                             if k not in ("frames", "lite", "budget", "decode_cache_mb",
                                                          "visual_cache_gb")},
              "budget": budget, "needle": spec, "needle_frames": needle_frames or ad.unit,
              "haystack": [str(Path(hay).resolve())], "haystack_sha256": _sha256(hay),
              "haystack_sources": [os.path.abspath(v) for v in haystack or []],
              "dtype": str(ad.model.dtype).removeprefix("torch."),
              "attn_implementation": getattr(ad.model.config.get_text_config(), "_attn_implementation", None)}
    journal, rec_path = out / "trials.jsonl", out / "run.json"
    old = None if restart else _load_record(str(rec_path))
    if old is not None:
        diff = _differences(old, record)
        if diff:
            raise ValueError(f"--output: {str(out)!r} holds trials of another run ({'; '.join(diff)}); "
                             "pass --restart to discard them, or choose another --output")
    elif not restart and journal.exists() and journal.stat().st_size:
        raise ValueError(f"--output: {str(journal)!r} is not empty but has no run.json; pass "
                         "--restart to replace it, or choose another --output")
    if restart:
        for old_file in [journal, out / "summary.json", out / "entropy.png", *out.glob("heatmap_*.png")]:
            if old_file.exists():
                old_file.unlink()
    _write_atomic(str(rec_path), json.dumps(record, indent=1))
    done = {_key(r) for r in _journal(journal) if "error" not in r}  # a failed trial is retried
    todo = [(F, d, i, m) for F in frames for di, d in enumerate(depths) for i in range(needles)
            for m in methods if (m, F, float(d), i) not in done]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="niah trials", unit="answer", file=sys.stderr)
    try:
        with open(journal, "a", encoding="utf-8") as log:
            for F in frames:
                decoded = None  # the previous frame count's frames go first
                decoded = _decoded(hay, F, ad.unit, size, base.decoder, [t for t in todo if t[0] == F])
                for F_, d, i, m in [t for t in todo if t[0] == F]:
                    needle = needle_image or trial_needles(kinds, needles, d)[i]
                    at.config = configs[m, F]
                    oom = False
                    try:
                        with NeedleVideo(decoded or hay, needle, d, frames=F, unit=ad.unit, length=needle_frames,
                                         cache_bytes=base.decode_cache_mb << 20, decoder=base.decoder) as v:
                            res = at.answer(v, needle.question, list(needle.options), progress=False,
                                            method="adapttoken" if m == "lite" else m)
                            rec = trial_record(m, F, d, i, needle, res, v, ad.unit, size)
                    except Exception as e:  # noqa: BLE001 - one trial's failure must not end the run
                        from .batch import _error_text
                        oom = isinstance(e, torch.cuda.OutOfMemoryError)
                        rec = {"method": m, "frames": F, "depth": d, "trial": i, "needle": needle.name,
                               "error": _error_text(e)}
                    if oom:  # outside the except block: the failed forward's tensors are gone
                        torch.cuda.empty_cache()
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                    if bar is not None:
                        bar.update()
                        bar.set_postfix_str(f"{F} frames, depth {d}, {m}")
    finally:
        at.config = base
        if bar is not None:
            bar.close()
    trials = latest(_journal(journal))
    rows = summarize(trials)
    _write_atomic(str(out / "summary.json"), json.dumps(rows, indent=1))
    plot_heatmaps(rows, out)
    shown = [t for t in trials if t["method"] == "adapttoken" and "error" not in t and t["frames"] == max(frames)]
    if shown:  # the needle nearest the middle of the longest haystack
        one = min(shown, key=lambda t: (abs(t["depth"] - 0.5), t["trial"]))
        plot_entropy(one, out / "entropy.png")
    return trials


def latest(trials: list[dict]) -> list[dict]:
    """The journal's last record per trial key (a retried failure replaces its error), in
    first-seen order."""
    last = {}
    for t in trials:
        last[_key(t)] = t
    return list(last.values())


def _decoded(hay, F, unit, size, decoder, todo):
    """The haystack at ``F`` frames decoded once, when any trial needs it and it fits
    :data:`DECODED_LIMIT_BYTES`; else None (each trial reads the file)."""
    if not todo or F * 3 * size[0] * size[1] > DECODED_LIMIT_BYTES:
        return None
    return DecodedVideo(hay, F, unit, *size, decoder=decoder)


def stats(trials: list[dict]) -> dict:
    """Over some trials: ``trials``; ``accuracy``, the fraction answered with the needle's
    letter (errors count as wrong); over those that ran, the means ``needle_recall``,
    ``lowest_entropy_is_needle_group`` (of trials with group entropies),
    ``seconds_mean``, ``groups_visited_mean`` and ``kept_mean`` (None without any); and
    ``errors``."""
    ok = [t for t in trials if "error" not in t]
    mean = (lambda xs: sum(xs) / len(xs) if xs else None)
    return {"trials": len(trials), "accuracy": mean([bool(t.get("correct")) for t in trials]),
            "needle_recall": mean([t["needle_recall"] for t in ok if t.get("needle_recall") is not None]),
            "lowest_entropy_is_needle_group": mean([t["lowest_entropy_group"] == t["needle_group"] for t in ok
                                                    if t.get("lowest_entropy_group") is not None]),
            "seconds_mean": mean([t["seconds"] for t in ok]),
            "groups_visited_mean": mean([t["groups_visited"] for t in ok if "groups_visited" in t]),
            "kept_mean": mean([t["kept"] for t in ok if "kept" in t]), "errors": len(trials) - len(ok)}


def summarize(trials: list[dict]) -> list[dict]:
    """Rows ``{"method", "frames", "depth", "trials", "accuracy", "needle_recall",
    "seconds_mean", "errors"}`` per (method, frames, depth), sorted: ``accuracy`` the
    fraction of trials answered with the needle's letter, ``needle_recall`` and
    ``seconds_mean`` means over the trials that ran (errors count as wrong, and are counted)."""
    cells: dict[tuple, list[dict]] = {}
    for t in trials:
        cells.setdefault((t["method"], t["frames"], float(t["depth"])), []).append(t)
    rows = []
    for (m, F, d), ts in sorted(cells.items(), key=lambda kv: (NIAH_METHODS.index(kv[0][0])
                                                               if kv[0][0] in NIAH_METHODS else 99, kv[0][1:])):
        s = stats(ts)
        rows.append({"method": m, "frames": F, "depth": d,
                     **{k: s[k] for k in ("trials", "accuracy", "needle_recall", "seconds_mean", "errors")}})
    return rows


def _save(fig, path: Path) -> None:
    tmp = path.with_name(path.stem + ".partial" + path.suffix)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def plot_heatmaps(rows: list[dict], out_dir) -> list[Path]:
    """Per method, ``out_dir/heatmap_<method>.png``: accuracy over frames (x) and depth (y),
    each cell annotated (the LongVA figure). Returns the paths written."""
    from matplotlib.figure import Figure
    paths = []
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        fs, ds = sorted({r["frames"] for r in rs}), sorted({r["depth"] for r in rs})
        grid = torch.full((len(ds), len(fs)), math.nan)
        for r in rs:
            grid[ds.index(r["depth"]), fs.index(r["frames"])] = r["accuracy"]
        fig = Figure(figsize=(1.6 + 1.1 * len(fs), 1.4 + 0.35 * len(ds)), constrained_layout=True)
        ax = fig.subplots()
        im = ax.imshow(grid.numpy(), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for y in range(len(ds)):
            for x in range(len(fs)):
                if not math.isnan(grid[y, x]):
                    ax.text(x, y, f"{grid[y, x]:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(fs)), [str(f) for f in fs])
        ax.set_yticks(range(len(ds)), [f"{d:g}" for d in ds])
        ax.set_xlabel("frames")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{m}: needle accuracy")
        fig.colorbar(im, ax=ax, label="accuracy")
        path = Path(out_dir) / f"heatmap_{m}.png"
        _save(fig, path)
        paths.append(path)
    return paths


def plot_entropy(trial: dict, path) -> None:
    """One trial's answer entropy per group, the needle's group marked (the paper's needle
    figure)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    ents = [math.nan if h is None else h for h in trial["entropies"]]
    fig = Figure(figsize=(9, 3.2), constrained_layout=True)
    ax = fig.subplots()
    ax.plot(range(len(ents)), ents, ".-", color="tab:red", lw=1, label="answer entropy H_g")
    if trial.get("needle_group") is not None:
        ax.axvline(trial["needle_group"], color="tab:blue", ls="--", lw=1.5,
                   label=f"needle's group ({trial['needle_group']})")
    ax.axhline(math.log(4), color="grey", ls=":", lw=1, label="ln 4")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("group")
    ax.set_ylabel("entropy (nats)")
    ax.set_title(f"{trial['method']}, {trial['frames']} frames, needle {trial['needle']} at depth "
                 f"{trial['depth']:g}: answered {trial['letter']} ({'right' if trial['correct'] else 'wrong'})")
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, Path(path))
