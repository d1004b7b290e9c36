"""``adapttoken niah`` (adapttoken_ext.niah_bench): the summary arithmetic, which needles a
cell gets, which tokens are the needle's, resuming, the CLI's errors, and the benchmark on
the trained needle checkpoint at 256 frames (issue 23, sections 2 and 5).

Expected values are written out here from the documented rules (fractions of the frame,
uniform's unit formula, the depth formula), not taken from the code under test.
"""
import json
import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adapttoken_ext import cli, niah, niah_bench
from adapttoken_ext.video import VideoReader, sample_frame_indices, sample_video

BIKES = sample_video("bikes.mp4")


def test_summarize_arithmetic():
    t = [
        {"method": "uniform", "frames": 64, "depth": 0.0, "trial": 0, "correct": False,
         "needle_recall": 0.0, "seconds": 0.5},
        {"method": "adapttoken", "frames": 64, "depth": 0.0, "trial": 0, "correct": True,
         "needle_recall": 1.0, "seconds": 1.0},
        {"method": "adapttoken", "frames": 64, "depth": 0.0, "trial": 1, "correct": False,
         "needle_recall": 0.5, "seconds": 3.0},
        {"method": "adapttoken", "frames": 64, "depth": 0.0, "trial": 2, "error": "boom"},
        {"method": "adapttoken", "frames": 32, "depth": 1, "trial": 0, "correct": True,
         "needle_recall": None, "seconds": 2.0},
    ]
    rows = niah_bench.summarize(t)
    assert rows == [
        {"method": "adapttoken", "frames": 32, "depth": 1.0, "trials": 1, "accuracy": 1.0,
         "needle_recall": None, "seconds_mean": 2.0, "errors": 0},
        {"method": "adapttoken", "frames": 64, "depth": 0.0, "trials": 3, "accuracy": 1 / 3,
         "needle_recall": 0.75, "seconds_mean": 2.0, "errors": 1},
        {"method": "uniform", "frames": 64, "depth": 0.0, "trials": 1, "accuracy": 0.0,
         "needle_recall": 0.0, "seconds_mean": 0.5, "errors": 0},
    ]


def test_trial_needles_balance_letters_and_cover_every_class():
    every = {f"{k}:{c}" for k, v in niah.KINDS.items() for c in v.classes}
    for d in (0.0, 0.3, 1.0):
        twelve = niah_bench.trial_needles(niah.KINDS, 12, d)
        assert {n.name for n in twelve} == every  # every (kind, class) once
        for j in range(0, 12, 4):  # every 4 trials of a cell: the 4 letters
            assert sorted(n.answer for n in twelve[j:j + 4]) == ["A", "B", "C", "D"]
        # a needle depends on (depth, trial) only: more trials change no earlier one
        assert [n.name for n in niah_bench.trial_needles(niah.KINDS, 3, d)] == [n.name for n in twelve[:3]]
    orders = {tuple(n.name for n in niah_bench.trial_needles(niah.KINDS, 4, d / 10)) for d in range(11)}
    assert len(orders) > 5  # the order changes from depth to depth
    eleven = Counter(n.answer for d in range(11) for n in niah_bench.trial_needles(niah.KINDS, 4, d / 10))
    assert eleven == {"A": 11, "B": 11, "C": 11, "D": 11}
    assert {n.kind for n in niah_bench.trial_needles(["digit"], 4, 0.5)} == {"digit"}
    for bad, name in ((lambda: niah_bench.trial_needles([], 1, 0.0), "kinds"),
                      (lambda: niah_bench.trial_needles(["sticker"], 1, 0.0), "kinds"),
                      (lambda: niah_bench.trial_needles(["digit", "digit"], 1, 0.0), "kinds"),
                      (lambda: niah_bench.trial_needles(["colour"], 0, 0.0), "needles")):
        with pytest.raises(ValueError, match=name):
            bad()


