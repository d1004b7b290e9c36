"""Video needle-in-a-haystack (V-NIAH, LongVA, arXiv 2406.16852): needles drawn onto
haystack frames at a relative depth, at decode time.

A *needle* is a short image drawn onto one unit's worth of sampled frames (by default) of a
long *haystack* video, with a 4-option question only the needle answers. Built-in kinds
(:data:`KINDS`), each with 4 classes, one per option:

- ``"colour"``: a filled square in the frame's centre, red / green / blue / yellow;
- ``"digit"``: a seven-segment digit 0 / 1 / 4 / 7, white on a black box, centred;
- ``"quadrant"``: a white ball with a black core in one quadrant of the frame;
- ``"image"``: a user's own picture (:func:`make_needle` with ``image=PATH``), pasted in
  the centre, with the user's question, options and answer.

Geometry is relative to the frame (fractions of its height and width), so a needle looks
the same at any resize. Nothing here runs a model: tensors, numpy and PIL only.
:class:`NeedleVideo` reads a haystack file like :class:`~adapttoken_ext.video.VideoReader`
and draws the needle on the frames that hold it as they are decoded, so a 10,000-frame
trial needs no re-encoded video.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .video import VideoReader, sample_frame_indices

__all__ = ["KINDS", "LETTERS", "NEEDLE_MAX_PIXELS", "NEEDLE_TILE", "Needle", "NeedleVideo", "draw_needle",
           "make_needle", "needle_positions", "needle_units", "render_needle"]

LETTERS = ("A", "B", "C", "D")

# Frames the trained needle checkpoint (tools/train_needle_model.py) was trained at: 56 x 112
# pixels (2 x 4 merged tokens per unit). Qwen2-VL's resize rule gives that size at this
# max_pixels for 16:9 (the sample clips, make_long_video's 320x180) and 2.35:1 (bikes.mp4).
NEEDLE_MAX_PIXELS = 56 * 140
# The LLaVA-OneVision needle checkpoint's frames: every frame is resized to one square tile
# of the SigLIP tower's image_size (max_pixels has no effect), 56 px: 4 x 4 patches of 14 px
# pooled to 2 x 2 tokens per frame (one frame per unit).
NEEDLE_TILE = 56

COLOURS = {"red": (230, 30, 30), "green": (30, 190, 40), "blue": (30, 70, 235),
           "yellow": (245, 225, 25)}

# seven-segment digits: segments a (top), b (top right), c (bottom right), d (bottom),
# e (bottom left), f (top left), g (middle)
_SEGMENTS = {"0": "abcdef", "1": "bc", "4": "bcfg", "7": "abc"}


@dataclass(frozen=True)
class Kind:
    """A built-in needle kind: its question and 4 options ``"A. ..."``; class ``i`` is
    answered by option ``i``."""
    question: str
    classes: tuple[str, ...]

    @property
    def options(self) -> list[str]:
        return [f"{letter}. {c}" for letter, c in zip(LETTERS, self.classes)]


KINDS = {
    "colour": Kind("What colour is the square in the video?", tuple(COLOURS)),
    "digit": Kind("Which digit is shown in the video?", tuple(_SEGMENTS)),
    "quadrant": Kind("Where in the frame does the ball appear?",
                     ("top left", "top right", "bottom left", "bottom right")),
}


@dataclass(frozen=True)
class Needle:
    """One needle: what to draw and the question it answers.

    ``kind``: a key of :data:`KINDS` or ``"image"``; ``cls``: the class index (0-3) of a
    built-in kind; ``image``: uint8 ``[h, w, 4]`` RGBA (alpha 0 = transparent) for
    ``"image"``; ``answer``: the correct option's letter."""
    kind: str
    cls: int
    question: str
    options: tuple[str, ...]
    answer: str
    image: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def name(self) -> str:
        """``"colour:red"``, ``"digit:4"``, ``"image"``."""
        return self.kind if self.kind == "image" else f"{self.kind}:{KINDS[self.kind].classes[self.cls]}"


