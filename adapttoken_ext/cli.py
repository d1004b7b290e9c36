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


def _parser() -> argparse.ArgumentParser:
    from .models import ADAPTERS
    from .models.tiny import FAMILIES
    p = argparse.ArgumentParser(prog="adapttoken", description=(
        "AdaptToken: entropy-guided visual-token selection for long-video question answering."))
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--model", default=None, help="hub id or local path of a supported "
                        f"checkpoint (model_type {', '.join(ADAPTERS)}; default: the offline "
                        "tiny model of --family with random weights)")
        sp.add_argument("--family", default="qwen2_5_vl", choices=sorted(FAMILIES),
                        help="model_type of the offline tiny model used without --model")
        sp.add_argument("--frames", type=int, default=None, help="frames sampled (method.md step 0)")
        sp.add_argument("--budget", type=int, default=None, help="visual tokens kept (step 5)")
        sp.add_argument("--units-per-group", type=int, default=None, help="units per group (step 1)")
        sp.add_argument("--max-pixels", type=int, default=None, help="pixels per frame (step 0)")
        sp.add_argument("--lite", action="store_true", help="AdaptToken-Lite early stop (step 8)")
        sp.add_argument("--scorer", default=None, choices=["attention", "local_entropy", "fused"],
                        help="AdaptToken's within-group ranking (default attention; README "
                        "'EntropySelect')")
        sp.add_argument("--device", default="cpu", help="device of the whole model, e.g. cpu, "
                        "cuda, cuda:1 (ignored with --device-map)")
        sp.add_argument("--device-map", default=None, metavar="MAP", help='split the model across '
                        'devices: "auto", or a JSON object of module name to device, e.g. '
                        '\'{"model.visual": 0, "model.language_model": 1, "lm_head": 1}\'')
        sp.add_argument("--dtype", default="auto", choices=sorted(_DTYPES), help="weights' dtype "
                        "(auto: bfloat16 on CUDA, float32 on CPU)")
        sp.add_argument("--attn-implementation", default=None, metavar="NAME", help="attention "
                        "backend: sdpa, flash_attention_2, eager, ... (default: flash_attention_2 "
                        "on CUDA when installed, else sdpa)")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    a = sub.add_parser("answer", help="answer a question about a video")
    a.add_argument("--video", required=True, help="video file")
    a.add_argument("--question", required=True)
    a.add_argument("--options", nargs="+", default=None, metavar="OPTION",
                   help='answer options, e.g. "A. a cat" "B. a dog"')
    d = sub.add_parser("demo", help="run offline on a real sample video with the tiny model")
    for sp in (a, d):
        common(sp)
        sp.add_argument("--json", metavar="OUT", help="write the result as JSON")
        sp.add_argument("--plot", metavar="OUT.png", help="plot entropy, budgets and selected tokens")
        sp.add_argument("--method", default="adapttoken", choices=["adapttoken", "entropyselect"],
                        help="adapttoken (method.md), or entropyselect: EntropySelect alone, "
                        "question-agnostic selection from the vision tokens, then the final pass")
    b = sub.add_parser("batch", help="answer a JSONL file of questions (resumable; "
                       "torchrun --nproc-per-node N -m adapttoken_ext.cli batch ... for N processes)")
    b.add_argument("--input", required=True, metavar="QUESTIONS.jsonl", help='lines {"id", "video", '
                   '"question", "options"?}; video paths relative to this file\'s folder')
    b.add_argument("--output", required=True, metavar="ANSWERS.jsonl", help="one line per input "
                   "line, in input order; ids already answered there are skipped")
    common(b)
    return p