def test_trial_record_on_a_result_written_by_hand(tmp_path):
    """8 sampled frames (4 units of 2), needle in unit 2 (frames 104, 105), groups
    interleaved {0, 2} and {1, 3}; grid 2 x 4, colour square cells (0-1, 1-2)."""
    video = SimpleNamespace(sampled=list(range(100, 108)), units=[2])
    groups = [SimpleNamespace(index=0, frames=[100, 101, 104, 105], entropy=0.01),
              SimpleNamespace(index=1, frames=[102, 103, 106, 107], entropy=1.3)]
    kept = [{"frame": 104, "h": 0, "w": 1}, {"frame": 104, "h": 1, "w": 2}, {"frame": 102, "h": 0, "w": 0}]
    result = SimpleNamespace(frames=video.sampled, groups=groups, selected_tokens=kept, grid=(2, 4),
                             answer="B. green", timings_s={"total": 1.25})
    needle = niah.make_needle("colour", "green")
    r = niah_bench.trial_record("adapttoken", 8, 0.6, 3, needle, result, video, 2, (56, 112))
    assert r == {"method": "adapttoken", "frames": 8, "depth": 0.6, "trial": 3, "needle": "colour:green",
                 "answer": "B. green", "letter": "B", "correct": True, "needle_recall": 0.5,
                 "needle_group": 0, "entropies": [0.01, 1.3], "lowest_entropy_group": 0,
                 "groups_visited": 2, "seconds": 1.25, "kept": 3}
    result.answer = "C"
    groups[1].entropy = 0.001  # the other group more certain
    r = niah_bench.trial_record("adapttoken", 8, 0.6, 3, needle, result, video, 2, (56, 112))
    assert not r["correct"] and r["lowest_entropy_group"] == 1 and r["needle_group"] == 0
    result.groups = groups[1:]  # Lite stopped before the needle's group
    r = niah_bench.trial_record("lite", 8, 0.6, 3, needle, result, video, 2, (56, 112))
    assert r["needle_group"] is None and r["groups_visited"] == 1
    # a picture needle with five options: answer E counts
    from PIL import Image
    Image.new("RGB", (8, 8), (0, 0, 0)).save(tmp_path / "n.png")
    five = niah.make_needle("image", image=tmp_path / "n.png", question="q?",
                            options=[f"{x}. {x.lower()}" for x in "ABCDE"], answer="E")
    result.answer = "E"
    assert niah_bench.trial_record("uniform", 8, 0.6, 0, five, result, video, 2, (56, 112))["correct"]
    result.frames = list(range(8))  # not the frames the needle video sampled
    with pytest.raises(ValueError, match="frames"):
        niah_bench.trial_record("uniform", 8, 0.6, 0, five, result, video, 2, (56, 112))


@pytest.mark.parametrize("text,letter", [("B", "B"), ("  C. blue", "C"), ("(D)", "D"), ("AAAA", "A"),
                                         ("Blue", None), ("E", None), ("", None), ("the answer is A", None)])
def test_answer_letter(text, letter):
    assert niah_bench.answer_letter(text) == letter


def test_needle_tokens_are_the_cells_the_needle_covers():
    # colour square: 0.6 H per side, centred: rows 11..44, cols 39..72 of 56 x 112; cells of
    # a 2 x 4 grid are 28 px: rows 0-1, columns 1 (28..55) and 2 (56..83)
    video = SimpleNamespace(sampled=list(range(100, 120)), units=[3, 4])
    got = niah_bench.needle_tokens(niah.make_needle("colour", "red"), video, 2, (56, 112), (2, 4))
    assert got == {(f, h, w) for f in (106, 108) for h in (0, 1) for w in (1, 2)}
    # ball in the bottom right quadrant: centre (42, 84), radius 0.4 * 28 = 11.2: rows 31..52
    # (row 1), cols 73..95 (cols 2 and 3)
    got = niah_bench.needle_tokens(niah.make_needle("quadrant", "bottom right"), video, 2, (56, 112), (2, 4))
    assert got == {(f, 1, w) for f in (106, 108) for w in (2, 3)}


def test_needle_tokens_at_a_cell_boundary(tmp_path):
    """A 2 x 2 picture opaque in its bottom row only: drawn 33.6 px square (rows 11..44,
    cols 39..72), its opaque half is rows 28..44, exactly cell row 1: row 0 ends at 27."""
    from PIL import Image
    img = np.zeros((2, 2, 4), np.uint8)
    img[..., 0], img[1, :, 3] = 255, 255
    Image.fromarray(img, "RGBA").save(tmp_path / "half.png")
    n = niah.make_needle("image", image=tmp_path / "half.png", question="q?", options=["A. x", "B. y"], answer="A")
    video = SimpleNamespace(sampled=[0, 1], units=[0])
    assert niah_bench.needle_tokens(n, video, 2, (56, 112), (2, 4)) == {(0, 1, 1), (0, 1, 2)}


