"""``adapttoken batch``: per-line errors, answers equal to ``AdaptToken.answer`` one by one,
resumption after a kill (and a torn last line), 2 processes under torchrun (gloo), a rerun
with other settings refused or restarted, any exception a line's error, a question the
process dies on not retried forever, and a failed rank named instead of waited for."""
import hashlib
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
    shutil.copy(str(full) + ".run.json", str(part) + ".run.json")  # what produced them
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


# ---- what produced the answers; reruns -----------------------------------------------------

TWO = [GOOD[0], GOOD[3]]  # two questions about one video: a short run


def test_rerun_with_other_settings_is_refused_or_restarted(at, folder):
    _write(folder / "two.jsonl", TWO)
    inp, out = str(folder / "two.jsonl"), str(folder / "settings.jsonl")
    assert batch.run(at, inp, out, progress=False) == 0
    before = open(out).read()
    other = AdaptToken(at.adapter, AdaptTokenConfig(**{**SMALL, "budget": 48}))
    lite = AdaptToken(at.adapter, AdaptTokenConfig(**{**SMALL, "lite": True}))
    try:
        for pipe, why in ((other, "budget: 40 there, 48 now"), (lite, "lite: False there, True now")):
            with pytest.raises(ValueError, match="--output") as e:
                batch.run(pipe, inp, out, progress=False)
            assert why in str(e.value) and "--restart" in str(e.value)
        renamed = AdaptToken(at.adapter, AdaptTokenConfig(**SMALL), name="someone/else")
        with pytest.raises(ValueError, match="model: .* there, 'someone/else' now"):
            batch.run(renamed, inp, out, progress=False)
        renamed.close()
        _write(folder / "two.jsonl", [TWO[0], {**TWO[1], "question": "Where is it now?"}])
        with pytest.raises(ValueError, match="--input: its content differs"):
            batch.run(at, inp, out, progress=False)
        _write(folder / "two.jsonl", TWO)
        assert open(out).read() == before  # refused runs leave the answers as they were
        (folder / "notes.txt").write_text("someone's notes\n")
        with pytest.raises(ValueError, match="is not empty but has no"):  # not truncated as a torn line
            batch.run(at, inp, str(folder / "notes.txt"), progress=False)
        assert (folder / "notes.txt").read_text() == "someone's notes\n"
        rec = json.loads(open(out + ".run.json").read())
        assert rec["model"] == at.name and rec["settings"]["budget"] == 40 and rec["settings"]["lite"] is False
        assert rec["input_sha256"] == hashlib.sha256(open(inp, "rb").read()).hexdigest()
        assert rec["dtype"] == "float32" and rec["attn_implementation"] == "sdpa"
        assert batch.run(other, inp, out, progress=False, restart=True) == 0
        assert _strip(_load(out)) == _expected(other, folder, TWO)
        assert json.loads(open(out + ".run.json").read())["settings"]["budget"] == 48
    finally:
        other.close()
        lite.close()


def test_a_rank_that_journals_before_rank_0_starts_is_not_refused(at, folder):
    """Ranks start at different times: rank 1 may journal answers before rank 0 has even
    checked the output. Rank 0 must then find a run record beside those journals (each rank
    writes it before its first line), not refuse them as someone else's file."""
    rows = [GOOD[0], GOOD[1]]  # two videos: one per rank
    _write(folder / "ranks_in.jsonl", rows)
    inp, out = str(folder / "ranks_in.jsonl"), str(folder / "ranks.jsonl")
    assert batch.run(at, inp, out, progress=False, rank=1, world=2, gather=lambda s: ["ok", "ok"]) == 0
    assert os.path.getsize(out + ".rank1") > 0
    assert batch.run(at, inp, out, progress=False, rank=0, world=2, gather=lambda s: ["ok", "ok"]) == 0
    assert _strip(_load(out)) == _expected(at, folder, rows)


def test_cli_refuses_a_rerun_before_loading_the_model(folder, capsys, monkeypatch):
    from adapttoken_ext import cli
    _write(folder / "two_cli.jsonl", TWO)
    args = ["batch", "--input", str(folder / "two_cli.jsonl"), "--output", str(folder / "cli.jsonl"),
            "--quiet", "--model", str(ensure_tiny_model()), *FLAGS]
    assert cli.main(args) == 0
    first = _load(folder / "cli.jsonl")
    real = AdaptToken.from_pretrained
    monkeypatch.setattr(AdaptToken, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    capsys.readouterr()
    assert cli.main(args[:-1] + ["41"]) == 2  # --budget 41
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("adapttoken: error:")] == [
        ln for ln in err.splitlines() if "--output" in ln and "budget: 40 there, 41 now" in ln]
    assert cli.main(["batch", "--input", str(folder / "two_cli.jsonl"), "--output", str(folder),
                     "--quiet"]) == 2
    assert "--output" in capsys.readouterr().err  # a directory, named before any model work
    monkeypatch.setattr(AdaptToken, "from_pretrained", real)
    assert cli.main(args[:-1] + ["41", "--restart"]) == 0
    assert [g["budget"] for g in _load(folder / "cli.jsonl")] == [41, 41] != [g["budget"] for g in first]


