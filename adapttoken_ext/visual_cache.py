"""One visual encoding per video for many questions (method.md step 1).

A group's encoding (decoded frames through the vision tower) does not depend on the
question; only the group pass (steps 2-4) does. :class:`VisualCache` keeps encodings on
the host, bounded in bytes, so the second and later questions about a video skip decoding
and the vision tower. A hit returns the very tensors a fresh encode produced (bitwise equal).
"""
from __future__ import annotations

import collections
import os

from .models.base import Visual

__all__ = ["CachedEncoder", "VisualCache", "video_key"]


def video_key(path: str | os.PathLike) -> tuple:
    """``(real path, size in bytes, mtime in ns)``: a rewritten file gets a new key.

    Raises:
        FileNotFoundError: naming ``video`` when the file does not exist.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"video: no such file: {str(path)!r}") from None
    return os.path.realpath(path), st.st_size, st.st_mtime_ns


def _nbytes(v: Visual) -> int:
    return sum(t.numel() * t.element_size() for t in (v.embeds, *v.side.values()))


class VisualCache:
    """Group encodings on the host, at most ``limit_bytes`` in all.

    Keys are ``(video_key, model, frame size, frame indices of the group)``: the model
    (name and dtype), the sampling config as it applies to the video (which frames, at which
    size) and the file. When full, whole older videos are evicted, least recently used first;
    the video being answered is never evicted for itself (a cyclic scan over more groups than
    fit would otherwise miss every time), so a video larger than the limit is cached in part.

    Raises:
        ValueError: naming ``visual_cache_gb`` for a negative limit.
    """

    def __init__(self, limit_bytes: int):
        if limit_bytes < 0:
            raise ValueError(f"visual_cache_gb: must be >= 0, got {limit_bytes / 2**30}")
        self.limit = int(limit_bytes)
        self.bytes = 0
        self.hits = self.misses = 0
        self._videos: collections.OrderedDict = collections.OrderedDict()  # video -> {key: Visual}

    def has(self, video, key) -> bool:
        return key in self._videos.get(video, ())

    def get(self, video, key) -> Visual | None:
        entries = self._videos.get(video)
        hit = entries.get(key) if entries else None
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self._videos.move_to_end(video)
        return hit

    def put(self, video, key, visual: Visual) -> None:
        """Keep a host copy of ``visual`` if it fits after evicting other videos."""
        n = _nbytes(visual)
        for other in [v for v in self._videos if v != video]:
            if self.bytes + n <= self.limit:
                break
            self.bytes -= sum(map(_nbytes, self._videos.pop(other).values()))
        if self.bytes + n > self.limit:
            return
        host = Visual(visual.embeds.cpu(), {k: t.cpu() for k, t in visual.side.items()})
        self._videos.setdefault(video, {})[key] = host
        self._videos.move_to_end(video)
        self.bytes += n

    def clear(self) -> None:
        self._videos.clear()
        self.bytes = 0


class CachedEncoder:
    """``encode(g) -> GroupEncoding`` through a :class:`VisualCache`
    (:func:`stages.encode_group` on a miss); ``model`` names the model in the keys."""

    def __init__(self, cache: VisualCache, video, model, adapter, reader, plan, timer):
        self.cache, self.video, self.model = cache, video, model
        self.adapter, self.reader, self.plan, self.timer = adapter, reader, plan, timer

    def key(self, g: int) -> tuple:
        p = self.plan
        return self.model, p.size, tuple(p.unit_frames(p.groups[g]))

    def cached(self, g: int) -> bool:
        return self.cache.has(self.video, self.key(g))

    def __call__(self, g: int):
        from . import stages
        hit = self.cache.get(self.video, self.key(g))
        if hit is not None:
            return stages.GroupEncoding(self.plan.groups[g], hit)
        enc = stages.encode_group(self.adapter, self.reader, self.plan, g, self.timer)
        self.cache.put(self.video, self.key(g), enc.visual)
        return enc
