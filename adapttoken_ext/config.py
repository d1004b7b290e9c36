"""AdaptTokenConfig: every method.md default as a field."""
from __future__ import annotations

from dataclasses import asdict, dataclass

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass
class AdaptTokenConfig:
    """Settings of AdaptToken and AdaptToken-Lite. Step numbers refer to ``shared/method.md``."""

    frames: int = 4096
    """Step 0: frames sampled uniformly over the video (capped at its frame count, rounded
    down to the model's unit, 2 frames for Qwen2.5-VL)."""
    max_pixels: int = 308 * 560
    """Step 0: pixels per frame after resize (308*560 gives up to 220 tokens per unit)."""
    units_per_group: int = 64
    """Step 1: temporal units per group; ``G = ceil(units / units_per_group)``."""
    group_layout: str = "interleaved"
    """Step 1: ``"interleaved"`` (unit i to group i mod G) or ``"contiguous"``."""
    decode_cache_mb: int = 1024
    """Step 1: host memory (MiB) for resized frames of later groups that decoding passes
    on the way to the current group's frames; 0 disables. Bounds the re-decoding that
    interleaved groups cause, and host memory."""
    decoder: str = "pyav"
    """Step 0: the video decoder, ``"pyav"`` (FFmpeg bundled in its wheels; honours the
    display rotation and variable frame rates; tested) or ``"torchcodec"`` (only when asked
    for: needs torchcodec and FFmpeg's shared libraries, and ignores rotation and variable
    frame rates). README "Video input"."""
    visual_cache_gb: float = 8.0
    """Step 1: host memory (GiB) for group encodings that ``AdaptToken.answer_many``, the
    ``batch`` command and the lmms-eval plug-in reuse across questions about one video;
    0 disables. Qwen2.5-VL-7B at 4096 frames needs about 3 GiB per video (bfloat16)."""
    reference_layer: int | None = None
    """Step 3: decoder layer (0-based) whose attention ranks tokens; None: the model's
    default (20 for 28-layer Qwen2.5-VL-7B, else round(0.7 * layers))."""
    reduce: str = "max"
    """Step 3: reduction of attention over heads and text queries, ``"max"`` or ``"mean"``."""
    scorer: str = "attention"
    """Step 3's within-group ranking: ``"attention"`` (step 3), ``"local_entropy"``
    (EntropySelect's fused score, README "EntropySelect"; question-independent) or
    ``"fused"`` (the attention score over its group's maximum, times EntropySelect's score)."""
    es_window: int = 3
    """EntropySelect step 1 (chosen): spatial window k of the local entropy, odd >= 3."""
    es_temperature: float = 0.1
    """EntropySelect step 1 (chosen): softmax temperature of the cosine similarities."""
    es_alpha: float = 0.5
    """EntropySelect step 3 (chosen): weight of the entropy term against Sobel saliency."""
    es_grid: int = 2
    """EntropySelect step 5 (chosen): q, cells per side of the coverage quotas."""
    entropy_mode: str = "auto"
    """Step 4: ``"options"`` (entropy over the option letters' tokens), ``"vocab"``
    (full vocabulary), or ``"auto"``: options when options are given."""
    budget: int = 7040
    """Step 5: visual tokens kept for the final pass (32 units' worth on Qwen2.5-VL)."""
    temperature: float = 0.3
    """Step 5: T in ``w_g = softmax(-H_g / T)``. 0.3, as the needle benchmark's sweep decided
    (method.md step 5; README "Needle in a haystack"): at a budget of two units, T = 1 gave
    the needle's group too small a share among the 79 groups of 10,000 frames (accuracy
    0.98, needle recall 0.33 there; benchmarks/results/cpu_niah.log) where 0.3 and 0.1 answered every trial."""
    per_group_floor: int = 0
    """Step 5: minimum tokens per group (capped at its capacity)."""
    redundancy_threshold: float | None = 0.9
    """Step 7: cosine threshold delta for same-location redundancy; None disables it."""
    lite: bool = False
    """Step 8: AdaptToken-Lite, stop visiting groups once one is certain enough."""
    stop_threshold: float | None = None
    """Step 8: tau in nats; None: ``0.1 ln K`` with K options, else 0.1."""
    force_stop_after: int | None = None
    """Step 8, for benchmarks: stop after this many groups as if Lite's test had fired
    (random-weight models are never confident enough to stop on their own)."""
    max_new_tokens: int | None = None
    """Step 9: greedy decoding length; None: 16 with options, else 128."""
    seed: int = 0
    """``method="random"`` (README "Baselines"): seed of the token draw."""
    instruction: str | None = None
    """Text after the options; None: the standard multiple-choice instruction when options
    are given, nothing otherwise."""

    def validate(self) -> "AdaptTokenConfig":
        """Raise ValueError naming the first bad field. Checks that need the video or the
        model (``per_group_floor`` against the groups, ``reference_layer`` against the layers)
        run in ``stages.make_plan`` and ``AdaptToken()``, still before any group pass."""
        def positive(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("frames", "max_pixels", "units_per_group", "budget"):
            positive(name)
        if self.group_layout not in ("interleaved", "contiguous"):
            raise ValueError(f"group_layout: must be 'interleaved' or 'contiguous', got {self.group_layout!r}")
        if self.decoder not in ("pyav", "torchcodec"):
            raise ValueError(f"decoder: must be 'pyav' or 'torchcodec', got {self.decoder!r}")
        if self.reduce not in ("max", "mean"):
            raise ValueError(f"reduce: must be 'max' or 'mean', got {self.reduce!r}")
        if self.scorer not in ("attention", "local_entropy", "fused"):
            raise ValueError(f"scorer: must be 'attention', 'local_entropy' or 'fused', got {self.scorer!r}")
        try:
            self.entropy_select()
        except ValueError as e:  # EntropySelect names its argument; the field is es_<argument>
            raise ValueError(f"es_{e}") from None
        if self.entropy_mode not in ("auto", "options", "vocab"):
            raise ValueError(f"entropy_mode: must be 'auto', 'options' or 'vocab', got {self.entropy_mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        for name in ("decode_cache_mb", "per_group_floor", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {v!r}")
        if (isinstance(self.visual_cache_gb, bool) or not isinstance(self.visual_cache_gb, (int, float))
                or not self.visual_cache_gb >= 0):
            raise ValueError(f"visual_cache_gb: must be a number >= 0, got {self.visual_cache_gb!r}")
        if not isinstance(self.lite, bool):
            raise ValueError(f"lite: must be True or False, got {self.lite!r}")
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise ValueError(f"instruction: must be a string or None, got {self.instruction!r}")
        if self.redundancy_threshold is not None and not -1.0 <= self.redundancy_threshold <= 1.0:
            raise ValueError(f"redundancy_threshold: must be in [-1, 1] or None, got {self.redundancy_threshold}")
        if self.stop_threshold is not None and not self.stop_threshold >= 0:
            raise ValueError(f"stop_threshold: must be >= 0, got {self.stop_threshold}")
        if self.max_new_tokens is not None:
            positive("max_new_tokens")
        if self.force_stop_after is not None:
            positive("force_stop_after")
        if self.reference_layer is not None and (not isinstance(self.reference_layer, int)
                                                 or self.reference_layer < 0):
            raise ValueError(f"reference_layer: must be an integer >= 0 or None, got {self.reference_layer!r}")
        return self

    def entropy_select(self):
        """The :class:`~adapttoken_ext.entropyselect.EntropySelect` of these settings."""
        from .entropyselect import EntropySelect
        return EntropySelect(self.budget, self.es_window, self.es_temperature, self.es_alpha,
                             self.es_grid)

    def to_dict(self) -> dict:
        return asdict(self)
