"""Seeded bugs in the stage, adapter and hook code: each must make a test fail.

mutmut covers ``selection.py`` (fast tests); the stages run the tiny model, so here each
realistic bug is applied by hand to a copy of the checkout and the pipeline tests run on it.

    python tools/seeded_mutants.py            # all mutants, prints killed / survived
    python tools/seeded_mutants.py -k decode  # those whose name contains "decode"
    python tools/seeded_mutants.py -k gemma4 --tests python_tests/test_gemma4.py  # on one test file

Needs the package built in place (``pip install --no-build-isolation -e .``).
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

# name: (file, original text, mutated text)
MUTANTS = {
    "internvl_label_from_zero": ("adapttoken_ext/models/internvl.py", 'f"Frame{i + 1}: "', 'f"Frame{i}: "'),
    "internvl_label_not_in_unit": ("adapttoken_ext/models/internvl.py", "unit.append([u] * (n + tpu + 1))",
                                   "unit.append([-1] * n + [u] * (tpu + 1))"),
    "internvl_separator_wrong": ("adapttoken_ext/models/internvl.py", '("\\n" if i else "")', '(" " if i else "")'),
    "rope1d_not_compact": ("adapttoken_ext/models/rope1d.py", "n, compact=True)", "n, compact=False)"),
    "compact_positions_off_by_one": ("adapttoken_ext/models/base.py",
                                     "positions, nxt = torch.arange(n).expand(self.positions.shape[0], n), n",
                                     "positions, nxt = torch.arange(1, n + 1).expand(self.positions.shape[0], n), n"),
    "compact_next_position_off_by_one": ("adapttoken_ext/models/base.py",
                                         "torch.arange(n).expand(self.positions.shape[0], n), n\n",
                                         "torch.arange(n).expand(self.positions.shape[0], n), n + 1\n"),
    "prefill_positions_ignored": ("adapttoken_ext/models/common.py",
                                  "self._forward(emb, seq.positions, None, use_cache)",
                                  "self._forward(emb, torch.arange(len(seq))[None], None, use_cache)"),
    "mrope_text_at_max": ("adapttoken_ext/models/mrope.py",
                          "after_start = int(video.max()) + 1 if", "after_start = int(video.max()) if"),
    "mrope_text_after_max_hw": ("adapttoken_ext/models/mrope.py",  # transformers 5.x's rule
                                "after_start = int(video.max()) + 1 if video.numel() else prefix",
                                "after_start = prefix + max(rows, cols)"),
    "mrope_round_not_floor": ("adapttoken_ext/models/mrope.py",
                              "return [math.floor(t * step) for t in range(units)]",
                              "return [round(t * step) for t in range(units)]"),
    "mrope_tokens_per_second_ignored": ("adapttoken_ext/models/qwen2_5_vl.py",
                                        "return clip.seconds_per_unit, self.tokens_per_second",
                                        "return clip.seconds_per_unit, 1"),
    "mrope_final_compact": ("adapttoken_ext/models/qwen2_5_vl.py", "return Sequence(ids, key, units, pos, nxt)",
                            "return Sequence(ids, key, units, pos, nxt, compact=True)"),
    "mrope_h_w_swapped": ("adapttoken_ext/models/mrope.py", "return torch.stack([T, H, W])",
                          "return torch.stack([T, W, H])"),
    "position_check_off_by_one": ("adapttoken_ext/stages.py", "if last >= limit:", "if last > limit:"),
    "position_check_ignores_generated": ("adapttoken_ext/stages.py",
                                         "last = full.final_position_bound(budget) + plan.max_new_tokens",
                                         "last = full.final_position_bound(budget)"),
    "position_bound_ignores_unit_text": ("adapttoken_ext/models/base.py",
                                         "min(budget, int(vis.sum())) + most - 1",
                                         "min(budget, int(vis.sum())) - 1"),
    "position_bound_least_text": ("adapttoken_ext/models/base.py",
                                  "text.sort(descending=True)", "text.sort(descending=False)"),
    "rope1d_mean_ignored": ("adapttoken_ext/models/common.py", "(frames.float() - self.mean.to(dev) * 255.0)",
                            "(frames.float() - 127.5)"),
    "llava_ov_newline_not_filled": ("adapttoken_ext/models/llava_onevision.py",
                                    "emb[newline] = self.model.model.image_newline.to(emb.device, emb.dtype)", "pass"),
    "llava_ov_newline_missing": ("adapttoken_ext/models/llava_onevision.py", "[self.video_token_id] * (n + 1)",
                                 "[self.video_token_id] * n"),
    "qwen3_timestamp_first_frame": ("adapttoken_ext/stages.py",
                                    "(t[u * n] + t[u * n + n - 1]) / 2", "t[u * n]"),
    "qwen3_timestamp_format": ("adapttoken_ext/models/qwen3_vl.py", 'f"<{t:.1f} seconds>"', 'f"<{t:.2f} seconds>"'),
    "qwen3_deepstack_dropped": ("adapttoken_ext/models/qwen3_vl.py",
                                'enumerate(getattr(out, "deepstack_features", None) or [])', "enumerate([])"),
    "qwen3_deepstack_order": ("adapttoken_ext/models/qwen3_vl.py",
                              'sorted(visual.side, key=lambda k: int(k[len("deepstack"):]))',
                              "sorted(visual.side, reverse=True)"),
    "qwen3_timestamp_kept_when_patch_dropped": ("adapttoken_ext/models/qwen3_vl.py",
                                                "unit += [u] * (len(text) + tpu + 1)",
                                                "unit += [-1] * len(text) + [u] * (tpu + 1)"),
    "qwen3_grid_transposed": ("adapttoken_ext/models/qwen3_vl.py",
                              "[[len(clip.units), rows * self.merge, cols * self.merge]]",
                              "[[len(clip.units), cols * self.merge, rows * self.merge]]"),
    "qwen3_5_reference_layer_not_full": ("adapttoken_ext/models/qwen3_5.py",
                                         "return min(self.full_attention_layers, key=lambda i: (abs(i - target), i))",
                                         "return min(self.num_layers - 1, target)"),
    "queries_include_visual_rows": ("adapttoken_ext/stages.py",
                                    "capture.arm(ve, vs, ve, reduce)", "capture.arm(vs, vs, ve, reduce)"),
    "decode_position_not_advanced": ("adapttoken_ext/models/common.py",
                                     "DecodeState(past, state.position + 1)", "DecodeState(past, state.position)"),
    "option_first_form_only": ("adapttoken_ext/stages.py",
                               "logits[torch.tensor(f, device=logits.device)].logsumexp(0)",
                               "logits[f[0]]"),
    "group_stride_ignored": ("adapttoken_ext/stages.py",
                             "(1 if whole_video else self.group_stride)", "1"),
    "kept_tokens_not_in_time_order": ("adapttoken_ext/stages.py",
                                      "order = torch.argsort(keys)", "order = torch.arange(keys.numel())"),
    "lite_test_inverted": ("adapttoken_ext/stages.py",
                           "(cfg.lite and h < plan.stop_threshold)", "(cfg.lite and h > plan.stop_threshold)"),
    "visual_key_raster_wrong": ("adapttoken_ext/models/qwen2_5_vl.py",
                                "units[P:P + n] * tpu + torch.arange(n) % tpu",
                                "units[P:P + n] * tpu + torch.arange(n) % cols"),
    "visual_columns_shifted": ("adapttoken_ext/models/common.py",
                               "emb[seq.visual_columns.to(dev)] = visual.embeds",
                               "emb[seq.visual_columns.to(dev) - 1] = visual.embeds"),
    "eos_ignores_generation_config": ("adapttoken_ext/models/common.py",
                                      'for v in (getattr(getattr(model, "generation_config", None), "eos_token_id", None),',
                                      "for v in ("),
    "scale_ignored": ("adapttoken_ext/models/attention_hook.py",
                      'cap._score(query, key, kw.get("scaling") or mod.scaling)', "cap._score(query, key, 1.0)"),
    "seconds_per_unit_per_frame": ("adapttoken_ext/stages.py",
                                   "info.duration_s * adapter.unit / len(idx)", "info.duration_s / len(idx)"),
    "unit_text_dropped": ("adapttoken_ext/models/base.py",
                          "(~vis & torch.isin(self.unit, kept_units))", "(~vis & (self.unit < -1))"),
    "offloaded_device_ignored": ("adapttoken_ext/models/common.py",
                                 'dev = getattr(hook, "execution_device", None)', "dev = None"),
    "scores_from_wrong_group_rows": ("adapttoken_ext/stages.py",
                                     "scores = span[(seq.visual_columns - vs).to(span.device)].cpu()",
                                     "scores = span.flip(0)[(seq.visual_columns - vs).to(span.device)].cpu()"),
    "floor_checked_late": ("adapttoken_ext/stages.py",
                           "if int(capacity.clamp(max=cfg.per_group_floor).sum()) > cfg.budget:",
                           "if False:"),
    "hook_not_restored": ("adapttoken_ext/models/attention_hook.py",
                          "        local.pop(name, None)\n", "        pass\n"),
    "qwen3_5_moe_not_hybrid": ("adapttoken_ext/models/qwen3_5_moe.py", "from .qwen3_5 import Qwen3_5Adapter",
                               "from .qwen3_vl import Qwen3VLAdapter as Qwen3_5Adapter"),
    "qwen3_vl_moe_dense_class": ("adapttoken_ext/models/qwen3_vl_moe.py",
                                 'MODEL_CLASS = "Qwen3VLMoeForConditionalGeneration"',
                                 'MODEL_CLASS = "Qwen3VLForConditionalGeneration"'),
    "glm4v_time_from_mean": ("adapttoken_ext/models/glm4v.py", "self.time_ids(clip.frame_times_s[i * self.unit])",
                             "self.time_ids(clip.timestamps_s[i])"),
    "glm4v_time_before_block": ("adapttoken_ext/models/glm4v.py",
                                "[self.image_start_id] + [self.video_token_id] * tpu + [self.image_end_id] + text",
                                "text + [self.image_start_id] + [self.video_token_id] * tpu + [self.image_end_id]"),
    "glm4v_time_text_not_in_unit": ("adapttoken_ext/models/glm4v.py", "unit += [u] * (tpu + 2 + len(text))",
                                    "unit += [u] * (tpu + 2) + [-1] * len(text)"),
    "glm4v_budget_per_unit": ("adapttoken_ext/models/glm4v.py", "max_pixels=u * max_pixels)",
                              "max_pixels=max_pixels)"),
    "glm4v_moe_dense_class": ("adapttoken_ext/models/glm4v_moe.py",
                              'MODEL_CLASS = "Glm4vMoeForConditionalGeneration"',
                              'MODEL_CLASS = "Glm4vForConditionalGeneration"'),
    "glm46v_time_format": ("adapttoken_ext/models/glm46v.py", 'f"{t:.1f} seconds"', 'f"{t:.0f} seconds"'),
    "gemma4_no_bidirectional_blocks": ("adapttoken_ext/models/gemma4.py",
                                       "types = (seq.visual_key >= 0).long() * 2", "types = None"),
    "gemma4_minutes_unpadded": ("adapttoken_ext/models/gemma4.py", 'f"{int(t // 60):02d}:', 'f"{int(t // 60)}:'),
    "gemma4_no_separator": ("adapttoken_ext/models/gemma4.py", '[(" " if i else "") + self.time_text(t)',
                            '[self.time_text(t)'),
    "gemma4_time_text_not_in_frame": ("adapttoken_ext/models/gemma4.py", "unit += [u] * (len(text) + tpu + 2)",
                                      "unit += [-1] * len(text) + [u] * (tpu + 2)"),
    "gemma4_reference_layer_sliding": ("adapttoken_ext/models/gemma4.py",
                                       "return min(self.global_layers, key=lambda i: (abs(i - target), i))",
                                       "return target"),
    "gemma4_flash_allowed": ("adapttoken_ext/models/gemma4.py", 'if name and name.startswith("flash_attention"):',
                             "if False:"),
    "qwen2_vl_time_scaled_like_qwen2_5": ("adapttoken_ext/models/qwen2_vl.py", "return 1, 1",
                                          "return clip.seconds_per_unit, 2"),  # 2.5's released tps
    "qwen2_vl_time_per_frame": ("adapttoken_ext/models/qwen2_vl.py", "return 1, 1", "return self.unit, 1"),
    "qwen2_vl_window_attention_class": ("adapttoken_ext/models/qwen2_vl.py",
                                        'MODEL_CLASS = "Qwen2VLForConditionalGeneration"',
                                        'MODEL_CLASS = "Qwen2_5_VLForConditionalGeneration"'),
    "qwen2_vl_loaded_as_qwen2_5_vl": ("adapttoken_ext/models/__init__.py", '"qwen2_vl:Qwen2VLAdapter"',
                                      '"qwen2_5_vl:Qwen2_5_VLAdapter"'),
    # step 7 (selection.select_tokens, GroupCandidates): a fourth item names the tests to run
    "step7_partner_by_unit_not_encoded_index": ("adapttoken_ext/selection.py",
                                                "self.pos.append(pos.tolist())",
                                                "self.pos.append(unit.tolist())", "selection"),
    "step7_refill_exceeds_budget": ("adapttoken_ext/selection.py",
                                    "r1 = min(len(c), r0 + self.b[g] - self.kept[g])",
                                    "r1 = min(len(c), r0 + self.b[g] - self.kept[g] + 1)", "selection"),
    "step7_refill_meets_a_dropped_token": ("adapttoken_ext/selection.py",
                                           "            if self.state[g][r] == _KEPT:\n                return g, r",
                                           "            if True:\n                return g, r", "selection"),
    "step7_refill_ignores_the_next_kept": ("adapttoken_ext/selection.py",
                                           " or (after and self.similar(x, after))", "", "selection"),
    "step7_delta_ge": ("adapttoken_ext/selection.py", "> self.thr", ">= self.thr", "selection"),
    "step7_tie_keeps_the_later": ("adapttoken_ext/selection.py",
                                  "if self.score[g][r] <= self.score[ref[0]][ref[1]]:",
                                  "if self.score[g][r] < self.score[ref[0]][ref[1]]:", "selection"),
    "step7_walk_once": ("adapttoken_ext/selection.py", "            while self.walk(loc):\n                pass",
                        "            self.walk(loc)", "selection"),
    "step7_reencode_every_batch": ("adapttoken_ext/selection.py", "        if self._live is None:\n            self._live",
                                   "        if True:\n            self._live", "selection"),
    "step7_dropped_rows_kept": ("adapttoken_ext/selection.py",
                                "if self._emb.pop(r, None) is not None:", "if False:", "selection"),
    "step7_rows_not_mapped": ("adapttoken_ext/selection.py", "idx = self.rows[torch.tensor(ranks)]",
                              "idx = torch.tensor(ranks)", "selection"),
    "step7_ran_out_not_reported": ("adapttoken_ext/stages.py", "r.ran_out = k.numel() < b", "r.ran_out = False",
                                   "why"),
    "step7_budget_cap_not_reported": ("adapttoken_ext/pipeline.py",
                                "budget_capped=cfg.budget > sum(r.num_tokens for r in records)",
                                "budget_capped=False", "why"),
    # the selection methods (README "Baselines"), on python_tests/test_methods.py
    "uniform_one_unit_more": ("adapttoken_ext/methods/uniform.py", "n = min(ctx.cfg.budget // tpu, plan.num_units)",
                              "n = min(ctx.cfg.budget // tpu + 1, plan.num_units)", "methods"),
    "uniform_left_aligned": ("adapttoken_ext/methods/uniform.py", "(2 * i + 1) * num_units // (2 * n)",
                             "i * num_units // n", "methods"),
    "uniform_partial_units": ("adapttoken_ext/methods/uniform.py", "keys = (u[:, None] * tpu + torch.arange(tpu))",
                              "keys = (u[:, None] * tpu + torch.arange(tpu - 1))", "methods"),
    "flexselect_uses_entropies": ("adapttoken_ext/stages.py", "return h if entropy_weighted else torch.zeros_like(h)",
                                  "return h", "methods"),
    "random_unseeded": ("adapttoken_ext/methods/random.py", "gen = torch.Generator().manual_seed(ctx.cfg.seed)",
                        "gen = None", "methods"),
    "random_seed_ignored": ("adapttoken_ext/methods/random.py", "manual_seed(ctx.cfg.seed)", "manual_seed(0)",
                            "methods"),
    "random_draws_with_replacement": ("adapttoken_ext/methods/random.py",
                                      "keys = torch.randperm(n, generator=gen)[: ctx.cfg.budget].sort().values",
                                      "keys = torch.randint(n, (ctx.cfg.budget,), generator=gen).sort().values",
                                      "methods"),
    "encode_keys_wrong_rows": ("adapttoken_ext/methods/__init__.py", "rows = slot[mine // tpu] * tpu + mine % tpu",
                               "rows = mine % (len(chunk) * tpu)", "methods"),
    "encode_keys_every_unit": ("adapttoken_ext/methods/__init__.py", "units = torch.unique(keys // tpu).tolist()",
                               "units = list(range(plan.num_units))", "methods"),
    "method_check_skipped": ("adapttoken_ext/pipeline.py",
                             "        methods.get(method).check(self.config)\n        return self._answer_all(",
                             "        return self._answer_all(", "methods"),
    # adapttoken niah (python_tests/test_niah_bench.py)
    "niah_accuracy_over_ran_trials": ("adapttoken_ext/niah_bench.py",
                                      '"accuracy": mean([bool(t.get("correct")) for t in trials]),',
                                      '"accuracy": mean([bool(t.get("correct")) for t in ok]),', "niah"),
    "niah_needle_cell_overlap_off_by_one": ("adapttoken_ext/niah_bench.py",
                                            "if mask[h * H // rows:(h + 1) * H // rows,",
                                            "if mask[h * H // rows:(h + 1) * H // rows + 1,", "niah"),
    "niah_one_letter_per_cell": ("adapttoken_ext/niah_bench.py", "letters[i % 4]) for i in range(count)]",
                                 "letters[i // 4 % 4]) for i in range(count)]", "niah"),
    "niah_same_needles_every_depth": ("adapttoken_ext/niah_bench.py",
                                      'rng = random.Random(f"niah depth {float(depth)!r}")',
                                      'rng = random.Random("niah depth")', "niah"),
    "niah_letter_anywhere": ("adapttoken_ext/niah_bench.py", 're.match(r"\\s*\\(?([A-Z])(?![a-z])", answer)',
                             're.search(r"([A-Z])(?![a-z])", answer)', "niah"),
    "niah_resume_ignores_journal": ("adapttoken_ext/niah_bench.py",
                                    'done = {_key(r) for r in _journal(journal) if "error" not in r}',
                                    "done = set()", "niah"),
    "niah_failed_trials_not_retried": ("adapttoken_ext/niah_bench.py",
                                       'done = {_key(r) for r in _journal(journal) if "error" not in r}',
                                       "done = {_key(r) for r in _journal(journal)}", "niah"),
    "niah_frames_not_per_trial": ("adapttoken_ext/niah_bench.py",
                                  "dataclasses.replace(base, frames=F, budget=budget,",
                                  "dataclasses.replace(base, budget=budget,", "niah"),
    "niah_recall_over_kept": ("adapttoken_ext/niah_bench.py", "len(truth & kept) / len(truth) if truth",
                              "len(truth & kept) / max(1, len(kept)) if truth", "niah"),
    "niah_run_record_not_compared": ("adapttoken_ext/niah_bench.py", "diff = _differences(old, record)", "diff = []", "niah"),
    "niah_default_budget_one_unit": ("adapttoken_ext/niah_bench.py", "budget = 2 * tpu if budget is None",
                                     "budget = tpu if budget is None", "niah"),
}

TESTS = ["python_tests/test_sequence.py", "python_tests/test_positions.py", "python_tests/test_pipeline.py",
         "python_tests/test_qwen3.py", "python_tests/test_qwen2_vl.py",
         "python_tests/test_internvl.py", "python_tests/test_llava_onevision.py",
         "python_tests/test_glm4v.py", "python_tests/test_gemma4.py",
         "-k", "not 10k_frames and not demo_console"]
# tests named by a mutant's fourth item
SUITES = {"selection": ["python_tests/test_selection.py"],
          "why": ["python_tests/test_pipeline.py", "-k", "why_fewer"],
          "methods": ["python_tests/test_methods.py"],
          "niah": ["python_tests/test_niah_bench.py"]}


def run(name: str, file: str, old: str, new: str, tests=TESTS) -> bool:
    """True when the mutant is killed (a test fails)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "build", "mutants", "__pycache__"))
        path = copy / file
        text = path.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{name}: the original text is not found exactly once in {file}")
        path.write_text(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=str(copy))
        p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                           cwd=copy, env=env, capture_output=True, text=True)
        return p.returncode != 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only mutants whose name contains this")
    ap.add_argument("--tests", nargs="+", default=None,
                    help="test files to run on each mutant (default: all the pipeline and family tests)")
    args = ap.parse_args()
    tests = args.tests or TESTS
    chosen = {k: v for k, v in MUTANTS.items() if args.k in k}
    file, old, _ = MUTANTS["queries_include_visual_rows"]
    suites = {m[3] if len(m) > 3 else None for m in chosen.values()}
    for suite in sorted(suites, key=str):
        if run("baseline", file, old, old, SUITES[suite] if suite else tests):
            print(f"the unmutated copy fails its tests ({suite or 'default'}): fix that first")
            return 2
    survived = []
    for name, (file, old, new, *suite) in chosen.items():
        killed = run(name, file, old, new, SUITES[suite[0]] if suite else tests)
        print(f"{'killed  ' if killed else 'SURVIVED'} {name}", flush=True)
        if not killed:
            survived.append(name)
    print(f"{len(chosen) - len(survived)}/{len(chosen)} seeded mutants killed")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