def test_decoded_video_is_the_readers_frames():
    with VideoReader(BIKES) as r:
        idx = sample_frame_indices(r.info.num_frames, 40, 2, r.info.timestamps_s)
        want = r.get_frames(idx, 56, 112)
    d = niah_bench.DecodedVideo(BIKES, 40, 2, 56, 112)
    assert d.sampled == idx and d.info.num_frames == 250
    assert torch.equal(d.get_frames(idx[3:9], 56, 112), want[3:9])
    with pytest.raises(ValueError, match="indices"):
        d.get_frames([idx[0] + 1], 56, 112)
    with pytest.raises(ValueError, match="indices"):
        d.get_frames(idx[:2], 28, 56)


def test_make_haystack(tmp_path):
    assert niah_bench.make_haystack([BIKES], 200, tmp_path) == BIKES  # long enough: as it is
    out = niah_bench.make_haystack([BIKES], 300, tmp_path)
    assert out.parent == tmp_path and out.name.startswith("haystack-300-")
    with VideoReader(out) as r:
        assert r.info.num_frames == 300 and (r.info.width, r.info.height) == (320, 180)
    other = niah_bench.make_haystack([sample_video("bigbuckbunny.mp4")], 300, tmp_path)
    assert other != out  # other sources: another file, not the first one reused
    assert niah_bench.make_haystack([BIKES], 300, tmp_path) == out
    with pytest.raises(FileNotFoundError, match="--haystack"):
        niah_bench.make_haystack([tmp_path / "none.mp4"], 10, tmp_path)


@pytest.fixture(scope="module")
def needle_at():
    from adapttoken_ext.config import AdaptTokenConfig
    from adapttoken_ext.pipeline import AdaptToken
    cfg = AdaptTokenConfig(max_pixels=niah.NEEDLE_MAX_PIXELS, units_per_group=16)
    with AdaptToken.from_pretrained("needle", config=cfg) as at:
        yield at


def uniform_units(num_units, n):
    """README 'Baselines': the unit at the centre of each of n equal spans."""
    return [math.floor((2 * i + 1) * num_units / (2 * n)) for i in range(n)]


def test_niah_on_the_needle_checkpoint(needle_at, tmp_path):
    """256 frames (128 units, 8 groups), depths 0.3 and 0.8, 2 needles each, a budget of
    two units (16 tokens): AdaptToken answers every trial and keeps at least half of the
    needle's tokens, its group the one of lowest entropy; uniform's
    two units miss it; every method keeps what README 'Baselines' says."""
    trials = niah_bench.run(needle_at, tmp_path, [256], [0.3, 0.8], 2, niah_bench.NIAH_METHODS,
                            progress=False)
    assert len(trials) == 2 * 2 * len(niah_bench.NIAH_METHODS) and not any("error" in t for t in trials)
    by = {m: [t for t in trials if t["method"] == m] for m in niah_bench.NIAH_METHODS}
    needle_units = [math.floor(d * 127 + 0.5) for d in (0.3, 0.8)]  # niah.needle_units
    assert not set(needle_units) & set(uniform_units(128, 2))
    for t in by["adapttoken"]:
        assert t["correct"] and t["needle_recall"] >= 0.5, t
        assert t["needle_group"] == t["lowest_entropy_group"], t
        assert t["kept"] <= 16
    for t in by["uniform"] + by["random"]:
        assert t["kept"] == 16
    assert all(t["needle_recall"] == 0.0 for t in by["uniform"])
    assert not all(t["correct"] for t in by["uniform"])
    for m in ("flexselect", "entropyselect", "lite"):
        assert all(t["kept"] <= 16 for t in by[m])
    assert json.loads((tmp_path / "summary.json").read_text()) == niah_bench.summarize(trials)
    for m in niah_bench.NIAH_METHODS:
        assert (tmp_path / f"heatmap_{m}.png").stat().st_size > 0
    assert (tmp_path / "entropy.png").stat().st_size > 0


