"""Seeded bugs in the CUDA kernels: each must make the emulated CUDA suite
(python_tests/test_cuda_emulator.py) fail, by a wrong result or by an emulator error.

Each bug is applied by hand to a copy of the checkout (built once; each bug then rebuilds
one file) and the tests of that op run on it.

    python tools/seeded_kernel_bugs.py            # all bugs, prints killed / survived
    python tools/seeded_kernel_bugs.py -k halo    # those whose name contains "halo"

Needs the package built in place (``python setup.py build_ext --inplace``): the CPU
kernels are the reference. ``missing_atomic`` is expected to survive: fibers are not
preempted between barriers, so a lost update cannot happen in the emulator (README).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K = "csrc/kernels/cuda/"

# name: (file, original text, mutated text, tests to run (-k))
BUGS = {
    "removed_barrier": (K + "softmax_entropy.cu", "  if (lane == 0) warp_state[warp] = st;\n  __syncthreads();",
                        "  if (lane == 0) warp_state[warp] = st;", "entropy"),
    "removed_chunk_barrier": (K + "local_entropy.cu", "    __syncthreads();  // the previous chunk is consumed",
                              "", "local"),
    "lane_divergent_continue": (K + "attention_scores.cu", "if (tmax == -INFINITY) continue;",
                                "if (s == -INFINITY) continue;", "attention"),
    "off_by_one_tile_load": (K + "attention_scores.cu", "e < kTile * D; e += kThreads",
                             "e < (kTile - 1) * D; e += kThreads", "attention"),
    "oob_shared_read": (K + "attention_scores.cu", "for (int w = 1; w < kWarps; ++w)",
                        "for (int w = 1; w <= kWarps; ++w)", "attention"),
    "tie_counted_with_le": (K + "segmented_topk.cu", "s_ties + tie_rank < remaining",
                            "s_ties + tie_rank <= remaining", "topk or select"),
    # (`above + hist[b] <= remaining` in the radix select is not a bug: when a bucket fills k
    # exactly it moves on to the next non-empty bucket with nothing left to take, the same
    # selection.)
    "radix_low_byte_ignored": (K + "segmented_topk.cu", "for (int shift = 24; shift >= 0; shift -= 8)",
                               "for (int shift = 24; shift > 0; shift -= 8)", "topk or select"),
    "scan_storage_reused": (K + "segmented_topk.cu",
                            "BlockScan(scan_storage).ExclusiveSum(tie, tie_rank, tie_total);\n    __syncthreads();",
                            "BlockScan(scan_storage).ExclusiveSum(tie, tie_rank, tie_total);", "topk or select"),
    "sort_tie_order_reversed": (K + "segmented_topk.cu", "uint64_t(0xffffffffu - uint32_t(i));",
                                "uint64_t(uint32_t(i));", "topk"),
    "dropped_halo": (K + "local_entropy.cu", "c0w = max(int64_t(0), w0 - r);", "c0w = w0;", "local"),
    "dropped_right_halo": (K + "local_entropy.cu", "min(p.W, w0 + tw + r) - c0w", "min(p.W, w0 + tw) - c0w",
                           "local"),
    "nan_flag_lost_in_merge": (K + "softmax_entropy.cu", "r.nan = a.nan || b.nan;", "r.nan = a.nan;", "entropy"),
    "fmaxf_in_max_reduce": (K + "attention_scores.cu", "acc = p.mean ? acc + prob : max_nan(acc, prob);",
                            "acc = p.mean ? acc + prob : fmaxf(acc, prob);", "attention"),
    "strict_aliasing_load": (K + "softmax_entropy.cu",
                             ("      scalar_t e[kVec];  // memcpy, not a scalar_t* into w: that breaks strict aliasing\n"
                              "      memcpy(e, &w, sizeof w);"),
                             "      const scalar_t* e = reinterpret_cast<const scalar_t*>(&w);", "entropy"),
    "select_offset_not_added": ("csrc/cuda_ops.cu", "if (i < n) x[i] += v0;", "if (i + 1 < n) x[i] += v0;",
                                "select"),
    "missing_atomic": (K + "segmented_topk.cu",
                       "atomicAdd(reinterpret_cast<unsigned long long*>(&hist[(key >> shift) & 255]), 1ull);",
                       "++hist[(key >> shift) & 255];", "topk or select"),
}


def copy_checkout(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files + [str(p.relative_to(ROOT)) for p in (ROOT / "adapttoken_ext").glob("_C*.so")]:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)


def run_tests(work: Path, select: str) -> bool:
    """True if the emulated tests of `select` pass in the copy."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        "python_tests/test_cuda_emulator.py", "-k", select],
                       cwd=work, env=env, capture_output=True, text=True, check=False)
    return r.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="only bugs whose name contains this")
    args = parser.parse_args()
    chosen = {n: b for n, b in BUGS.items() if args.k in n}
    survived = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copy_checkout(work)
        if not run_tests(work, "attention_dtypes and forward-max-1-dtype0"):  # builds the driver
            print("the unmutated suite fails in the copy; fix that first")
            return 2
        for name, (file, old, new, select) in chosen.items():
            path = work / file
            original = path.read_text()
            if original.count(old) != 1:
                print(f"{name}: the original text is not found exactly once in {file}")
                return 2
            path.write_text(original.replace(old, new))
            try:
                passed = run_tests(work, select)
            finally:
                path.write_text(original)
            print(f"{name}: {'SURVIVED' if passed else 'killed'}", flush=True)
            if passed:
                survived.append(name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} killed; survived: {survived or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
