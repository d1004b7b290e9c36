"""The lmms-eval plug-in: entry-point registration, model_args, prompts, and an offline
``python -m lmms_eval`` run over the local task in ``lmms_eval_task/`` (skipped when
lmms-eval is not installed; ``.ci/run`` installs it)."""
import glob
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from adapttoken_ext.models.tiny import ensure_tiny_model

TASK_DIR = Path(__file__).parent / "lmms_eval_task"
ARGS = "frames=32,max_pixels=25088,units_per_group=8,budget=40"


def test_package_imports_without_lmms_eval():
    code = ("import sys; sys.modules['lmms_eval'] = None\n"  # any import of it fails
            "import adapttoken_ext, adapttoken_ext.integrations, adapttoken_ext.pipeline, adapttoken_ext.cli\n"
            "try:\n    import adapttoken_ext.integrations.lmms_eval\nexcept ImportError: print('needs lmms_eval')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "needs lmms_eval"


def test_split_prompt():
    pytest.importorskip("lmms_eval")
    from adapttoken_ext.integrations.lmms_eval import split_prompt
    q, o = split_prompt("<video>Select the best answer.\nWhat is shown?\nA. a cat\nB) a dog\n(C) a fish\n"
                        "Answer with the option's letter from the given choices directly.")
    assert o == ["A. a cat", "B) a dog", "(C) a fish"]
    assert q == ("Select the best answer.\nWhat is shown?\n"
                 "Answer with the option's letter from the given choices directly.")
    assert split_prompt("Describe the video in detail.") == ("Describe the video in detail.", None)


def test_registered_and_model_args_checked():
    pytest.importorskip("lmms_eval")
    # imported before lmms_eval.models on purpose: the entry point must load in this order too
    from adapttoken_ext.integrations.lmms_eval import AdaptTokenLMMS
    eps = [e for e in entry_points(group="lmms_eval.models") if e.name == "adapttoken"]
    if not eps:
        pytest.skip("adapttoken-ext is not installed (pip install -e .): no entry points")
    manifest = eps[0].load()()
    assert manifest.model_id == "adapttoken" and manifest.simple_class_path.endswith(".AdaptTokenLMMS")
    from lmms_eval.models import get_model
    assert get_model("adapttoken") is AdaptTokenLMMS
    with pytest.raises(ValueError, match="unknown key.*bogus"):
        AdaptTokenLMMS(pretrained=str(ensure_tiny_model()), bogus=1)
    with pytest.raises(ValueError, match="budget"):
        AdaptTokenLMMS(pretrained=str(ensure_tiny_model()), budget=0)
    m = AdaptTokenLMMS(pretrained=str(ensure_tiny_model()), frames=32, lite=True)
    assert m.pipeline.config.frames == 32 and m.pipeline.config.lite is True
    with pytest.raises(NotImplementedError, match="loglikelihood"):
        m.loglikelihood([])


def _lmms_eval(out, nproc=1):
    """``python -m lmms_eval`` (under torchrun with ``nproc`` > 1) on the local task;
    returns the results JSON and ``{doc_id: response}`` from the logged samples."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               HF_DATASETS_CACHE=str(out / "hf"))
    launch = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                  str(nproc)] if nproc > 1 else [])
    cmd = launch + ["-m", "lmms_eval", "--model", "adapttoken",
                    "--model_args", f"pretrained={ensure_tiny_model()},{ARGS}",
                    "--tasks", "adapttoken_mc", "--include_path", str(TASK_DIR), "--limit", "4",
                    "--batch_size", "1", "--log_samples", "--output_path", str(out / "out")]
    p = subprocess.run(cmd, env=env, cwd=TASK_DIR, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    results = glob.glob(str(out / "out" / "**" / "*_results.json"), recursive=True)
    samples = glob.glob(str(out / "out" / "**" / "*_samples_adapttoken_mc.jsonl"), recursive=True)
    assert len(results) == 1 and len(samples) == 1, p.stderr[-3000:]
    with open(samples[0]) as f:
        answers = {s["doc_id"]: (s["filtered_resps"], s["token_counts"]) for s in map(json.loads, f)}
    return json.loads(Path(results[0]).read_text()), answers


@pytest.fixture(scope="module")
def lmms_eval_installed():
    pytest.importorskip("lmms_eval")
    if not [e for e in entry_points(group="lmms_eval.models") if e.name == "adapttoken"]:
        pytest.skip("adapttoken-ext is not installed (pip install -e .): no entry points")


def test_offline_lmms_eval_run(lmms_eval_installed, tmp_path):
    res, answers = _lmms_eval(tmp_path)
    acc = res["results"]["adapttoken_mc"]["accuracy,none"]
    assert 0.0 <= acc <= 1.0
    assert res["n-samples"]["adapttoken_mc"]["effective"] == 4
    assert sorted(answers) == [0, 1, 2, 3]
    for _, counts in answers.values():  # the visual tokens kept, reported as input tokens
        assert 0 < counts[0]["input_tokens"] <= 40
    # data parallel: 2 ranks (torchrun, gloo on CPU) answer the same 4 documents alike
    res2, answers2 = _lmms_eval(tmp_path / "two", nproc=2)
    assert answers2 == answers
    assert res2["results"]["adapttoken_mc"]["accuracy,none"] == acc
