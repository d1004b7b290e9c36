"""``adapttoken batch``: per-line errors, answers equal to ``AdaptToken.answer`` one by one,
resumption after a kill (and a torn last line), and 2 processes under torchrun (gloo)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from adapttoken_ext import AdaptToken, AdaptTokenConfig, batch
from adapttoken_ext.models.tiny import ensure_tiny_model
from adapttoken_ext.video import sample_video

SMALL = dict(frames=32, max_pixels=112 * 224, units_per_group=8, budget=40)
FLAGS = ["--frames", "32", "--max-pixels", str(112 * 224), "--units-per-group", "8", "--budget", "40"]
GOOD = [
    {"id": "a1", "video": "bikes.mp4", "question": "What are they doing?", "options": ["A. Riding", "B. Cooking"]},
    {"id": "b1", "video": "bunny.mp4", "question": "Who is there?"},
    {"id": "c1", "video": "sub/bikes2.mp4", "question": "Which season?", "options": ["A. Winter", "B. Summer"]},
    {"id": "a2", "video": "bikes.mp4", "question": "Where is it?", "options": ["A. Road", "B. Sea"]},
    {"id": 7, "video": "bunny.mp4", "question": "Is it over?", "options": ["A. yes", "B. no"]},
    {"id": "c2", "video": "sub/bikes2.mp4", "question": "How many people?"},
    {"id": "a3", "video": "bikes.mp4", "question": "What colour is the road?"},
    {"id": "b2", "video": "bunny.mp4", "question": "Is it day or night?", "options": ["A. Day", "B. Night"]},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    (d / "sub").mkdir()
    shutil.copy(sample_video("bikes.mp4"), d / "bikes.mp4")
    shutil.copy(sample_video("bikes.mp4"), d / "sub" / "bikes2.mp4")
    shutil.copy(sample_video("bigbuckbunny.mp4"), d / "bunny.mp4")
    (d / "bad.mp4").write_bytes(b"not a video at all")
    _write(d / "good.jsonl", GOOD)
    return d


@pytest.fixture(scope="module")
def at():
    return AdaptToken.from_pretrained(str(ensure_tiny_model()), AdaptTokenConfig(**SMALL))


def _write(path, rows):
    with open(path, "w") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _load(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _strip(records):
    """Records without the measured fields (timings, memory)."""
    return [{k: v for k, v in r.items() if k not in ("timings_s", "peak_memory_bytes")} for r in records]


def _expected(at, folder, rows):
    out = []
    for r in rows:
        res = at.answer(str(folder / r["video"]), r["question"], r.get("options"), progress=False)
        out.append({"id": r["id"], **res.to_dict()})
    return _strip(out)


def test_errors_per_line_and_answers_in_input_order(at, folder, capsys):
    rows = [GOOD[0],
            {"id": "a1", "video": "bikes.mp4", "question": "duplicate"},
            {"id": "m", "video": "missing.mp4", "question": "?"},
            {"id": "bad", "video": "bad.mp4", "question": "?"},
            {"id": "q", "video": "bikes.mp4"},
            {"id": "o", "video": "bikes.mp4", "question": "?", "options": "A. x"},
            {"id": "opt", "video": "bikes.mp4", "question": "?", "options": ["no letter"]},
            "[1, 2]", "{not json", "",
            GOOD[1]]
    _write(folder / "mixed.jsonl", rows)
    out = folder / "mixed_out.jsonl"
    assert batch.run(at, str(folder / "mixed.jsonl"), str(out), progress=False) == 1
    got = _load(out)
    assert len(got) == 10  # one per non-blank input line, in input order
    assert _strip([got[0], got[9]]) == _expected(at, folder, [GOOD[0], GOOD[1]])
    errors = {g["line"]: g["error"] for g in got if "error" in g}
    assert "duplicate id 'a1' (first on line 1)" in errors[2]
    assert "no such file" in errors[3] and "missing.mp4" in errors[3]
    assert "bad.mp4" in errors[4] and "not a readable video" in errors[4]
    assert "missing field 'question'" in errors[5]
    assert "'options' must be a list" in errors[6]
    assert "options" in errors[7]
    assert "not a JSON object" in errors[8] and "not valid JSON" in errors[9]
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8, 9]
    err = capsys.readouterr().err
    assert "line 4:" in err and "2 answers, 8 errors" in err


def test_groups_by_video_and_encodes_each_once(at, folder):
    calls = []
    f = at.adapter.encode
    at.adapter.encode = lambda frames: calls.append(frames.shape[0]) or f(frames)
    at.visual_cache.clear()
    try:
        out = folder / "grouped.jsonl"
        assert batch.run(at, str(folder / "good.jsonl"), str(out), progress=False) == 0
    finally:
        at.adapter.encode = f
    got = _load(out)
    assert [g["id"] for g in got] == [r["id"] for r in GOOD]
    assert _strip(got) == _expected(at, folder, GOOD)
    groups = {r["video"]: len(g["groups"]) for r, g in zip(GOOD, got)}
    assert len(calls) == sum(groups.values())  # 3 videos, each group encoded once


def test_resume_skips_answered_ids_and_redoes_a_torn_line(at, folder):
    full = folder / "full.jsonl"
    assert batch.run(at, str(folder / "good.jsonl"), str(full), progress=False) == 0
    part = folder / "part.jsonl"
    lines = open(full).read().splitlines(keepends=True)
    with open(part, "w") as f:  # two answers, then a line cut by a crash
        f.writelines([lines[3], lines[0], lines[5][:40]])
    seen = []
    f = at.answer_many
    at.answer_many = lambda video, qs, **kw: seen.append(qs[0][0]) or f(video, qs, **kw)
    try:
        assert batch.run(at, str(folder / "good.jsonl"), str(part), progress=False) == 0
    finally:
        at.answer_many = f
    assert sorted(seen) == sorted(r["question"] for i, r in enumerate(GOOD) if i not in (0, 3))
    assert _strip(_load(part)) == _strip(_load(full))


def test_bad_arguments_are_named(at, folder):
    with pytest.raises(FileNotFoundError, match="--input"):
        batch.run(at, str(folder / "none.jsonl"), str(folder / "o.jsonl"))
    with pytest.raises(ValueError, match="--output"):
        batch.run(at, str(folder / "good.jsonl"), str(folder / "no" / "o.jsonl"))
    with pytest.raises(ValueError, match="--output"):
        batch.run(at, str(folder / "good.jsonl"), str(folder / "good.jsonl"))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(os.path.dirname(batch.__file__)),
                                                    env.get("PYTHONPATH")) if p)
    return env


def _cli(folder, out, nproc=1, **kw):
    cmd = [sys.executable, "-m", "adapttoken_ext.cli", "batch"]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--standalone", "-m", "adapttoken_ext.cli", "batch"]
    return cmd + ["--input", str(folder / "good.jsonl"), "--output", str(out), "--quiet",
                  "--model", str(ensure_tiny_model()), *FLAGS]


def test_two_processes_and_a_killed_run_give_the_one_process_file(folder):
    one, two, killed = folder / "one.jsonl", folder / "two.jsonl", folder / "killed.jsonl"
    subprocess.run(_cli(folder, one), env=_env(), check=True, capture_output=True, timeout=600)
    p = subprocess.run(_cli(folder, two, nproc=2), env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rank 1/2" in p.stderr and "rank 0/2" in p.stderr
    assert not [n for n in os.listdir(folder) if ".rank" in n]  # journals merged and removed
    assert _strip(_load(two)) == _strip(_load(one))

    proc = subprocess.Popen(_cli(folder, killed), env=_env(), stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if killed.exists() and killed.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n = killed.read_bytes().count(b"\n")
    assert 2 <= n < len(GOOD)
    with open(killed, "ab") as f:
        f.write(b'{"id": "half a li')  # as if killed mid-write
    subprocess.run(_cli(folder, killed), env=_env(), check=True, capture_output=True, timeout=600)
    assert _strip(_load(killed)) == _strip(_load(one))
