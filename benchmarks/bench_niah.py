"""Does AdaptToken find the evidence? The video needle-in-a-haystack benchmark (``adapttoken
niah``, V-NIAH arXiv 2406.16852) on the trained needle checkpoint, on CPU.

Every method at one matched budget (two units' worth of tokens, so that ``uniform`` sees two
of the units), frame counts 1024, 4096 and 10,000, 11 depths, the three built-in needle
kinds, a one-unit needle. Parts, each its own process (``--jobs 2`` runs two at once):

  trials   every method and AdaptToken-Lite at budget temperature T = 1
  sweep    AdaptToken and Lite at the other --temperatures (method.md step 5), same trials;
           the other methods do not depend on T
  memory   peak host memory of one AdaptToken answer at 1024 and 10,000 frames, each in a
           fresh process reading the file (no decoded haystack), with and without the
           decode cache (config.decode_cache_mb)

then ``report`` writes benchmarks/results/cpu_niah.{json,log} (every figure, the goals of
issue 23 with met or not) and the PNGs. The raw trials stay in
benchmarks/results/cpu_niah/<T>/ (trials.jsonl, summary.json, run.json); a rerun resumes them.

    python benchmarks/bench_niah.py --jobs 2                # everything (about 40 min on 2 cores)
    python benchmarks/bench_niah.py --frames 256 --depths 3 --parts trials report   # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RAW = RESULTS / "cpu_niah"
METHODS = ["adapttoken", "lite", "uniform", "flexselect", "entropyselect", "random"]


def haystack(frames: int) -> Path:
    """The haystack (the sample clips concatenated to ``frames`` frames), made once, outside
    the results."""
    from adapttoken_ext.models.tiny import tiny_model_dir
    from adapttoken_ext.niah_bench import make_haystack
    folder = tiny_model_dir("qwen2_5_vl").parent / "niah"
    folder.mkdir(parents=True, exist_ok=True)
    return make_haystack(None, frames, folder)


def pipeline(temperature: float, units_per_group: int):
    from adapttoken_ext.config import AdaptTokenConfig
    from adapttoken_ext.niah import NEEDLE_MAX_PIXELS
    from adapttoken_ext.pipeline import AdaptToken
    cfg = AdaptTokenConfig(max_pixels=NEEDLE_MAX_PIXELS, units_per_group=units_per_group,
                           temperature=temperature)
    return AdaptToken.from_pretrained("needle", config=cfg)


def depths(n: int) -> list[float]:
    return [round(i / (n - 1), 4) for i in range(n)] if n > 1 else [0.5]


def run_trials(args, temperature: float, methods: list[str]) -> None:
    import torch

    from adapttoken_ext import niah_bench
    torch.set_num_threads(1)
    hay = haystack(max(args.frames))
    with pipeline(temperature, args.units_per_group) as at:
        niah_bench.run(at, RAW / f"T{temperature:g}", args.frames, depths(args.depths), args.needles,
                       methods, haystack=[hay], progress=True)


def memory_child(frames: int, cache_mb: int, hay: str, units_per_group: int) -> dict:
    """In a fresh process: RSS after loading the model, and the peak over one answer."""
    import dataclasses

    import torch

    from adapttoken_ext import niah
    torch.set_num_threads(1)
    rss = (lambda: int(next(x for x in open("/proc/self/status") if x.startswith("VmRSS")).split()[1]) * 1024)
    at = pipeline(1.0, units_per_group)
    at.config = dataclasses.replace(at.config, frames=frames, budget=16, decode_cache_mb=cache_mb)
    needle = niah.make_needle("colour", "red")
    before = rss()
    t = time.perf_counter()
    with niah.NeedleVideo(hay, needle, 0.5, frames=frames, unit=at.adapter.unit, cache_bytes=cache_mb << 20) as v:
        r = at.answer(v, needle.question, list(needle.options), progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"frames": frames, "decode_cache_mb": cache_mb, "rss_after_load": before, "peak_rss": peak,
            "peak_over_load": peak - before, "seconds": round(time.perf_counter() - t, 2),
            "candidate_rows_peak": r.candidate_rows_peak, "answer": r.answer[:1]}


def run_memory(args) -> None:
    hay = str(haystack(max(args.frames)))
    out = []
    for cache in (1024, 0):
        for F in (min(args.frames), max(args.frames)):
            code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import bench_niah; "
                    f"print(json.dumps(bench_niah.memory_child({F}, {cache}, {hay!r}, {args.units_per_group})))")
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(out[-1], flush=True)
    RAW.mkdir(parents=True, exist_ok=True)
    (RAW / "memory.json").write_text(json.dumps(out, indent=1))


def cells(trials, method, frames):
    return [t for t in trials if t["method"] == method and t["frames"] == frames]


def figures(trials: list[dict], method: str, frames: int) -> dict:
    from adapttoken_ext.niah_bench import stats
    return {k: v if v is None or isinstance(v, int) else round(v, 4)
            for k, v in stats(cells(trials, method, frames)).items()}


def report(args) -> None:
    sys.path.insert(0, str(HERE))
    from bench_ops import environment

    from adapttoken_ext import niah_bench
    runs = {}
    for d in sorted(RAW.glob("T*")):
        trials = niah_bench.latest(niah_bench._journal(d / "trials.jsonl"))
        runs[d.name[1:]] = {"trials": trials, "record": json.loads((d / "run.json").read_text())}
    from adapttoken_ext.config import AdaptTokenConfig
    default_T = f"{AdaptTokenConfig().temperature:g}"
    main = runs.get("1", {}).get("trials", [])
    if default_T in runs:  # AdaptToken and Lite at the default T; the rest do not depend on T
        main = [t for t in main if t["method"] not in ("adapttoken", "lite")] + [
            t for t in runs[default_T]["trials"] if t["method"] in ("adapttoken", "lite")]
    frames = sorted({t["frames"] for t in main})
    expected = len(depths(args.depths)) * args.needles
    short = {f"T{T} {m} {F}": len(cells(r["trials"], m, F)) for T, r in runs.items() for F in frames
             for m in METHODS if 0 < len(cells(r["trials"], m, F)) < expected}
    if short:
        print(f"bench_niah: WARNING: incomplete cells (of {expected} trials): {short}", file=sys.stderr)
    table = {m: {F: figures(main, m, F) for F in frames} for m in METHODS if cells(main, m, frames[-1] if frames else 0)}
    sweep = {T: {m: {F: figures(r["trials"], m, F) for F in frames} for m in ("adapttoken", "lite")
                 if cells(r["trials"], m, frames[-1] if frames else 0)} for T, r in runs.items()}
    memory = json.loads((RAW / "memory.json").read_text()) if (RAW / "memory.json").exists() else []
    goals = []

    def goal(name, want, got, met):
        goals.append({"figure": name, "goal": want, "measured": got, "met": bool(met) if got is not None else None})

    big = [F for F in frames if F >= 4096]
    a = table.get("adapttoken", {})
    for F in big if a else []:
        goal(f"AdaptToken accuracy at {F} frames", ">= 0.95", a[F]["accuracy"], (a[F]["accuracy"] or 0) >= 0.95)
        goal(f"AdaptToken needle recall at {F} frames", ">= 0.9", a[F]["needle_recall"],
             (a[F]["needle_recall"] or 0) >= 0.9)
        if "uniform" in table:
            u = table["uniform"][F]["accuracy"]
            goal(f"uniform accuracy at {F} frames", "<= 0.35", u, u <= 0.35)
        if "flexselect" in table:
            f = table["flexselect"][F]["accuracy"]
            goal(f"flexselect accuracy at {F} frames", "below AdaptToken's", f, f < a[F]["accuracy"])
        goal(f"needle's group has the lowest entropy at {F} frames", ">= 0.95 of trials",
             a[F]["lowest_entropy_is_needle_group"], (a[F]["lowest_entropy_is_needle_group"] or 0) >= 0.95)
        if "lite" in table:
            lt = table["lite"][F]
            goal(f"Lite accuracy at {F} frames", ">= 0.9", lt["accuracy"], lt["accuracy"] >= 0.9)
            ratio = round(lt["seconds_mean"] / a[F]["seconds_mean"], 3)
            goal(f"Lite time over AdaptToken's at {F} frames (frames decoded once per frame count, "
                 "so decoding is in neither)", "<= 0.6", ratio, ratio <= 0.6)
    for cache in sorted({m["decode_cache_mb"] for m in memory}):
        ms = sorted((m for m in memory if m["decode_cache_mb"] == cache), key=lambda m: m["frames"])
        if len(ms) == 2:
            ratio = round(ms[1]["peak_rss"] / ms[0]["peak_rss"], 3)
            over = round(ms[1]["peak_over_load"] / max(1, ms[0]["peak_over_load"]), 3)
            goal(f"peak host RSS {ms[1]['frames']} over {ms[0]['frames']} frames (decode cache {cache} MiB)",
                 "<= 1.2", ratio, ratio <= 1.2)
            goal(f"peak RSS above the loaded model, {ms[1]['frames']} over {ms[0]['frames']} frames "
                 f"(decode cache {cache} MiB; the stricter reading)", "<= 1.2", over, over <= 1.2)
    out = {"environment": environment("cpu"), "default_temperature": float(default_T), "budget": runs.get("1", {}).get("record", {}).get("budget"),
           "settings": runs.get("1", {}).get("record", {}).get("settings"),
           "methods": table, "temperature_sweep": sweep, "memory": memory, "goals": goals,
           "summary_rows": niah_bench.summarize(main)}
    (RESULTS / "cpu_niah.json").write_text(json.dumps(out, indent=1, default=str))
    lines = [f"environment: {json.dumps(out['environment'])}", f"budget {out['budget']} visual tokens; "
             f"settings {json.dumps(out['settings'])}", ""]
    lines.append(f"{'method':>13} {'frames':>6} {'trials':>6} {'accuracy':>8} {'recall':>6} {'lowest H':>8} "
                 f"{'seconds':>8} {'groups':>7} {'kept':>5}")
    for m, per in table.items():
        for F, f in per.items():
            fmt = (lambda x: "-" if x is None else f"{x:.3f}")
            lines.append(f"{m:>13} {F:>6} {f['trials']:>6} {fmt(f['accuracy']):>8} {fmt(f['needle_recall']):>6} "
                         f"{fmt(f['lowest_entropy_is_needle_group']):>8} {fmt(f['seconds_mean']):>8} "
                         f"{fmt(f['groups_visited_mean']):>7} {fmt(f['kept_mean']):>5}")
    lines[2:2] = [f"AdaptToken and Lite at the default temperature T = {default_T}; uniform, flexselect, "
                  "entropyselect and random do not depend on T"]
    lines += ["", "temperature sweep (same trials and budget):"]
    for T, per_m in sweep.items():
        for m, per in per_m.items():
            lines.append(f"  T = {T}, {m}: " + ", ".join(
                f"{F} frames: accuracy {f['accuracy']}, recall {f['needle_recall']}, {f['seconds_mean']} s"
                for F, f in per.items()))
    lines += ["", "memory:"] + [f"  {json.dumps(m)}" for m in memory]
    lines += ["", "goals:"] + [f"  [{'met' if g['met'] else 'MISSED' if g['met'] is False else '?'}] "
                               f"{g['figure']}: goal {g['goal']}, measured {g['measured']}" for g in goals]
    (RESULTS / "cpu_niah.log").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for png in (RAW / "T1").glob("*.png"):  # AdaptToken's and Lite's at the default T below
        shutil.copy(png, RESULTS / f"cpu_niah_{png.name}")
    for m in ("adapttoken", "lite"):
        png = RAW / f"T{default_T}" / f"heatmap_{m}.png"
        if png.exists():
            shutil.copy(png, RESULTS / f"cpu_niah_{png.name}")
    plot_sweep(sweep, RESULTS / "cpu_niah_temperature.png")


def plot_sweep(sweep: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 3.2), constrained_layout=True)
    ax1, ax2 = fig.subplots(1, 2)
    for T, per_m in sorted(sweep.items(), key=lambda kv: -float(kv[0])):
        per = per_m["adapttoken"]
        F = list(per)
        ax1.plot(range(len(F)), [per[f]["accuracy"] for f in F], "o-", label=f"T = {T}")
        ax2.plot(range(len(F)), [per[f]["needle_recall"] for f in F], "o-", label=f"T = {T}")
    for ax, name in ((ax1, "accuracy"), (ax2, "needle recall")):
        ax.set_xticks(range(len(F)), [str(f) for f in F])
        ax.set_xlabel("frames")
        ax.set_ylabel(name)
        ax.set_ylim(-0.02, 1.02)
    ax1.legend(fontsize="small")
    fig.suptitle("AdaptToken at one budget (two units): the budget temperature T (method.md step 5)")
    fig.savefig(path, dpi=110)


def main():
    global RESULTS, RAW
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[1024, 4096, 10000])
    ap.add_argument("--depths", type=int, default=11, help="evenly spaced depths from 0 to 1")
    ap.add_argument("--needles", type=int, default=4, help="trials per (frames, depth) cell (4: the 4 "
                    "answer letters in every cell, niah_bench.trial_needles)")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.1], help="of the sweep")
    ap.add_argument("--units-per-group", type=int, default=64,
                    help="method.md's default (the checkpoint was trained on clips of up to 16 units "
                    "and sees the needle in 64-unit groups as well)")
    ap.add_argument("--parts", nargs="+", default=["trials", "sweep", "memory", "report"],
                    choices=["trials", "sweep", "memory", "report"])
    ap.add_argument("--jobs", type=int, default=1, help="parts run at once (each one thread)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder of the outputs")
    ap.add_argument("--part", help=argparse.SUPPRESS)
    args = ap.parse_args()
    RESULTS, RAW = args.results, args.results / "cpu_niah"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.part:  # a child
        kind, _, value = args.part.partition(":")
        if kind == "trials":
            run_trials(args, 1.0, METHODS)
        elif kind == "sweep":
            run_trials(args, float(value), ["adapttoken", "lite"])
        elif kind == "memory":
            run_memory(args)
        return
    haystack(max(args.frames))  # once, before the parts share it
    jobs = [p for p in args.parts if p in ("trials", "memory")]
    if "sweep" in args.parts:
        jobs[1:1] = [f"sweep:{T:g}" for T in args.temperatures]
    common = ["--results", str(RESULTS), "--frames", *map(str, args.frames), "--depths", str(args.depths), "--needles", str(args.needles),
              "--units-per-group", str(args.units_per_group)]
    running = {}
    for part in jobs:
        while sum(p.poll() is None for p in running.values()) >= args.jobs:
            time.sleep(2)
        running[part] = subprocess.Popen([sys.executable, __file__, "--part", part, *common])
        print(f"started {part}", flush=True)
    failed = [part for part, p in running.items() if p.wait() != 0]
    if failed:
        sys.exit(f"bench_niah: part(s) {', '.join(failed)} failed (rerun to resume)")
    if "report" in args.parts:
        report(args)


if __name__ == "__main__":
    main()
