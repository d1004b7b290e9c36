"""The ``adapttoken`` command: ``answer`` a question about a video, run the offline ``demo``,
or answer a JSONL file of questions (``batch``, resumable; many processes under torchrun)."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

TINY_WARNING = ("NOTE: using the built-in tiny {family} model with RANDOM weights (no download). "
                "Its answers are meaningless; pass --model for a real checkpoint.")
DEMO_QUESTION = "What are the people in the video doing?"
DEMO_OPTIONS = ["A. Riding bikes", "B. Cooking dinner", "C. Playing chess", "D. Swimming"]


_DTYPES = {"auto": None, "float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _device_map(text):
    """``--device-map``: ``auto`` or a JSON object; ValueError naming the flag otherwise."""
    if text is None or text == "auto":
        return text
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--device-map: not 'auto' nor a JSON object ({e})") from None
    if not isinstance(m, dict):
        raise ValueError("--device-map: must be 'auto' or a JSON object of module name to device")
    return m


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``, except where there is none to show (None)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


# ``answer`` and ``batch`` use method.md's settings (AdaptTokenConfig); ``demo`` smaller ones,
# so that it runs in seconds on a CPU.
_DEMO_SETTINGS = dict(frames=128, max_pixels=112 * 224, units_per_group=8, budget=64)


def _parser() -> argparse.ArgumentParser:
    from .config import AdaptTokenConfig
    from .methods import METHODS
    from .models import ADAPTERS
    from .models.tiny import FAMILIES
    from .niah import KINDS, NEEDLE_MAX_PIXELS
    from .niah_bench import NIAH_METHODS
    p = argparse.ArgumentParser(prog="adapttoken", formatter_class=_HelpFormatter, description=(
        "AdaptToken: entropy-guided visual-token selection for long-video question answering."))
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--model", default=None, help="hub id or local path of a supported "
                        f"checkpoint (model_type {', '.join(ADAPTERS)}), or 'needle' (the trained "
                        "needle checkpoint of --family, qwen2_5_vl or llava_onevision, README "
                        "'Needle in a haystack'); without it, the offline tiny model of "
                        "--family with random weights")
        sp.add_argument("--family", default="qwen2_5_vl", choices=sorted(FAMILIES),
                        help="model_type of the offline tiny model used without --model")
        sp.add_argument("--device", default="cpu", help="device of the whole model, e.g. cpu, "
                        "cuda, cuda:1 (ignored with --device-map)")
        sp.add_argument("--device-map", default=None, metavar="MAP", help='split the model across '
                        'devices: "auto", or a JSON object of module name to device, e.g. '
                        '\'{"model.visual": 0, "model.language_model": 1, "lm_head": 1}\'')
        sp.add_argument("--dtype", default="auto", choices=sorted(_DTYPES), help="weights' dtype "
                        "(auto: bfloat16 on CUDA, float32 on CPU)")
        sp.add_argument("--attn-implementation", default=None, metavar="NAME", help="attention "
                        "backend: sdpa, flash_attention_2, eager, ...; without it flash_attention_2 "
                        "on CUDA when installed, else sdpa")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    def selection_args(sp, defaults, frames=True):
        if frames:
            sp.add_argument("--frames", type=int, default=defaults.frames,
                            help="frames sampled uniformly over the video (method.md step 0)")
            sp.add_argument("--budget", type=int, default=defaults.budget,
                            help="visual tokens kept for the final pass (step 5)")
        sp.add_argument("--units-per-group", type=int, default=defaults.units_per_group,
                        help="temporal units per group (step 1)")
        sp.add_argument("--max-pixels", type=int, default=None, help="pixels per frame after "
                        f"resizing (step 0; with --model needle {NEEDLE_MAX_PIXELS}, the size it "
                        f"was trained at) (default: {defaults.max_pixels})")
        sp.set_defaults(default_max_pixels=defaults.max_pixels)
        sp.add_argument("--temperature", type=float, default=defaults.temperature,
                        help="budget temperature T in w_g = softmax(-H_g / T) (step 5)")
        sp.add_argument("--scorer", default=defaults.scorer, choices=["attention", "local_entropy", "fused"],
                        help="AdaptToken's within-group ranking (README 'EntropySelect')")
        sp.add_argument("--decoder", default=defaults.decoder, choices=["pyav", "torchcodec"],
                        help="video decoder: pyav (FFmpeg bundled; honours rotation and variable "
                        "frame rates), or torchcodec (needs torchcodec and FFmpeg's libraries; "
                        "ignores rotation and variable frame rates)")
        sp.add_argument("--seed", type=int, default=defaults.seed, help="seed of --method random")

    def common(sp, defaults):
        model_args(sp)
        selection_args(sp, defaults)
        sp.add_argument("--lite", action="store_true", help="AdaptToken-Lite: stop visiting "
                        "groups once one's answer entropy is below tau (step 8)")
        sp.add_argument("--method", default="adapttoken", choices=METHODS,
                        help="token selection at the same --budget (README 'Baselines'): adapttoken "
                        "(method.md), uniform (whole units evenly spaced), flexselect (equal group "
                        "budgets), entropyselect (question-agnostic), random (seeded by --seed)")

    def outputs(sp):
        sp.add_argument("--json", metavar="OUT", help="write the result as JSON to this file")
        sp.add_argument("--plot", metavar="OUT.png", help="plot the groups' entropy, budget and "
                        "selected tokens, and a timeline of the selected tokens, to this image")
    full, demo = AdaptTokenConfig(), AdaptTokenConfig(**_DEMO_SETTINGS)
    a = sub.add_parser("answer", formatter_class=_HelpFormatter, help="answer a question about a video",
                       description="Answer a question about a video. Defaults are method.md's "
                       "(AdaptTokenConfig); `demo` uses smaller ones.")
    a.add_argument("--video", required=True, help="the video file (any container and codec FFmpeg reads)")
    a.add_argument("--question", required=True, help="the question about the video, as plain text")
    a.add_argument("--options", nargs="+", default=None, metavar="OPTION",
                   help='answer options, e.g. "A. a cat" "B. a dog" (enables option-letter entropy)')
    common(a, full)
    outputs(a)
    d = sub.add_parser("demo", formatter_class=_HelpFormatter,
                       help="run offline on a real sample video with the tiny model",
                       description="The whole pipeline offline on a real sample clip (bikes.mp4) "
                       "with a fixed question. Its defaults are smaller than `answer`'s "
                       "(method.md's) so that it runs in seconds on a CPU.")
    common(d, demo)
    outputs(d)
    b = sub.add_parser("batch", formatter_class=_HelpFormatter,
                       help="answer a JSONL file of questions (resumable; "
                       "torchrun --nproc-per-node N -m adapttoken_ext.cli batch ... for N processes)",
                       description="Answer a JSONL file of questions, resumably. Defaults are "
                       "method.md's (AdaptTokenConfig), as for `answer`.")
    b.add_argument("--input", required=True, metavar="QUESTIONS.jsonl", help='lines {"id", "video", '
                   '"question", "options"?}; video paths relative to this file\'s folder')
    b.add_argument("--output", required=True, metavar="ANSWERS.jsonl", help="one line per input "
                   "line, in input order; a rerun resumes it (ids already answered are skipped) "
                   "and is refused when model, settings or input differ from its answers'")
    b.add_argument("--restart", action="store_true", help="discard the answers already in "
                   "--output (and its journals) and start over")
    b.add_argument("--barrier-timeout", type=float, default=7200.0, metavar="SECONDS",
                   help="under torchrun: how long a finished rank waits for the others; a rank "
                   "not there by then is named and nothing is merged (run again to finish)")
    common(b, full)
    n = sub.add_parser("niah", formatter_class=_HelpFormatter,
                       help="the video needle-in-a-haystack benchmark: every method at one budget",
                       description="Video needle-in-a-haystack (V-NIAH, arXiv 2406.16852): a needle "
                       "drawn on one unit's frames at each depth of a haystack sampled to each "
                       "frame count, answered by each method at the same --budget. Writes "
                       "DIR/trials.jsonl (resumable), DIR/summary.json and heatmaps (README "
                       "'Needle in a haystack').")
    n.add_argument("--output", required=True, metavar="DIR", help="folder of trials.jsonl, "
                   "summary.json, run.json and the PNGs; a rerun resumes it")
    n.add_argument("--haystack", nargs="+", default=None, metavar="VIDEO", help="haystack video(s), "
                   "concatenated in turn to the largest --frames (default: the sample clips)")
    n.add_argument("--frames", type=int, nargs="+", default=[1024, 4096], help="frame counts")
    n.add_argument("--depths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1],
                   help="needle depths, 0 (first unit) to 1 (last)")
    n.add_argument("--needles", type=int, default=4, help="trials per (frames, depth) cell")
    n.add_argument("--methods", nargs="+", default=list(METHODS), choices=NIAH_METHODS,
                   metavar="METHOD", help=f"of {', '.join(NIAH_METHODS)} (lite: AdaptToken-Lite)")
    n.add_argument("--lite", action="store_true", help="also run AdaptToken-Lite (method 'lite')")
    n.add_argument("--budget", type=int, default=None, help="visual tokens every method keeps "
                   "(default: two units' worth, so that uniform sees two units)")
    n.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS),
                   help="built-in needle kinds")
    n.add_argument("--needle-image", metavar="PATH", help="your own needle picture instead "
                   "(needs --question, --options, --answer)")
    n.add_argument("--question", help="the question --needle-image answers")
    n.add_argument("--options", nargs="+", metavar="OPTION", help='its options, "A. ..." "B. ..."')
    n.add_argument("--answer", help="its right option's letter")
    n.add_argument("--needle-frames", type=int, default=None, help="sampled frames the needle "
                   "spans (default: one unit)")
    n.add_argument("--restart", action="store_true", help="discard the trials in DIR and start over")
    model_args(n)
    selection_args(n, full, frames=False)
    return p


def _batch(args) -> int:
    """``adapttoken batch``: one process, or one per rank under torchrun / accelerate launch.
    Every rank reaches the final rendezvous, also after failing, so that rank 0 reports the
    failed rank and merges the rest instead of waiting for it."""
    import datetime

    import torch

    from . import batch, methods
    from .models.tiny import tiny_model_id
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, gather, device = int(os.environ.get("RANK", "0")), None, args.device
    try:
        config = _config(args).validate()
        methods.get(args.method).check(config)
        from .video import check_decoder
        check_decoder(config.decoder)
        if not args.barrier_timeout > 0:
            raise ValueError(f"--barrier-timeout: must be > 0 seconds, got {args.barrier_timeout}")
        # before loading the model: the paths, and the answers already there
        batch.check(args.input, args.output)
        batch.check(args.input, args.output, None if args.restart else batch.run_record(
            args.model or tiny_model_id(args.family), config, args.input, method=args.method), args.restart)
        if world > 1:
            import torch.distributed as dist
            # only a rendezvous crosses ranks: gloo works on CPU and GPU hosts alike
            dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.barrier_timeout))
            rank, gather = dist.get_rank(), batch.Rendezvous(args.barrier_timeout)
            if device.startswith("cuda") and args.device_map is None:
                device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        at = _load(args, config, device, warn=rank == 0)
        return batch.run(at, args.input, args.output, progress=not args.quiet, rank=rank,
                         world=world, gather=gather, restart=args.restart, method=args.method)
    except Exception as e:
        expected = isinstance(e, (ValueError, OSError, ImportError, RuntimeError))
        text = str(e) if expected else f"{type(e).__name__}: {e}"
        print(f"adapttoken: error: {f'rank {rank}: ' if world > 1 else ''}{text}", file=sys.stderr)
        if gather is not None and not gather.called:
            try:
                gather(text)
            except RuntimeError as e2:
                print(f"adapttoken: error: {e2}", file=sys.stderr)
        if not expected and world == 1:
            raise
        return 2
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _load(args, config, device: str | None = None, warn: bool = True):
    """The pipeline of ``--model`` (or the tiny ``--family`` model, with a warning) on
    ``device`` (default ``--device``), ``--dtype``, ``--device-map``, ``--attn-implementation``."""
    import torch

    from .pipeline import AdaptToken
    dtype = _DTYPES[args.dtype] and getattr(torch, _DTYPES[args.dtype])
    at = AdaptToken.from_pretrained(args.model, config=config, device=device or args.device, dtype=dtype,
                                    device_map=_device_map(args.device_map),
                                    attn_implementation=args.attn_implementation, family=args.family)
    if at.tiny and warn:
        print(TINY_WARNING.format(family=args.family), file=sys.stderr)
    return at


def _niah(args) -> int:
    """``adapttoken niah``: check every argument, load the model, run the trials
    (:func:`adapttoken_ext.niah_bench.run`) and print accuracy per method and frame count."""

    from . import niah, niah_bench
    from .video import check_decoder
    try:
        config = _config(args).validate()
        check_decoder(config.decoder)
        out = args.output
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--output: {out!r} is a file; name a folder")
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise ValueError(f"--output: no such directory for {out!r}")
        if not os.access(parent if not os.path.isdir(out) else out, os.W_OK):
            raise ValueError(f"--output: cannot write in {out!r}")
        image = None
        if args.needle_image is not None:
            image = niah.make_needle("image", image=args.needle_image, question=args.question,
                                     options=args.options, answer=args.answer)
        elif args.question or args.options or args.answer:
            raise ValueError("--question/--options/--answer: these describe --needle-image; "
                             "the built-in needles bring their own")
        methods = list(dict.fromkeys(args.methods + (["lite"] if args.lite else [])))
        niah_bench.check(args.frames, args.depths, args.needles, methods, args.kinds, image,
                         args.needle_frames, args.budget)
        at = _load(args, config)
        trials = niah_bench.run(at, out, args.frames, args.depths, args.needles, methods,
                                haystack=args.haystack, kinds=args.kinds, needle_image=image,
                                needle_frames=args.needle_frames, budget=args.budget,
                                restart=args.restart, progress=not args.quiet)
    except (ValueError, OSError, ImportError) as e:
        print(f"adapttoken: error: {e}", file=sys.stderr)
        return 2
    print(format_niah(trials))
    figures = "heatmap_<method>.png" + (", entropy.png" if os.path.exists(os.path.join(out, "entropy.png")) else "")
    print(f"wrote {os.path.join(out, 'trials.jsonl')}, summary.json, {figures}")
    errors = sum("error" in t for t in trials)
    if errors:
        print(f"adapttoken: {errors} trial(s) failed (their error is in trials.jsonl); a rerun retries them",
              file=sys.stderr)
    return 1 if errors else 0


def format_niah(trials: list[dict]) -> str:
    """Per method and frame count, over depths and needles: accuracy, needle recall, the
    share of trials whose lowest-entropy group holds the needle, and mean seconds."""
    from .niah_bench import stats
    cells: dict[tuple, list[dict]] = {}
    for t in trials:
        cells.setdefault((t["method"], t["frames"]), []).append(t)
    lines = [f"{'method':>13} {'frames':>6} {'trials':>6} {'accuracy':>8} {'recall':>6} "
             f"{'lowest H':>8} {'seconds':>8} {'errors':>6}"]
    fmt = (lambda x: "-" if x is None else f"{x:.2f}")
    for (m, F), ts in cells.items():
        s = stats(ts)
        lines.append(f"{m:>13} {F:>6} {s['trials']:>6} {s['accuracy']:>8.2f} {fmt(s['needle_recall']):>6} "
                     f"{fmt(s['lowest_entropy_is_needle_group']):>8} {fmt(s['seconds_mean']):>8} "
                     f"{s['errors']:>6}")
    return "\n".join(lines)


def _config(args):
    from .config import AdaptTokenConfig
    from .models.tiny import NEEDLE_FAMILIES, needle_model_id
    from .niah import NEEDLE_MAX_PIXELS
    pixels = args.max_pixels
    if pixels is None:  # a needle checkpoint at the size it was trained at
        needle = args.model == "needle" or args.model in map(needle_model_id, NEEDLE_FAMILIES)
        pixels = NEEDLE_MAX_PIXELS if needle else args.default_max_pixels
    niah = args.command == "niah"  # frames, budget and lite per trial
    return AdaptTokenConfig(frames=1 if niah else args.frames, budget=1 if niah else args.budget,
                            units_per_group=args.units_per_group, max_pixels=pixels,
                            scorer=args.scorer, decoder=args.decoder, temperature=args.temperature,
                            lite=False if niah else args.lite, seed=args.seed)


def _check_output(flag: str, path: str | None) -> None:
    """Before any model work: ``path`` can be written as a file (ValueError naming ``flag``)."""
    if path is None:
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag}: {path!r} is a directory; name a file")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag}: no such directory for {path!r}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag}: cannot write in {folder!r}")
    if flag == "--plot":
        from matplotlib.figure import Figure
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        if ext not in Figure().canvas.get_supported_filetypes():
            raise ValueError(f"{flag}: {path!r} needs an image extension matplotlib writes "
                             "(.png, .pdf, .svg, ...)")


def _check_video(path: str) -> None:
    """``--video`` is a non-empty file (a directory, a missing or an empty file each say so)."""
    if os.path.isdir(path):
        raise ValueError(f"--video: {path!r} is a directory, not a video file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--video: no such file: {path!r}")
    if os.path.getsize(path) == 0:
        raise ValueError(f"--video: {path!r} is an empty file (0 bytes), not a video")


def format_table(result, layout: str = "contiguous", unit: int = 1) -> str:
    """Per-group table: the span (s) from the group's first to its last sampled frame, the
    time between its units (``every``), frames, tokens, entropy, budget, selected, tokens step 7
    dropped as redundant and whether the group ran out of non-redundant candidates. A first
    line says the layout: under ``interleaved`` each group samples the whole clip every
    ``G`` units, so every span is the whole clip and ``every`` tells the groups apart.
    ``unit``: frames per temporal unit (the adapter's)."""
    t = dict(zip(result.frames, result.timestamps_s))
    n = len(result.groups)
    head = (f"layout: interleaved: group g holds units g, g+{n}, g+{2 * n}, ... of {n} groups, so "
            "each spans the whole clip" if layout == "interleaved" and n > 1 else f"layout: {layout}")
    lines = [head, (f"{'group':>5} {'seconds':>15} {'every':>7} {'frames':>6} {'tokens':>7} "
                    f"{'entropy':>8} {'budget':>7} {'selected':>8} {'redundant':>9} {'ran out':>7}")]
    for g in result.groups:
        span = f"{t[g.frames[0]]:.1f}-{t[g.frames[-1]]:.1f}" if g.frames else "-"
        starts = [t[f] for f in g.frames[::unit]]
        every = f"{(starts[-1] - starts[0]) / (len(starts) - 1):.2f}" if len(starts) > 1 else "-"
        h = "-" if g.entropy is None else f"{g.entropy:.4f}"
        lines.append(f"{g.index:>5} {span:>15} {every:>7} {len(g.frames):>6} {g.num_tokens:>7} {h:>8} "
                     f"{g.budget:>7} {g.selected:>8} {g.redundant:>9} {'yes' if g.ran_out else '':>7}")
    return "\n".join(lines)


_WHY = {  # the baselines' selection rule in one sentence (README "Baselines")
    "entropyselect": "EntropySelect ignores the question: each unit got a budget share by its mean "
                     "score (low local entropy of the vision tokens, Sobel edges), spread over its grid "
                     "cells, then the best-scored tokens were kept.",
    "uniform": "uniform keeps every token of floor(budget / tokens per unit) units evenly spaced in "
               "time, ignoring the question (the plain model's baseline).",
    "random": "random keeps budget tokens drawn uniformly from the whole video (seeded).",
    "flexselect": "flexselect gives every group the same share of the budget (answer entropy "
                  "ignored); inside each group the tokens with the highest question-to-video "
                  "attention were kept.",
}


_NAMES = {"adapttoken": "AdaptToken", "uniform": "Uniform", "flexselect": "FlexSelect",
          "entropyselect": "EntropySelect", "random": "Random"}


def why_lines(result, reference_layer: int, threshold) -> list[str]:
    """Why these tokens and this many (printed by ``answer`` and ``demo``): the budget's
    cap (step 5), the entropy-led allocation (steps 4-6) and step 7's drops."""
    out = []
    kept, total = len(result.selected_tokens), sum(g.num_tokens for g in result.groups)
    if result.budget_capped:
        out.append(f"why: --budget {result.budget} capped at {result.budget_used}: the visited "
                   f"groups hold only {total} visual tokens")
    if result.method in _WHY:
        out.append("why: " + _WHY[result.method])
    else:
        best = min(result.groups, key=lambda g: g.entropy)
        out.append(f"why: group {best.index} had the lowest answer entropy ({best.entropy:.3f} nats), so it "
                   f"got the largest share of the budget ({best.budget} tokens); inside each group the "
                   f"tokens with the highest question-to-video attention at layer {reference_layer} were kept.")
    dropped = sum(g.redundant for g in result.groups)
    if dropped:  # step 7 (adapttoken, flexselect)
        short = [g.index for g in result.groups if g.ran_out]
        line = (f"why: step 7 dropped {dropped} tokens as redundant (cosine > {threshold} with the "
                f"nearest earlier kept token at the same place) and refilled from the next-ranked ones")
        if short:
            line += (f"; group(s) {', '.join(map(str, short))} ran out of non-redundant candidates, so "
                     f"{kept} of {result.budget_used} tokens were kept")
        out.append(line)
    return out


def lite_line(result, lite: bool) -> str:
    """How group visiting ended: where Lite stopped, or that it never did and why."""
    if result.stopped_after_group is not None:
        return f"Lite stopped after group {result.stopped_after_group}"
    seen = [g for g in result.groups if g.entropy is not None]
    if not lite or not seen or result.stop_threshold is None:
        return "all groups visited"
    low = min(seen, key=lambda g: g.entropy)
    return (f"Lite on, but no group's entropy fell below tau = {result.stop_threshold:.4f} nats "
            f"(lowest {low.entropy:.4f}, group {low.index}): all groups visited")


def _figure(result, title: str = ""):
    """The figure of :func:`plot`."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    g = [r.index for r in result.groups]
    adapt = result.method in ("adapttoken", "flexselect")  # ranked by attention
    fig = Figure(figsize=(9, 6), constrained_layout=True)
    ax1, ax3 = fig.subplots(2, 1)
    ax1.bar([x - 0.2 for x in g], [r.budget for r in result.groups], width=0.4, color="tab:blue",
            alpha=0.6, label="budget B_g")
    ax1.bar([x + 0.2 for x in g], [r.selected for r in result.groups], width=0.4, color="tab:green",
            alpha=0.8, label="selected")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_xlabel("group")
    ax1.set_ylabel("tokens")
    ax1.legend(loc="upper left", fontsize="small")
    if any(r.entropy is not None for r in result.groups):  # EntropySelect has no group pass
        ax2 = ax1.twinx()
        ax2.plot(g, [r.entropy if r.entropy is not None else math.nan for r in result.groups], "o-",
                 color="tab:red", label="entropy H_g")
        ax2.set_ylabel("entropy H_g (nats)", color="tab:red")
    if result.stopped_after_group is not None:
        ax1.axvline(result.stopped_after_group + 0.5, color="k", ls="--", lw=1)
    ax1.set_title(title or ("AdaptToken: group entropy, budget and selected tokens (lower entropy, "
                            "larger budget)" if result.method == "adapttoken" else
                            f"{_NAMES[result.method]}: budget and selected tokens per group"
                            + ("" if adapt else " (question-agnostic: no entropy)")))
    t = result.selected_tokens
    rows, cols = result.grid if result.grid[1] else (1, 1)
    name = "attention" if adapt else _NAMES[result.method]
    sc = ax3.scatter([x["time_s"] for x in t], [x["h"] * cols + x["w"] for x in t],
                     c=[x["score"] for x in t], s=6, cmap="viridis")
    fig.colorbar(sc, ax=ax3, label=f"{name} score")
    ax3.set_xlim(0, max(result.timestamps_s) * 1.01 + 1e-3)
    ax3.set_ylim(-0.5, rows * cols - 0.5)
    ax3.set_xlabel("video time (s)")
    ax3.set_ylabel("token in frame (raster)")
    ax3.set_title(f"{len(t)} selected tokens (colour: {name} score)")
    return fig


def plot(result, path: str, title: str = "") -> None:
    """Per-group budget and selected count side by side, entropy (AdaptToken only), and a
    timeline of the selected tokens coloured by score, to an image file (format by its
    extension). Written through a temporary file; nothing is left behind on failure."""
    ext = os.path.splitext(path)[1]
    tmp = f"{path}.partial{ext}"
    try:
        _figure(result, title).savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    if args.command == "batch":
        return _batch(args)
    if args.command == "niah":
        return _niah(args)
    from . import methods
    from .video import check_decoder, sample_video
    demo = args.command == "demo"
    try:
        config = _config(args).validate()
        methods.get(args.method).check(config)
        check_decoder(config.decoder)
        for flag, path in (("--json", args.json), ("--plot", args.plot)):
            _check_output(flag, path)
        if demo:
            video, question, options = str(sample_video("bikes.mp4")), DEMO_QUESTION, DEMO_OPTIONS
        else:
            video, question, options = args.video, args.question, args.options
            _check_video(video)
        at = _load(args, config)
        result = at.answer(video, question, options, progress=not args.quiet, method=args.method)
    except (ValueError, OSError, ImportError) as e:  # bad input, missing file, checkpoint or backend
        print(f"adapttoken: error: {e}", file=sys.stderr)
        return 2
    if demo:
        print(f"video: {video}\nquestion: {question}\noptions: {' | '.join(options)}")
    print(f"answer: {result.answer!r}" + ("  (tiny random model: meaningless)" if result.tiny_model else ""))
    print(format_table(result, config.group_layout, at.adapter.unit))
    n = len(result.groups)
    print(f"kept {len(result.selected_tokens)} of {sum(g.num_tokens for g in result.groups)} visual "
          f"tokens from {n} group(s); {lite_line(result, config.lite)}")
    for line in why_lines(result, at.reference_layer, config.redundancy_threshold):
        print(line)
    if result.method in ("adapttoken", "flexselect"):  # ranked by attention
        top = sorted(result.selected_tokens, key=lambda x: -x["score"])[:5]
        print("top tokens (seconds, row, col, score): " +
              ", ".join(f"({x['time_s']:.2f}, {x['h']}, {x['w']}, {x['score']:.3f})" for x in top))
    print(f"time {result.timings_s['total']:.2f} s, peak host RSS "
          f"{result.peak_memory_bytes['host_rss'] / 2**20:.0f} MiB")
    rc = 0
    for flag, path, write in (("--json", args.json, result.to_json), ("--plot", args.plot,
                                                                       lambda p: plot(result, p))):
        if not path:
            continue
        try:
            write(path)
            print(f"wrote {path}")
        except (OSError, ValueError) as e:  # the result above stands; the file is not left half-written
            print(f"adapttoken: error: {flag}: could not write {path!r} ({e})", file=sys.stderr)
            rc = 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
