"""Speed and peak memory of each torch.ops.adapttoken op against its PyTorch reference.

Shapes are Qwen2.5-VL-7B's at the reference layer (Hq=28, Hkv=4, D=128, 64 text
queries, groups of 8K-32K visual keys, vocab 152,064). local_entropy takes visual tokens
[frames, 11, 20, 3584] in bf16 (Qwen2.5-VL-7B at 308x560; 2048 frames' worth is 3.2 GB);
its reference gathers every 3x3 window in float32 (58 GB at 2048 frames), so it runs on
a 32-frame slice, the ext on both. Times are medians over
repeats (with p20/p80), in ms; peak memory is the extra host RSS of one call,
measured in a fresh process. Prints a table of ratios and writes
benchmarks/results/<device>_ops.json and .log (with --cases, <device>_ops_<suffix>).

    python benchmarks/bench_ops.py [--device cpu] [--repeats 7] [--quick]
    python benchmarks/bench_ops.py --cases local_entropy:32 local_entropy:2048 --suffix local_entropy
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
HQ, HKV, D, T = 28, 4, 128, 64
VOCAB = 152_064


def make_case(name: str, device: str):
    """Returns {variant: zero-arg callable} for one benchmark case."""
    import adapttoken_ext  # noqa: F401
    from adapttoken_ext import ops, reference

    torch.manual_seed(0)
    kind, size = name.split(":")
    if kind == "attention_scores":
        L = int(size)  # visual keys; the 64 text queries follow them
        q = torch.randn(1, HQ, T, D, device=device, dtype=torch.bfloat16)
        k = torch.randn(1, HKV, L + T, D, device=device, dtype=torch.bfloat16)
        return {"ext": lambda: ops.attention_scores(q, k, 0, 0, L),
                "reference": lambda: reference.attention_scores(q, k, 0, 0, L, D ** -0.5)}
    if kind == "segmented_topk":
        G, n = 64, int(size)  # 64 groups of n scores, a budget of 7040 in all
        scores = torch.rand(G * n, device=device)
        offsets = torch.arange(0, G * n + 1, n, device=device)
        k = torch.full((G,), 110, device=device)
        bounds = offsets.tolist()

        def topk_loop():
            return [torch.topk(scores[s:e], 110).indices + s
                    for s, e in zip(bounds[:-1], bounds[1:])]
        return {"ext": lambda: ops.segmented_topk(scores, offsets, k),
                "reference": lambda: reference.segmented_topk(scores, offsets, k),
                "topk_loop": topk_loop,
                "topk_global": lambda: torch.topk(scores, 7040)}
    if kind == "softmax_entropy":
        rows = int(size)
        logits = torch.randn(rows, VOCAB, device=device, dtype=torch.bfloat16) * 3
        return {"ext": lambda: ops.softmax_entropy(logits),
                "reference": lambda: reference.softmax_entropy(logits)}
    if kind == "select":
        L = int(size)
        q = torch.randn(1, HQ, T, D, device=device, dtype=torch.bfloat16)
        k = torch.randn(1, HKV, L + T, D, device=device, dtype=torch.bfloat16)
        offsets = torch.arange(0, L + 1, L // 4, device=device)  # 4 groups
        budgets = torch.full((4,), min(1760, L // 4), device=device)  # 7040 kept at 32K
        return {"ext": lambda: ops.select(q, k, 0, offsets, budgets),
                "reference": lambda: reference.select(q, k, 0, offsets, budgets, D ** -0.5)}
    if kind == "local_entropy":
        frames = int(size)
        tokens = torch.randn(frames, 11, 20, 3584, device=device, dtype=torch.bfloat16)
        variants = {"ext": lambda: ops.local_entropy(tokens, 3, 0.1)}
        if frames <= 64:  # the reference's float32 window gather: 28 MB per frame
            variants["reference"] = lambda: reference.local_entropy(tokens, 3, 0.1)
        return variants
    raise ValueError(name)


def time_ms(fn, repeats: int, device: str) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=5) if len(times) > 1 else times * 4
    return {"median": statistics.median(times), "p20": q[0], "p80": q[3]}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _peak_child(name, variant, device, out):
    fn = make_case(name, device)[variant]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) after building the inputs
    before = _rss_bytes()
    fn()
    out.put(_peak_rss_bytes() - before)


def peak_extra_bytes(name: str, variant: str, device: str) -> int | None:
    """Extra peak host memory of one call, in a fresh process (CPU only)."""
    if device != "cpu":
        return None
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(name, variant, device, out))
    p.start()
    value = out.get(timeout=600)
    p.join()
    return max(int(value), 0)


def environment(device: str) -> dict:
    import adapttoken_ext

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=RESULTS.parent.parent).stdout.strip()
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"device": device, "cpu": cpu, "cpu_threads": torch.get_num_threads(),
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
           "backend": adapttoken_ext.backend, "git_commit": commit,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True).stdout.strip()
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="small sizes, no memory runs (smoke test)")
    ap.add_argument("--cases", nargs="+", metavar="KIND:SIZE", help="run only these cases")
    ap.add_argument("--suffix", default="", help="results file <device>_ops_<suffix>")
    args = ap.parse_args()

    if args.cases:
        cases = args.cases
    elif args.quick:
        cases = ["attention_scores:1024", "segmented_topk:1000", "softmax_entropy:4",
                 "select:1024", "local_entropy:4"]
    else:
        cases = ["attention_scores:8192", "attention_scores:16384", "attention_scores:32768",
                 "segmented_topk:20000", "softmax_entropy:64", "select:32768"]
    env = environment(args.device)
    lines = [f"# {json.dumps(env)}"]
    header = f"{'case':<26}{'variant':<13}{'median ms':>11}{'p20':>9}{'p80':>9}{'peak MiB':>10}"
    print(lines[0])
    print(header)
    lines.append(header)
    results = []
    for name in cases:
        variants = make_case(name, args.device)
        row = {"case": name, "variants": {}}
        for variant, fn in variants.items():
            t = time_ms(fn, args.repeats, args.device)
            mem = None if args.quick else peak_extra_bytes(name, variant, args.device)
            row["variants"][variant] = {"time_ms": t, "peak_extra_bytes": mem}
            mib = f"{mem / 2**20:10.1f}" if mem is not None else f"{'-':>10}"
            line = (f"{name:<26}{variant:<13}{t['median']:11.2f}{t['p20']:9.2f}{t['p80']:9.2f}"
                    f"{mib}")
            print(line, flush=True)
            lines.append(line)
        ext = row["variants"]["ext"]
        if name.startswith("local_entropy"):  # bytes read per second: the bandwidth it reaches
            row["ext_input_gb_per_s"] = 2 * 220 * 3584 * int(name.split(":")[1]) / (
                ext["time_ms"]["median"] * 1e6)
        row["ratios"] = {
            f"{v}_time_over_ext": r["time_ms"]["median"] / ext["time_ms"]["median"]
            for v, r in row["variants"].items() if v != "ext"}
        if ext["peak_extra_bytes"] and row["variants"].get("reference", {}).get("peak_extra_bytes"):
            row["ratios"]["reference_peak_over_ext"] = (
                row["variants"]["reference"]["peak_extra_bytes"] / ext["peak_extra_bytes"])
        results.append(row)

    lines.append("")
    lines.append(f"{'case':<26}ratios (x = how many times the ext is better)")
    for row in results:
        ratio = ", ".join([f"{k} {v:.1f}x" for k, v in row["ratios"].items()] + (
            [f"ext reads its input at {row['ext_input_gb_per_s']:.2f} GB/s"]
            if "ext_input_gb_per_s" in row else []))
        lines.append(f"{row['case']:<26}{ratio}")
    print("\n".join(lines[-len(results) - 2:]))

    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        stem = RESULTS / f"{args.device}_ops{'_' + args.suffix if args.suffix else ''}"
        stem.with_suffix(".json").write_text(json.dumps({"environment": env, "results": results},
                                                        indent=2) + "\n")
        stem.with_suffix(".log").write_text("\n".join(lines) + "\n")
        print(f"wrote {stem}.json and {stem}.log")


if __name__ == "__main__":
    main()
