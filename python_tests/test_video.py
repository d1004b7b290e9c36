"""Video input as users have it (method.md step 0): codecs, containers, pixel formats, odd
sizes, audio-first files, long GOPs, very short clips, and the error contract. Each test
video is written here by PyAV; the reference is a plain sequential PyAV decode."""
import sys
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from adapttoken_ext.video import VideoReader, sample_frame_indices


def _pattern(i, h, w):
    """Frame i: a bright square whose position and a grey level encode i."""
    img = np.full((h, w, 3), (7 * i) % 200, np.uint8)
    y, x = (3 * i) % max(1, h - 8), (5 * i) % max(1, w - 8)
    img[y:y + 8, x:x + 8] = 255
    return img


def _write(path, n, codec="libx264", size=(48, 64), pix_fmt="yuv420p", rate=25, audio_first=False,
           options=None):
    h, w = size
    with av.open(str(path), "w") as c:
        if audio_first:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
        s = c.add_stream(codec, rate=rate, options=options or {})
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        if audio_first:
            samples = np.zeros((1, 1024), np.float32)
            for k in range(4):
                af = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 16000, 1024 * k, Fraction(1, 16000)
                for p in a.encode(af):
                    c.mux(p)
            for p in a.encode():
                c.mux(p)
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(_pattern(i, h, w), format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, rate)
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return str(path)


def _sequential(path, size):
    h, w = size
    with av.open(path) as c:
        return torch.stack([torch.from_numpy(f.reformat(width=w, height=h, format="rgb24",
                                                        interpolation="BICUBIC").to_ndarray()).permute(2, 0, 1)
                            for f in c.decode(video=0)])