def make_needle(kind: str, cls: int | str = 0, image: str | os.PathLike | None = None,
                question: str | None = None, options=None, answer: str | None = None) -> Needle:
    """A built-in needle (``kind`` in :data:`KINDS`, ``cls`` an index 0-3 or a class name
    such as ``"red"``), or ``kind="image"`` with ``image`` (a picture file PIL reads),
    ``question``, ``options`` (``["A. ...", ...]``) and ``answer`` (one of their letters).

    Raises:
        ValueError: naming ``kind``, ``cls``, ``question``, ``options`` or ``answer``.
        FileNotFoundError: naming ``image`` when the file does not exist (ValueError when
            PIL cannot read it).
    """
    if kind == "image":
        if image is None:
            raise ValueError("image: kind 'image' needs a needle image file (--needle-image PATH)")
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question: a needle image needs a non-empty question")
        from .stages import parse_options
        if not options:
            raise ValueError("options: a needle image needs options ['A. ...', 'B. ...', ...]")
        letters = parse_options(options)
        if answer not in letters:
            raise ValueError(f"answer: must be one of the option letters {letters}, got {answer!r}")
        return Needle("image", letters.index(answer), question.strip(), tuple(options), answer,
                      _load_image(image))
    if kind not in KINDS:
        raise ValueError(f"kind: unknown needle kind {kind!r} (available: "
                         f"{', '.join(sorted(KINDS))}, image)")
    k = KINDS[kind]
    if isinstance(cls, str):
        if cls not in k.classes:
            raise ValueError(f"cls: {kind} needles are {', '.join(k.classes)}; got {cls!r}")
        cls = k.classes.index(cls)
    if isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < len(k.classes):
        raise ValueError(f"cls: must be a class index in [0, {len(k.classes)}) or a class name, got {cls!r}")
    return Needle(kind, cls, k.question, tuple(k.options), LETTERS[cls])


def _load_image(path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image: no such needle image file: {str(path)!r}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA")).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image: {str(path)!r} is not an image PIL can read ({e})") from None


# ---- drawing ----------------------------------------------------------------------------

def _box(H: int, W: int, cy: float, cx: float, h: float, w: float):
    """Pixel rows/cols of a box centred at (cy*H, cx*W) of size (h*H, w*W), fractions."""
    y0, y1 = round((cy - h / 2) * H), round((cy + h / 2) * H)
    x0, x1 = round((cx - w / 2) * W), round((cx + w / 2) * W)
    return max(0, y0), min(H, max(y1, y0 + 1)), max(0, x0), min(W, max(x1, x0 + 1))


