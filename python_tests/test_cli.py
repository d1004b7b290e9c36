"""The ``adapttoken`` command as a new user meets it: output paths and ``--video`` checked
before any model work with one-line errors, failed writes that leave nothing behind,
``--help`` with defaults, Lite that never stops saying so, the group table's layout, the
plots, and the README's install line for a CPU-only machine."""
import argparse
import math
import os
import re

import pytest

from adapttoken_ext import cli
from adapttoken_ext.config import AdaptTokenConfig
from adapttoken_ext.models.tiny import ensure_tiny_model
from adapttoken_ext.pipeline import AdaptToken, AdaptTokenResult, GroupRecord
from adapttoken_ext.video import VideoReader, sample_video

OPTIONS = ["A. Riding bikes", "B. Cooking", "C. Chess", "D. Swimming"]
SMALL = ["--frames", "16", "--budget", "12", "--units-per-group", "2", "--max-pixels", str(112 * 224),
         "--quiet"]


def _one_error(capsys) -> str:
    """The one ``adapttoken: error:`` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("adapttoken: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: these errors must come before any model work."""
    monkeypatch.setattr(AdaptToken, "from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded before the check"))


def _answer(video, *extra):
    return ["answer", "--video", str(video), "--question", "What happens?", "--options", *OPTIONS,
            "--model", str(ensure_tiny_model()), *SMALL, *extra]


def test_output_paths_are_checked_before_model_work(tmp_path, capsys, no_model):
    (tmp_path / "d.png").mkdir()
    bikes = sample_video("bikes.mp4")
    for flag, path, why in (("--json", tmp_path, "is a directory"),
                            ("--plot", tmp_path / "d.png", "is a directory"),
                            ("--json", tmp_path / "no" / "r.json", "no such directory"),
                            ("--plot", tmp_path / "r.xyz", "image extension")):
        assert cli.main(_answer(bikes, flag, str(path))) == 2
        line = _one_error(capsys)
        assert flag in line and repr(str(path)) in line and why in line
    inp = tmp_path / "q.jsonl"
    inp.write_text('{"id": 1, "video": "v.mp4", "question": "?"}\n')
    assert cli.main(["batch", "--input", str(inp), "--output", str(tmp_path), "--quiet"]) == 2
    line = _one_error(capsys)
    assert "--output" in line and "is a directory" in line
    assert sorted(os.listdir(tmp_path)) == ["d.png", "q.jsonl"]  # nothing written


def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    real = os.replace

    def replace(src, dst):  # as if the disk filled up at the last moment
        if str(dst).endswith((".json", ".png")):
            raise OSError(28, "No space left on device")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", replace)
    rc = cli.main(_answer(sample_video("bikes.mp4"), "--json", str(tmp_path / "r.json"),
                          "--plot", str(tmp_path / "r.png")))
    out, err = capsys.readouterr()
    assert rc == 2 and "answer:" in out  # the result is still printed
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("adapttoken: error:")]
    assert len(errors) == 2 and "--json" in errors[0] and "--plot" in errors[1]
    assert all("No space left on device" in e for e in errors)
    assert os.listdir(tmp_path) == []  # no .partial left behind


def test_a_directory_or_an_empty_file_as_video_says_what_it_is(tmp_path, capsys, no_model):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path, why in ((tmp_path, "is a directory"), (empty, "is an empty file (0 bytes)"),
                      (tmp_path / "none.mp4", "no such file")):
        assert cli.main(_answer(path)) == 2
        line = _one_error(capsys)
        assert "--video" in line and repr(str(path)) in line and why in line
    with pytest.raises(ValueError, match="empty file"):  # the library says the same
        VideoReader(empty)


def _subparsers():
    p = cli._parser()
    return p, next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_shows_defaults_and_explains_every_argument(capsys):
    _, subs = _subparsers()
    full, demo = AdaptTokenConfig(), AdaptTokenConfig(frames=128, max_pixels=112 * 224,
                                                      units_per_group=8, budget=64)
    for name, sp in subs.items():
        assert issubclass(sp.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
        for action in sp._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings} has no help"
        text = re.sub(r"\s+", " ", sp.format_help())
        cfg = demo if name == "demo" else full
        # niah takes lists of frame counts and a budget of two units by default
        for flag in ("units-per-group", "max-pixels") + (() if name == "niah" else ("frames", "budget")):
            value = getattr(cfg, flag.replace("-", "_"))
            assert re.search(rf"--{flag} \S+ .*?\(default: {value}\)", text), (name, flag)
        assert "(default: None)" not in text
    assert "smaller" in subs["demo"].description and "method.md" in subs["answer"].description
    assert "question about the video" in re.sub(r"\s+", " ", subs["answer"].format_help())
    with pytest.raises(SystemExit) as e:
        cli.main(["answer", "--help"])
    assert e.value.code == 0 and "Traceback" not in capsys.readouterr().err