CASES = {
    "h264_mp4": dict(name="a.mp4"),
    "h264_mov": dict(name="a.mov"),
    "h264_mkv_long_gop": dict(name="a.mkv", options={"g": "1000", "keyint_min": "1000"}),
    "hevc_10bit_mp4": dict(name="a.mp4", codec="libx265", pix_fmt="yuv420p10le", options={"x265-params": "log-level=none"}),
    "vp9_webm_odd_size": dict(name="a.webm", codec="libvpx-vp9", size=(49, 65), pix_fmt="yuv420p"),
    "av1_mkv": dict(name="a.mkv", codec="libsvtav1", size=(64, 64), pix_fmt="yuv420p", options={"preset": "12"}),
    "mpeg4_mp4_audio_first": dict(name="a.mp4", codec="mpeg4", audio_first=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_codecs_and_containers_decode_the_requested_frames(tmp_path, case):
    kw = dict(CASES[case])
    if kw.get("codec", "libx264") not in av.codecs_available:
        pytest.skip(f"{kw['codec']} not in this PyAV build")
    path = _write(tmp_path / kw.pop("name"), 40, **kw)
    ref = _sequential(path, (32, 48))
    with VideoReader(path) as r:
        assert r.info.num_frames == len(ref) == 40
        assert (r.info.height, r.info.width) == kw.get("size", (48, 64))
        assert r.info.timestamps_s == pytest.approx([i / 25 for i in range(40)], abs=2e-3)
        for idx in ([0, 13, 14, 39], [5], [20, 21, 22, 23, 38], [1, 2]):  # forward and backward
            assert torch.equal(r.get_frames(idx, 32, 48), ref[idx])


def test_three_frame_clip_fills_units(tmp_path):
    path = _write(tmp_path / "short.mp4", 3)
    with VideoReader(path) as r:
        idx = sample_frame_indices(r.info.num_frames, 8, 2, r.info.timestamps_s)
        assert idx == [0, 2]  # capped at 3 frames, rounded down to one 2-frame unit
        assert r.get_frames(idx, 48, 64).shape == (2, 3, 48, 64)


@pytest.mark.parametrize("kind", ["empty", "text", "audio_only", "directory", "missing"])
def test_unreadable_inputs_are_one_line_errors(tmp_path, kind):
    path = tmp_path / f"{kind}.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello")
    elif kind == "audio_only":
        with av.open(str(path), "w") as c:
            a = c.add_stream("aac", rate=16000)
            a.layout = "mono"
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, 0
            for p in list(a.encode(af)) + list(a.encode()):
                c.mux(p)
    elif kind == "directory":
        path.mkdir()
    err = FileNotFoundError if kind == "missing" else ValueError
    with pytest.raises(err) as e:
        VideoReader(path)
    msg = str(e.value)
    assert msg.startswith("video: ") and str(path) in msg and "\n" not in msg


def test_truncated_video_uses_the_readable_frames_with_a_warning(tmp_path):
    cut = tmp_path / "cut.mkv"  # MKV keeps its header at the front, so half a file still opens
    mkv = _write(tmp_path / "full.mkv", 60, options={"g": "10"})
    data = open(mkv, "rb").read()
    cut.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = VideoReader(cut)
    n = r.info.num_frames
    assert 0 < n < 60
    assert any("readable" in str(x.message) and str(n) in str(x.message) for x in w)
    ref = _sequential(str(cut), (48, 64))
    assert torch.equal(r.get_frames(list(range(n)), 48, 64), ref[:n])
    r.close()


# ---- the decoder choice: PyAV unless torchcodec is asked for -----------------------------------

class _FakeTorchcodec:
    """Stands for an installed torchcodec (the real one needs a CUDA torch): records use."""

    def __init__(self):
        self.opened = []
        fake = self

        class VideoDecoder:
            def __init__(self, path, dimension_order, seek_mode):
                fake.opened.append(path)
                self.metadata = type("M", (), dict(num_frames=5, average_fps=25.0, width=64, height=48))

            def get_frames_at(self, indices):
                return type("F", (), dict(data=torch.zeros(len(indices), 3, 48, 64, dtype=torch.uint8)))
        self.module = type(sys)("torchcodec.decoders")
        self.module.VideoDecoder = VideoDecoder


@pytest.fixture
def torchcodec_installed(monkeypatch):
    fake = _FakeTorchcodec()
    monkeypatch.setitem(sys.modules, "torchcodec", type(sys)("torchcodec"))
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", fake.module)
    return fake


def test_pyav_decodes_even_where_torchcodec_is_installed(tmp_path, torchcodec_installed):
    path = _write(tmp_path / "a.mp4", 5)
    with VideoReader(path) as r:
        assert r.backend == "pyav" and r.info.num_frames == 5
        torch.testing.assert_close(r.get_frames([0, 4], 48, 64), _sequential(path, (48, 64))[[0, 4]])
    assert torchcodec_installed.opened == []
    from adapttoken_ext.config import AdaptTokenConfig
    assert AdaptTokenConfig().decoder == "pyav"


def test_torchcodec_only_when_asked_for(tmp_path, torchcodec_installed):
    path = _write(tmp_path / "a.mp4", 5)
    with VideoReader(path, decoder="torchcodec") as r:
        assert r.backend == "torchcodec" and r.get_frames([1, 2], 48, 64).shape == (2, 3, 48, 64)
    assert torchcodec_installed.opened == [path]


def test_torchcodec_asked_for_but_missing_is_an_error_naming_decoder(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.mp4", 5)
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import fails, as when not installed
    with pytest.raises(ValueError, match="decoder: 'torchcodec' does not load"):
        VideoReader(path, decoder="torchcodec")
    with pytest.raises(ValueError, match="decoder: must be 'pyav' or 'torchcodec'"):
        VideoReader(path, decoder="opencv")
    from adapttoken_ext.config import AdaptTokenConfig
    with pytest.raises(ValueError, match="decoder"):
        AdaptTokenConfig(decoder="opencv").validate()


def test_cli_decoder_flag_missing_torchcodec_is_one_line_before_model_work(tmp_path, monkeypatch, capsys):
    from adapttoken_ext import cli
    from adapttoken_ext.pipeline import AdaptToken
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.setattr(AdaptToken, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    path = _write(tmp_path / "a.mp4", 5)
    assert cli.main(["answer", "--video", path, "--question", "?", "--decoder", "torchcodec", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("adapttoken: error:") == 1
    assert "decoder: 'torchcodec' does not load" in err
