"""Frames per second of sampling F frames (method.md step 0), resized to the pipeline's size,
from a long 720p video made of the sample clips, against one plain sequential decode of the
whole file. Each available decoder (PyAV; torchcodec where it loads) in the ways the
pipeline uses it: all F frames in one request, and group by group (interleaved groups of
64 two-frame units, with and without the decode cache).

    python benchmarks/bench_video.py [--frames 256 1024 4096] [--tag cpu_video]

Writes ``benchmarks/results/<tag>.json`` and ``.log``; ``vs_sequential`` is the sequential
decode's time over the sampler's (a speed-up).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _decoders(path):
    from adapttoken_ext.video import _torchcodec_decoder
    out = ["pyav"]
    try:
        _torchcodec_decoder(path)
        out.append("torchcodec")
    except ValueError:  # not installed, or FFmpeg's libraries missing
        pass
    return out


def _reader(path, backend, cache_mb):
    from adapttoken_ext.video import VideoReader
    return VideoReader(path, cache_bytes=cache_mb << 20, decoder=backend)


def sequential(path, size) -> float:
    """Seconds to decode and resize every frame in order (the lower bound of any sampler
    that must touch every frame)."""
    import av
    h, w = size
    t0 = time.perf_counter()
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for f in c.decode(s):
            f.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC")
    return time.perf_counter() - t0


def sample(path, backend, frames, size, mode, cache_mb=1024) -> float:
    from adapttoken_ext.selection import make_groups
    from adapttoken_ext.video import sample_frame_indices
    t0 = time.perf_counter()
    with _reader(path, backend, cache_mb if mode == "groups_cache" else 0) as r:
        idx = sample_frame_indices(r.info.num_frames, frames, 2, r.info.timestamps_s)
        if mode == "all":
            r.get_frames(idx, *size)
        else:
            r.plan(idx, *size)
            for units in make_groups(len(idx) // 2, 64, "interleaved"):
                r.get_frames([idx[u * 2 + j] for u in units for j in range(2)], *size)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--video-frames", type=int, default=4500, help="length of the long video")
    ap.add_argument("--tag", default="cpu_video")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "adapttoken_bench"))
    args = ap.parse_args()
    import av
    import torch

    from adapttoken_ext.video import make_long_video
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    video = Path(args.cache) / f"long720p_{args.video_frames}.mp4"
    if not video.exists():
        print(f"writing {video} ({args.video_frames} frames, 1280x720)", flush=True)
        make_long_video(video, args.video_frames, width=1280, height=720)
    size = (308, 560)  # method.md step 0's default frame size
    with av.open(str(video)) as c:
        n = c.streams.video[0].frames
    seq = sequential(str(video), size)
    rows = [{"decoder": "pyav", "mode": "sequential_all", "frames": n, "seconds": seq, "fps": n / seq}]
    print(f"sequential decode of all {n} frames: {seq:.2f} s ({n / seq:.0f} frames/s)", flush=True)
    for backend in _decoders(str(video)):
        for F in args.frames:
            for mode in ("all", "groups_cache", "groups_nocache"):
                t = sample(str(video), backend, F, size, mode)
                rows.append({"decoder": backend, "mode": mode, "frames": F, "seconds": t, "fps": F / t,
                             "vs_sequential": seq / t})
                print(f"{backend:10s} {mode:15s} F={F:5d}: {t:6.2f} s, {F / t:6.0f} frames/s, "
                      f"{seq / t:5.2f}x faster than the sequential decode", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=HERE, capture_output=True,
                            text=True).stdout.strip()
    env = {"device": "cpu", "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "pyav": av.__version__, "commit": commit, "video": video.name,
           "video_frames": n, "size": size, "decoders": _decoders(str(video))}
    out = HERE / "results" / args.tag
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    out.with_suffix(".log").write_text(json.dumps(env) + "\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    print(f"wrote {out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