def test_niah_resumes_refuses_another_run_and_restarts(needle_at, tmp_path):
    args = dict(frames=[64], depths=[0.0, 1.0], needles=1, methods=["uniform"], progress=False)
    first = niah_bench.run(needle_at, tmp_path, **args)
    journal = tmp_path / "trials.jsonl"
    lines = journal.read_text().splitlines()
    assert len(first) == 2 and len(lines) == 2
    # a torn last line (killed mid-write) is dropped and its trial redone
    journal.write_text(lines[0] + "\n" + lines[1][:20])
    again = niah_bench.run(needle_at, tmp_path, **args)
    timeless = (lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs])
    redone = journal.read_text().splitlines()
    assert redone[0] == lines[0] and timeless(again) == timeless(first) and len(redone) == 2
    # more depths and methods: only the new trials run
    more = niah_bench.run(needle_at, tmp_path, **{**args, "depths": [0.0, 0.5, 1.0],
                                                  "methods": ["uniform", "random"]})
    assert len(more) == 6 and journal.read_text().splitlines()[:2] == redone
    for t in more:  # every method answered the same needle of a (frames, depth, trial)
        assert {u["needle"] for u in more if u["depth"] == t["depth"] and u["trial"] == t["trial"]} == {t["needle"]}
    with pytest.raises(ValueError, match="--output"):
        niah_bench.run(needle_at, tmp_path, **args, budget=24)
    assert len(niah_bench.run(needle_at, tmp_path, **args, budget=24, restart=True)) == 2
    assert json.loads((tmp_path / "run.json").read_text())["budget"] == 24
    # a failed trial is retried on the next run; its success replaces the error
    lines = journal.read_text().splitlines()
    broken = {**json.loads(lines[1]), "error": "boom"}
    journal.write_text(lines[0] + "\n" + json.dumps(broken) + "\n")
    redo = niah_bench.run(needle_at, tmp_path, **args, budget=24)
    assert len(redo) == 2 and not any("error" in t for t in redo)
    assert len(journal.read_text().splitlines()) == 3
    assert [r["trials"] for r in json.loads((tmp_path / "summary.json").read_text())] == [1, 1]


def test_niah_user_needle_image(needle_at, tmp_path):
    from PIL import Image
    Image.new("RGB", (16, 16), (250, 0, 250)).save(tmp_path / "n.png")
    n = niah.make_needle("image", image=tmp_path / "n.png", question="What colour is the patch?",
                         options=["A. magenta", "B. cyan", "C. grey", "D. olive"], answer="A")
    trials = niah_bench.run(needle_at, tmp_path / "out", [64], [0.5], 1, ["adapttoken"],
                            needle_image=n, progress=False)
    assert [t["needle"] for t in trials] == ["image"] and "error" not in trials[0]
    assert trials[0]["needle_recall"] is not None


@pytest.mark.parametrize("argv,name", [
    (["--output", "{file}"], "--output"),
    (["--output", "{dir}/a/b"], "--output"),
    (["--output", "{dir}/o", "--question", "q?"], "--question"),
    (["--output", "{dir}/o", "--needle-image", "{dir}/none.png", "--question", "q?",
      "--options", "A. x", "B. y", "--answer", "A"], "image"),
    (["--output", "{dir}/o", "--depths", "0.5", "2"], "depths"),
    (["--output", "{dir}/o", "--frames", "64", "64"], "frames"),
])
def test_niah_cli_errors_name_the_argument(tmp_path, capsys, argv, name):
    f = tmp_path / "file"
    f.write_text("x")
    argv = [a.format(file=f, dir=tmp_path) for a in argv]
    assert cli.main(["niah", "--model", "needle", "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adapttoken: error:") and name in err and "Traceback" not in err


def test_niah_cli_prints_the_table(tmp_path, capsys):
    rc = cli.main(["niah", "--model", "needle", "--quiet", "--output", str(tmp_path), "--frames", "64",
                   "--depths", "0", "--needles", "1", "--methods", "uniform", "--lite"])
    out = capsys.readouterr().out
    assert rc == 0 and "accuracy" in out and "uniform" in out and "lite" in out
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert {r["method"] for r in rows} == {"uniform", "lite"}


def test_niah_cli_llava_onevision_needle(tmp_path, capsys):
    """``--model needle --family llava_onevision``: the 1-D RoPE needle checkpoint; AdaptToken
    finds a needle in 64 frames (64 one-frame units of 4 tokens, 2 groups) at 8 tokens."""
    rc = cli.main(["niah", "--model", "needle", "--family", "llava_onevision", "--quiet", "--output",
                   str(tmp_path), "--frames", "64", "--depths", "0.3", "--needles", "2", "--budget", "8",
                   "--units-per-group", "32", "--methods", "adapttoken"])
    assert rc == 0, capsys.readouterr().err
    trials = [json.loads(x) for x in (tmp_path / "trials.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "run.json").read_text())["model"] == "adapttoken/needle-llava_onevision"
    assert len(trials) == 2 and all(t["correct"] and t["needle_recall"] > 0 for t in trials), trials


def test_needle_model_of_a_family_without_one():
    from adapttoken_ext.pipeline import AdaptToken
    with pytest.raises(ValueError, match="family"):
        AdaptToken.from_pretrained("needle", family="internvl")