def test_any_exception_becomes_the_lines_error(at, folder, monkeypatch):
    import torch
    rows = [GOOD[0], {**GOOD[0], "id": "rt", "question": "raise"}, {**GOOD[0], "id": "oom", "question": "oom"},
            GOOD[3]]
    _write(folder / "raising.jsonl", rows)
    events = []
    f = at.answer_many

    def answer_many(video, qs, **kw):
        events.append(qs[0][0])
        if qs[0][0] == "raise":
            raise RuntimeError("boom\nsecond line")
        if qs[0][0] == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return f(video, qs, **kw)
    monkeypatch.setattr(at, "answer_many", answer_many)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("emptied"))
    out = folder / "raising_out.jsonl"
    assert batch.run(at, str(folder / "raising.jsonl"), str(out), progress=False) == 1
    got = _load(out)
    assert got[1]["error"] == "RuntimeError: boom" and got[1]["line"] == 2
    assert got[2]["error"].startswith("CUDA out of memory (CUDA out of memory. Tried to allocate 20.00 GiB)")
    assert _strip([got[0], got[3]]) == _expected(at, folder, [GOOD[0], GOOD[3]])
    # the cache is emptied right after the out-of-memory question, before the next one
    assert events == [GOOD[0]["question"], "raise", "oom", "emptied", GOOD[3]["question"]]


class Died(BaseException):
    """Stands for the process dying (SIGKILL, the OOM killer) inside a question."""


def test_a_question_the_process_dies_on_is_not_retried_forever(at, folder, monkeypatch):
    rows = [GOOD[0], {**GOOD[0], "id": "fatal", "question": "die here"}, GOOD[3]]
    _write(folder / "dies.jsonl", rows)
    asked = []
    f = at.answer_many

    def answer_many(video, qs, **kw):
        asked.append(qs[0][0])
        if qs[0][0] == "die here":
            raise Died
        return f(video, qs, **kw)
    monkeypatch.setattr(at, "answer_many", answer_many)
    inp, out = str(folder / "dies.jsonl"), str(folder / "dies_out.jsonl")
    for _ in range(2):  # the first death may be a kill by hand: retried once
        with pytest.raises(Died):
            batch.run(at, inp, out, progress=False)
    assert asked.count("die here") == 2
    for _ in range(2):  # then recorded as the line's error, and not asked again
        assert batch.run(at, inp, out, progress=False) == 1
        assert asked.count("die here") == 2
        got = _load(out)
        assert "died 2 times" in got[1]["error"] and got[1]["line"] == 2
        assert _strip([got[0], got[2]]) == _expected(at, folder, [GOOD[0], GOOD[3]])
    assert asked.count(GOOD[3]["question"]) == 1  # answered once, then skipped


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_rank_is_named_and_the_others_do_not_wait(folder):
    """Ranks started by a launcher that does not tear the others down (srun, separate nodes):
    rank 1 fails (its journal path is blocked); rank 0 still ends at once, names rank 1,
    and merges its own answers."""
    _write(folder / "ranks.jsonl", [GOOD[0], GOOD[1]])  # bikes.mp4 to rank 0, bunny.mp4 to rank 1
    out = folder / "ranks_out.jsonl"
    (folder / "ranks_out.jsonl.rank1").mkdir()
    port = _free_port()
    cmd = [sys.executable, "-m", "adapttoken_ext.cli", "batch", "--input", str(folder / "ranks.jsonl"),
           "--output", str(out), "--quiet", "--model", str(ensure_tiny_model()), *FLAGS]
    procs = [subprocess.Popen(cmd, env=dict(_env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1 and procs[1].returncode == 2
    assert "Traceback" not in errs[0] + errs[1]
    assert "adapttoken: error: rank 1: " in errs[1] and "ranks_out.jsonl.rank1" in errs[1]
    assert "rank 1 failed" in errs[0]
    got = _load(out)
    assert "error" not in got[0] and got[0]["id"] == "a1"
    assert got[1]["error"].startswith("not answered: rank 1 failed")


def test_a_hung_rank_is_named_after_the_barrier_timeout(folder):
    """Rank 1 stops (SIGSTOP: alive, holding its connections, doing nothing): rank 0 gives up
    after --barrier-timeout, names rank 1 and leaves the journals for a rerun."""
    _write(folder / "hung.jsonl", [GOOD[0], GOOD[1], GOOD[4], GOOD[7]])  # 1 question to rank 0, 3 to rank 1
    out = folder / "hung_out.jsonl"
    port = _free_port()
    cmd = [sys.executable, "-m", "adapttoken_ext.cli", "batch", "--input", str(folder / "hung.jsonl"),
           "--output", str(out), "--quiet", "--model", str(ensure_tiny_model()), *FLAGS,
           "--barrier-timeout", "5"]
    procs = [subprocess.Popen(cmd, env=dict(_env(), RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    journal = folder / "hung_out.jsonl.rank1"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (journal.exists() and journal.read_bytes().count(b"\n") >= 2):
            time.sleep(0.02)
        procs[1].send_signal(signal.SIGSTOP)  # one question answered, two to go
        err = procs[0].communicate(timeout=300)[1]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 2 and "Traceback" not in err
    assert "Ranks 1 failed to pass monitoredBarrier" in err and "--barrier-timeout 5 s" in err
    assert not out.exists() and journal.exists()  # nothing merged: a rerun finishes the job