def _batch(args) -> int:
    """``adapttoken batch``: one process, or one per rank under torchrun / accelerate launch."""
    import datetime

    import torch
    from . import batch
    from .pipeline import AdaptToken
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, barrier, device = 0, None, args.device
    try:
        config = _config(args, demo=False).validate()
        if world > 1:
            import torch.distributed as dist
            # only a barrier crosses ranks: gloo works on CPU and GPU hosts alike; a rank
            # may wait for the slowest one for hours
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
            rank, barrier = dist.get_rank(), dist.barrier
            if device.startswith("cuda") and args.device_map is None:
                device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        dtype = _DTYPES[args.dtype] and getattr(torch, _DTYPES[args.dtype])
        at = AdaptToken.from_pretrained(args.model, config=config, device=device, dtype=dtype,
                                        device_map=_device_map(args.device_map),
                                        attn_implementation=args.attn_implementation,
                                        family=args.family)
        if at.tiny and rank == 0:
            print(TINY_WARNING.format(family=args.family), file=sys.stderr)
        return batch.run(at, args.input, args.output, progress=not args.quiet, rank=rank,
                         world=world, barrier=barrier)
    except (ValueError, OSError, ImportError) as e:
        print(f"adapttoken: error: {e}", file=sys.stderr)
        return 2
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _config(args, demo: bool):
    from .config import AdaptTokenConfig
    base = dict(frames=128, max_pixels=112 * 224, units_per_group=8, budget=64) if demo else {}
    for name in ("frames", "budget", "units_per_group", "max_pixels"):
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    if args.scorer is not None:
        base["scorer"] = args.scorer
    return AdaptTokenConfig(lite=args.lite, **base)


def format_table(result) -> str:
    """Per-group table: time span (s), frames, tokens, entropy, budget, selected, tokens
    step 7 dropped as redundant, and whether the group ran out of non-redundant candidates."""
    t = dict(zip(result.frames, result.timestamps_s))
    lines = [f"{'group':>5} {'seconds':>15} {'frames':>6} {'tokens':>7} {'entropy':>8} {'budget':>7} "
             f"{'selected':>8} {'redundant':>9} {'ran out':>7}"]
    for g in result.groups:
        span = f"{t[g.frames[0]]:.1f}-{t[g.frames[-1]]:.1f}" if g.frames else "-"
        h = "-" if g.entropy is None else f"{g.entropy:.4f}"
        lines.append(f"{g.index:>5} {span:>15} {len(g.frames):>6} {g.num_tokens:>7} {h:>8} "
                     f"{g.budget:>7} {g.selected:>8} {g.redundant:>9} {'yes' if g.ran_out else '':>7}")
    return "\n".join(lines)


def why_lines(result, reference_layer: int, threshold) -> list[str]:
    """Why these tokens and this many (printed by ``answer`` and ``demo``): the budget's
    cap (step 5), the entropy-led allocation (steps 4-6) and step 7's drops."""
    out = []
    kept, total = len(result.selected_tokens), sum(g.num_tokens for g in result.groups)
    if result.budget_capped:
        out.append(f"why: --budget {result.budget} capped at {result.budget_used}: the visited "
                   f"groups hold only {total} visual tokens")
    if result.method == "entropyselect":
        out.append("why: EntropySelect ignores the question: each unit got a budget share by its mean "
                   "score (low local entropy of the vision tokens, Sobel edges), spread over its grid "
                   "cells, then the best-scored tokens were kept.")
        return out
    best = min(result.groups, key=lambda g: g.entropy)
    out.append(f"why: group {best.index} had the lowest answer entropy ({best.entropy:.3f} nats), so it "
               f"got the largest share of the budget ({best.budget} tokens); inside each group the "
               f"tokens with the highest question-to-video attention at layer {reference_layer} were kept.")
    dropped = sum(g.redundant for g in result.groups)
    if dropped:
        short = [g.index for g in result.groups if g.ran_out]
        line = (f"why: step 7 dropped {dropped} tokens as redundant (cosine > {threshold} with the "
                f"nearest earlier kept token at the same place) and refilled from the next-ranked ones")
        if short:
            line += (f"; group(s) {', '.join(map(str, short))} ran out of non-redundant candidates, so "
                     f"{kept} of {result.budget_used} tokens were kept")
        out.append(line)
    return out