def render_needle(needle: Needle, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The needle as drawn on a ``height x width`` frame.

    Returns:
        ``(rgb, mask)``: uint8 ``[3, height, width]`` and bool ``[height, width]``: the
        pixels the needle covers (True) and their colour there.

    Sizes, as fractions of the frame: colour square 0.6 of the height per side, centred;
    digit box 0.8 high and 0.55 of that wide, centred, strokes 0.14 of its height; ball of
    diameter 0.8 of the shorter side of a quadrant, centred in it, black core half as
    wide; image 0.6 of the height high (at most 0.8 of the width wide), aspect kept, centred.
    """
    H, W = int(height), int(width)
    if H <= 0 or W <= 0:
        raise ValueError(f"height/width: must be > 0, got {height} x {width}")
    rgb = np.zeros((H, W, 3), np.uint8)
    mask = np.zeros((H, W), bool)
    if needle.kind == "colour":
        s = 0.6 * H
        y0, y1, x0, x1 = _box(H, W, 0.5, 0.5, s / H, s / W)
        rgb[y0:y1, x0:x1] = COLOURS[KINDS["colour"].classes[needle.cls]]
        mask[y0:y1, x0:x1] = True
    elif needle.kind == "digit":
        bh = 0.8 * H
        bw = 0.55 * bh
        y0, y1, x0, x1 = _box(H, W, 0.5, 0.5, bh / H, bw / W)
        mask[y0:y1, x0:x1] = True  # black box; segments white inside it
        t = 0.14 * bh  # stroke
        py, px = 0.1 * bh, 0.15 * bw  # margins inside the box
        top, bot, mid = y0 + py, y1 - py, (y0 + y1) / 2
        left, right = x0 + px, x1 - px
        segs = {"a": (top, top + t, left, right), "d": (bot - t, bot, left, right),
                "g": (mid - t / 2, mid + t / 2, left, right),
                "f": (top, mid, left, left + t), "b": (top, mid, right - t, right),
                "e": (mid, bot, left, left + t), "c": (mid, bot, right - t, right)}
        for s in _SEGMENTS[KINDS["digit"].classes[needle.cls]]:
            a, b, c, d = (round(v) for v in segs[s])
            rgb[a:max(b, a + 1), c:max(d, c + 1)] = 255
    elif needle.kind == "quadrant":
        qy, qx = divmod(needle.cls, 2)  # 0 top left, 1 top right, 2 bottom left, 3 bottom right
        cy, cx = (qy + 0.5) * H / 2, (qx + 0.5) * W / 2
        r = 0.4 * min(H, W) / 2
        yy, xx = np.mgrid[0:H, 0:W]
        d2 = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2
        mask[:] = d2 <= r * r
        rgb[mask] = 255
        rgb[d2 <= (r / 2) ** 2] = 0
    elif needle.kind == "image":
        from PIL import Image
        ih, iw = needle.image.shape[:2]
        h = 0.6 * H
        w = min(h * iw / ih, 0.8 * W)
        h = w * ih / iw
        y0, y1, x0, x1 = _box(H, W, 0.5, 0.5, h / H, w / W)
        im = Image.fromarray(needle.image, "RGBA").resize((x1 - x0, y1 - y0), Image.BICUBIC)
        a = np.asarray(im)
        rgb[y0:y1, x0:x1] = a[..., :3]
        mask[y0:y1, x0:x1] = a[..., 3] >= 128
    else:
        raise ValueError(f"needle: unknown kind {needle.kind!r}")
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), torch.from_numpy(mask)


def draw_needle(frames, needle: Needle):
    """``frames`` with ``needle`` drawn on every frame (a copy; the input is not changed).

    Args:
        frames: uint8 ``[N, 3, H, W]`` RGB, a torch tensor (as ``VideoReader.get_frames``
            returns) or a numpy array.

    Returns:
        the same type, dtype and shape: the needle's pixels (:func:`render_needle`'s mask)
        replaced by its colours, every other pixel as it was.

    Raises:
        ValueError: naming ``frames`` when not uint8 ``[N, 3, H, W]``.
    """
    as_numpy = isinstance(frames, np.ndarray)
    x = torch.from_numpy(frames) if as_numpy else frames
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError("frames: must be uint8 [N, 3, H, W] RGB (torch tensor or numpy array), got "
                         f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    rgb, mask = render_needle(needle, x.shape[2], x.shape[3])
    out = torch.where(mask.to(x.device), rgb.to(x.device), x)
    return out.numpy() if as_numpy else out


# ---- where the needle goes ----------------------------------------------------------------

def needle_units(num_units: int, depth: float, length_units: int = 1) -> list[int]:
    """The units (0-based, of ``num_units`` sampled units) that hold a needle
    ``length_units`` units long at relative ``depth``: it starts at unit
    ``floor(depth * (num_units - length_units) + 0.5)``, so depth 0 is the first unit, 1 the last.

    Raises:
        ValueError: naming ``depth`` (outside [0, 1]), ``length`` or ``num_units``.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth: must be a number in [0, 1], got {depth!r}")
    if num_units < 1:
        raise ValueError(f"num_units: must be >= 1, got {num_units}")
    if not 1 <= length_units <= num_units:
        raise ValueError(f"length: the needle must span 1 to {num_units} units, got {length_units}")
    start = math.floor(depth * (num_units - length_units) + 0.5)  # halves round up
    return list(range(start, start + length_units))


