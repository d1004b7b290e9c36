"""The score hook under concurrency and on the flash-attention path (method.md step 3).

Threads: two pipelines in two threads, on two models or on one, each get the scores of
their own forward and leave transformers' attention mapping as it was. A registered
stand-in attention function sleeps in the reference layer, so that the two threads'
reference-layer forwards overlap every time (without the lock they interleave).

Flash attention: a stand-in that dispatches exactly as transformers' flash path does
(explicit ``cu_seq_lens``, else sequences inferred from position ids with transformers' own
``_is_packed_sequence`` / ``prepare_fa_kwargs_from_position_ids``, else one dense sequence)
and computes each sequence with sdpa, checked against the sdpa backend."""
import threading
import time

import pytest
import torch

from adapttoken_ext import AdaptToken, AdaptTokenConfig, stages
from adapttoken_ext.models import load
from adapttoken_ext.models.tiny import ensure_tiny_model
from adapttoken_ext.video import VideoReader, sample_video

SMALL = dict(frames=32, max_pixels=112 * 224, units_per_group=8, budget=24)
QUESTIONS = ["What are the people doing?", "Which colour is the road?"]
OPTIONS = ["A. Riding bikes", "B. Cooking", "C. Chess", "D. Swimming"]
SLOW = "test_slow_sdpa"
SLOW_S = 0.3