def plot(result, path: str, title: str = "") -> None:
    """Per-group entropy and budget, and a timeline of the selected tokens (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = [r.index for r in result.groups]
    fig, (ax1, ax3) = plt.subplots(2, 1, figsize=(9, 6), constrained_layout=True)
    ax1.bar(g, [r.budget for r in result.groups], color="tab:blue", alpha=0.6, label="budget B_g")
    ax1.set_xlabel("group")
    ax1.set_ylabel("budget (tokens)", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(g, [r.entropy if r.entropy is not None else math.nan for r in result.groups], "o-",
             color="tab:red", label="entropy H_g")
    ax2.set_ylabel("entropy (nats)", color="tab:red")
    if result.stopped_after_group is not None:
        ax1.axvline(result.stopped_after_group + 0.5, color="k", ls="--", lw=1)
    ax1.set_title(title or "AdaptToken: group entropy and budget (lower entropy, larger budget)")
    t = result.selected_tokens
    rows, cols = result.grid if result.grid[1] else (1, 1)
    ax3.scatter([x["time_s"] for x in t], [x["h"] * cols + x["w"] for x in t],
                c=[x["score"] for x in t], s=6, cmap="viridis")
    ax3.set_xlim(0, max(result.timestamps_s) * 1.01 + 1e-3)
    ax3.set_ylim(-0.5, rows * cols - 0.5)
    ax3.set_xlabel("video time (s)")
    ax3.set_ylabel("token in frame (raster)")
    ax3.set_title(f"{len(t)} selected tokens (colour: "
                  f"{'attention' if result.method == 'adapttoken' else 'EntropySelect'} score)")
    tmp = f"{path}.partial.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    if args.command == "batch":
        return _batch(args)
    from .pipeline import AdaptToken
    from .video import sample_video
    demo = args.command == "demo"
    try:
        config = _config(args, demo).validate()
        for flag, path in (("--json", args.json), ("--plot", args.plot)):
            if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
                raise ValueError(f"{flag}: no such directory for {path!r}")
        if demo:
            video, question, options = str(sample_video("bikes.mp4")), DEMO_QUESTION, DEMO_OPTIONS
        else:
            video, question, options = args.video, args.question, args.options
            if not os.path.isfile(video):
                raise FileNotFoundError(f"--video: no such file: {video!r}")
        import torch
        dtype = _DTYPES[args.dtype] and getattr(torch, _DTYPES[args.dtype])
        at = AdaptToken.from_pretrained(args.model, config=config, device=args.device, dtype=dtype,
                                        device_map=_device_map(args.device_map),
                                        attn_implementation=args.attn_implementation,
                                        family=args.family)
        if at.tiny:
            print(TINY_WARNING.format(family=args.family), file=sys.stderr)
        result = at.answer(video, question, options, progress=not args.quiet, method=args.method)
    except (ValueError, OSError, ImportError) as e:  # bad input, missing file, checkpoint or backend
        print(f"adapttoken: error: {e}", file=sys.stderr)
        return 2
    if demo:
        print(f"video: {video}\nquestion: {question}\noptions: {' | '.join(options)}")
    print(f"answer: {result.answer!r}" + ("  (tiny random model: meaningless)" if result.tiny_model else ""))
    print(format_table(result))
    n = len(result.groups)
    print(f"kept {len(result.selected_tokens)} of {sum(g.num_tokens for g in result.groups)} visual "
          f"tokens from {n} group(s); " + (f"Lite stopped after group {result.stopped_after_group}"
                                           if result.stopped_after_group is not None else "all groups visited"))
    for line in why_lines(result, at.reference_layer, config.redundancy_threshold):
        print(line)
    if result.method == "adapttoken":
        top = sorted(result.selected_tokens, key=lambda x: -x["score"])[:5]
        print("top tokens (seconds, row, col, score): " +
              ", ".join(f"({x['time_s']:.2f}, {x['h']}, {x['w']}, {x['score']:.3f})" for x in top))
    print(f"time {result.timings_s['total']:.2f} s, peak host RSS "
          f"{result.peak_memory_bytes['host_rss'] / 2**20:.0f} MiB")
    if args.json:
        result.to_json(args.json)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