def test_lite_that_never_stops_says_so_and_the_table_states_the_layout(tmp_path, capsys):
    """Random weights are never certain: Lite visits every group and says so, with tau
    (0.1 ln K for K options, method.md step 8) and the lowest entropy seen."""
    out = tmp_path / "r.json"
    assert cli.main(_answer(sample_video("bikes.mp4"), "--lite", "--json", str(out))) == 0
    text = capsys.readouterr().out
    import json
    d = json.loads(out.read_text())
    assert d["stopped_after_group"] is None
    tau = 0.1 * math.log(len(OPTIONS))
    assert d["stop_threshold"] == pytest.approx(tau)
    low = min(d["groups"], key=lambda g: g["entropy"])
    assert (f"Lite on, but no group's entropy fell below tau = {tau:.4f} nats (lowest "
            f"{low['entropy']:.4f}, group {low['index']})") in text
    assert f"layout: interleaved: group g holds units g, g+{len(d['groups'])}," in text


def _result(groups=3, unit=2, units_per_group=4, method="adapttoken", interval=0.5):
    """A hand-made result: ``groups`` interleaved groups of ``units_per_group`` units."""
    n = groups * units_per_group * unit
    frames, times = list(range(n)), [i * interval for i in range(n)]
    recs = []
    for g in range(groups):
        f = [u * unit + j for u in range(g, groups * units_per_group, groups) for j in range(unit)]
        recs.append(GroupRecord(g, f, 4 * units_per_group, None if method == "entropyselect" else 0.3 + 0.1 * g,
                                budget=6 - g, selected=5 - g))
    tokens = [{"frame": f, "time_s": times[f], "h": f % 2, "w": 1, "score": 0.1 * f} for f in range(0, n, 3)]
    return AdaptTokenResult(answer="A", model="m", frames=frames, timestamps_s=times, groups=recs,
                            budget=15, selected_tokens=tokens, stopped_after_group=None, timings_s={},
                            peak_memory_bytes={}, method=method, grid=(2, 2))


def test_group_table_shows_each_groups_sampled_span():
    res = _result(groups=3, unit=2, interval=0.5)
    lines = cli.format_table(res, "interleaved", unit=2).splitlines()
    assert lines[0].startswith("layout: interleaved: group g holds units g, g+3, g+6,")
    assert lines[1].split()[:3] == ["group", "seconds", "every"]
    for g, line in zip(res.groups, lines[2:]):
        cols = line.split()
        assert cols[1] == f"{res.timestamps_s[g.frames[0]]:.1f}-{res.timestamps_s[g.frames[-1]]:.1f}"
        assert float(cols[2]) == pytest.approx(3 * 2 * 0.5)  # G units of 2 frames, 0.5 s apart
    assert cli.format_table(res, "contiguous", 2).splitlines()[0] == "layout: contiguous"


@pytest.fixture
def figures(monkeypatch):
    """Every figure ``cli.plot`` saves."""
    from matplotlib.figure import Figure
    saved, real = [], Figure.savefig

    def savefig(self, *a, **k):
        saved.append(self)
        return real(self, *a, **k)
    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_plot_has_colour_bar_integer_group_ticks_and_selected_beside_budget(tmp_path, figures):
    res = _result(groups=3)
    cli.plot(res, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and len(os.listdir(tmp_path)) == 1
    fig = figures[-1]
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    bars = fig.axes[0]
    lo, hi = bars.get_xlim()
    ticks = [t for t in bars.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)
    by_label = {c.get_label(): [round(p.get_height()) for p in c.patches] for c in bars.containers}
    assert by_label["selected"] == [g.selected for g in res.groups]
    assert [round(p.get_height()) for c in bars.containers if c.get_label() != "selected"
            for p in c.patches] == [g.budget for g in res.groups]
    assert any("entropy" in ax.get_ylabel() for ax in fig.axes)


def test_entropyselect_plot_has_its_own_title_and_no_entropy_axis(tmp_path, figures):
    cli.plot(_result(groups=3, method="entropyselect"), str(tmp_path / "p.png"))
    fig = figures[-1]
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "EntropySelect" in titles and "AdaptToken" not in titles
    assert not any(re.match(r"entropy(?!select)", ax.get_ylabel().lower()) for ax in fig.axes)  # no H_g axis


def test_readme_install_says_how_to_get_the_cpu_torch_wheel():
    readme = open(os.path.join(os.path.dirname(cli.__file__), "..", "README.md")).read()
    install = readme[readme.index("```bash"):]
    install = install[:install.index("```", 3)]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in install
    assert "CUDA" in install