def _register_slow(reference_layer):
    """sdpa, but the reference layer's attention takes SLOW_S seconds (the GIL released)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def slow(module, q, k, v, *args, **kw):
        if getattr(module, "layer_idx", None) == reference_layer and q.shape[2] > 1:
            time.sleep(SLOW_S)
        return sdpa_attention_forward(module, q, k, v, *args, **kw)
    AttentionInterface.register(SLOW, slow)
    AttentionMaskInterface.register(SLOW, sdpa_mask)


def _inputs(ad, question):
    cfg = AdaptTokenConfig(**SMALL)
    with VideoReader(sample_video("bikes.mp4")) as r:
        plan = stages.make_plan(ad, r.info, cfg, question, OPTIONS)
        enc = stages.encode_group(ad, r, plan, 0)
    seq = ad.sequence(plan.prompt, plan.clip(enc.units), plan.grid)
    return seq, enc.visual


def _scores(at, seq, visual):
    vs, ve = seq.visual_span()
    at.capture.arm(ve, vs, ve)
    at.adapter.prefill(seq, visual)
    return at.capture.take()


def _in_threads(jobs):
    """Run the zero-argument ``jobs`` in threads started together; their results."""
    out, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def run(i):
        try:
            start.wait()
            out[i] = jobs[i]()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return out


def _mapping():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    return dict(ALL_ATTENTION_FUNCTIONS._local_mapping)


@pytest.fixture(scope="module")
def slow_models():
    path = str(ensure_tiny_model())
    probe = load(path)
    ref = probe.default_reference_layer()
    _register_slow(ref)
    return [load(path, attn_implementation=SLOW) for _ in range(2)]


def test_two_threads_two_models(slow_models):
    """Two pipelines on two models at once: each gets its own scores, and the attention
    mapping is left as it was (no stale wrapper that a later forward would trip on)."""
    before = _mapping()
    ats = [AdaptToken(ad, AdaptTokenConfig(**SMALL)) for ad in slow_models]
    try:
        inputs = [_inputs(ad, q) for ad, q in zip(slow_models, QUESTIONS)]
        alone = [_scores(at, *x) for at, x in zip(ats, inputs)]
        assert not torch.equal(alone[0], alone[1])
        t0 = time.perf_counter()
        together = _in_threads([lambda at=at, x=x: _scores(at, *x) for at, x in zip(ats, inputs)])
        took = time.perf_counter() - t0
        for a, b in zip(alone, together):
            torch.testing.assert_close(b, a)
        assert _mapping() == before
        torch.testing.assert_close(_scores(ats[0], *inputs[0]), alone[0])  # and still works
        assert took >= 2 * SLOW_S  # the armed layer ran one thread at a time
    finally:
        for at in ats:
            at.close()


def test_two_threads_one_model(slow_models):
    """Two pipelines on one model at once, different questions: each capture is scored by
    its own thread's query, never by the other's; and a third thread's unarmed forward of
    the same model, arriving while the wrapper is in place, passes through it untouched."""
    ad = slow_models[0]
    ats = [AdaptToken(ad, AdaptTokenConfig(**SMALL)) for _ in range(2)]
    try:
        inputs = [_inputs(ad, q) for q in QUESTIONS]
        alone = [_scores(at, *x) for at, x in zip(ats, inputs)]
        logits = ad.prefill(*inputs[1])[0]

        def unarmed():
            time.sleep(SLOW_S / 3)  # into the armed forward's reference layer
            return ad.prefill(*inputs[1])[0]
        *together, late = _in_threads([lambda at=at, x=x: _scores(at, *x) for at, x in zip(ats, inputs)]
                                      + [unarmed])
        torch.testing.assert_close(late, logits)
        for a, b in zip(alone, together):
            torch.testing.assert_close(b, a)
    finally:
        for at in ats:
            at.close()


# ---- flash attention ---------------------------------------------------------------------

FLASH = "test_flash_standin"


def _register_flash_standin():
    """A flash-attention stand-in dispatching as ``_flash_attention_forward`` does; ``used``
    records the branch of every multi-token call."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
    from transformers.modeling_flash_attention_utils import (
        _is_packed_sequence,
        prepare_fa_kwargs_from_position_ids,
    )
    used = []

    def attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, position_ids=None,
                  cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None,
                  is_causal=None, **kw):
        causal = module.is_causal if is_causal is None else is_causal  # as flash_attention_forward
        assert attention_mask is None  # flash's mask function gives None for one unpadded sequence
        B, _, Lq, _ = q.shape
        Lk = k.shape[2]
        if all(x is not None for x in (cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k)):
            branch, cq, ck = "explicit", cu_seq_lens_q.tolist(), cu_seq_lens_k.tolist()
        elif _is_packed_sequence(position_ids, B):
            (cq, ck), _ = prepare_fa_kwargs_from_position_ids(position_ids)
            branch, cq, ck = "inferred", cq.tolist(), ck.tolist()
        else:
            branch, cq, ck = "dense", [0, Lq], [0, Lk]
        if Lq > 1 and causal:  # the language model's calls (the vision tower's are not causal)
            used.append(branch)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        out = torch.empty_like(q)
        for (q0, q1), (k0, k1) in zip(zip(cq, cq[1:]), zip(ck, ck[1:])):
            lq, lk = q1 - q0, k1 - k0  # causal: aligned bottom-right as flash-attn >= 2.1
            mask = torch.ones(lq, lk, dtype=torch.bool)
            mask = mask.tril(lk - lq) if causal else mask
            out[:, :, q0:q1] = torch.nn.functional.scaled_dot_product_attention(
                q[:, :, q0:q1], k[:, :, k0:k1], v[:, :, k0:k1], attn_mask=mask, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    AttentionInterface.register(FLASH, attention)
    AttentionMaskInterface.register(FLASH, flash_attention_mask)
    return used


@pytest.mark.parametrize("family", ["llava_onevision"])
def test_flash_path_gets_one_explicit_sequence(family, monkeypatch):
    """1-D RoPE: pruned positions are not contiguous, which transformers' flash path would
    read as packed sequences. The adapter passes the sequence explicitly, so the stand-in
    never infers boundaries, and even positions that would fool the inference (a repeated
    minimum) give sdpa's logits; the whole pipeline gives sdpa's answer and scores."""
    import transformers.modeling_utils
    used = _register_flash_standin()
    # a name with "flash" in it is a flash backend to transformers, which preloads the
    # flash-attn package at load time; the stand-in needs none
    monkeypatch.setattr(transformers.modeling_utils, "lazy_import_flash_attention", lambda *a, **k: None)
    path = str(ensure_tiny_model(family))
    flash, sdpa = load(path, attn_implementation=FLASH), load(path, attn_implementation="sdpa")
    seq, visual = _inputs(sdpa, QUESTIONS[0])
    fooling = seq.positions.clone()
    fooling[:, len(seq) // 2:] -= fooling[0, len(seq) // 2] - fooling.min()  # the minimum again, mid-sequence
    for positions in (seq.positions, fooling):
        s = type(seq)(seq.input_ids, seq.visual_key, seq.unit, positions, seq.next_position)
        torch.testing.assert_close(flash.prefill(s, visual)[0], sdpa.prefill(s, visual)[0],
                                   rtol=1e-4, atol=1e-4)
    results = {}
    for name, ad in (("flash", flash), ("sdpa", sdpa)):
        with AdaptToken(ad, AdaptTokenConfig(**SMALL)) as at:
            results[name] = at.answer(str(sample_video("bikes.mp4")), QUESTIONS[0], OPTIONS, progress=False)
    assert results["flash"].answer == results["sdpa"].answer
    assert [(t["frame"], t["h"], t["w"]) for t in results["flash"].selected_tokens] == \
        [(t["frame"], t["h"], t["w"]) for t in results["sdpa"].selected_tokens]
    assert used and set(used) == {"explicit"}