def needle_positions(num_frames: int, unit: int, depth: float, length: int | None = None) -> list[int]:
    """Positions in the list of ``num_frames`` sampled frames (method.md step 0) that hold
    the needle: ``length`` frames (default ``unit``, one unit) from the unit boundary that
    :func:`needle_units` puts at ``depth``.

    Raises:
        ValueError: naming ``depth``, ``length``, ``unit`` or ``num_frames``.
    """
    if unit < 1 or num_frames < unit or num_frames % unit:
        raise ValueError(f"num_frames/unit: need a positive multiple of unit {unit}, got {num_frames}")
    length = unit if length is None else length
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= num_frames:
        raise ValueError(f"length: must be an int in [1, {num_frames}] frames, got {length!r}")
    first = needle_units(num_frames // unit, depth, math.ceil(length / unit))[0] * unit
    return list(range(first, first + length))


class NeedleVideo:
    """A haystack video file read like :class:`~adapttoken_ext.video.VideoReader` (same
    ``path``, ``info``, ``backend``, ``plan``, ``get_frames``, ``close``, context manager),
    with ``needle`` drawn on the file frames that hold it, as they are decoded. ``path``
    may also be an open reader with that interface (e.g. a haystack decoded once for many
    trials); it is then left open.

    Which frames hold it follows the pipeline's sampling (method.md step 0,
    :func:`~adapttoken_ext.video.sample_frame_indices`): of the ``frames`` frames sampled
    in ``unit``-frame units, those :func:`needle_positions` gives for ``depth`` and
    ``length``. Read with the same ``frames`` setting, every other frame is the plain
    reader's, byte for byte.

    Attributes:
        sampled: the sampled file frame indices (``len`` a multiple of ``unit``).
        positions: positions in ``sampled`` that hold the needle.
        units: the sampled units that hold it.
        needle_frames: the file frame indices that hold it (a frozenset).

    Raises:
        FileNotFoundError, ValueError: as ``VideoReader`` for the file, and naming
            ``depth``/``length``/``frames`` as :func:`needle_positions`.
    """

    def __init__(self, path, needle: Needle, depth: float, frames: int, unit: int,
                 length: int | None = None, cache_bytes: int = 0, decoder: str = "pyav"):
        if not isinstance(needle, Needle):
            raise ValueError(f"needle: must be a Needle (make_needle), got {type(needle).__name__}")
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
            raise ValueError(f"frames: must be an int >= 1, got {frames!r}")
        self._owned = not hasattr(path, "get_frames")
        self._reader = VideoReader(path, cache_bytes=cache_bytes, decoder=decoder) if self._owned else path
        self.needle, self.depth = needle, depth
        info = self._reader.info
        try:
            self.sampled = sample_frame_indices(info.num_frames, frames, unit, info.timestamps_s)
            self.positions = needle_positions(len(self.sampled), unit, depth, length)
        except ValueError:
            self.close()
            raise
        self.units = sorted({p // unit for p in self.positions})
        self.needle_frames = frozenset(self.sampled[p] for p in self.positions)

    @property
    def path(self) -> str:
        return self._reader.path

    @property
    def info(self):
        return self._reader.info

    @property
    def backend(self) -> str:
        return self._reader.backend

    @property
    def cache_bytes(self) -> int:
        return self._reader.cache_bytes

    def plan(self, indices, height: int, width: int) -> None:
        """As ``VideoReader.plan``."""
        self._reader.plan(indices, height, width)

    def get_frames(self, indices, height: int, width: int) -> torch.Tensor:
        """As ``VideoReader.get_frames`` (uint8 ``[len(indices), 3, height, width]``), the
        needle drawn on the frames in :attr:`needle_frames`."""
        indices = [int(i) for i in indices]
        out = self._reader.get_frames(indices, height, width)
        rows = [n for n, i in enumerate(indices) if i in self.needle_frames]
        if rows:
            out = out.clone()
            out[rows] = draw_needle(out[rows], self.needle)
        return out

    def close(self) -> None:
        """Closes the file it opened (a reader it was given stays open)."""
        if self._owned:
            self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
