"""lmms-eval (>= 0.7) model plug-in: ``python -m lmms_eval --model adapttoken ...``.

Registered through the ``lmms_eval.models`` entry point (its payload, lmms-eval's
``ModelManifest``, comes from :func:`adapttoken_ext.integrations.lmms_eval_manifest`); no fork and no edit of lmms-eval. Install with
``pip install adapttoken-ext[eval]``. Importing ``adapttoken_ext`` never needs lmms-eval.

It is a *simple* model (``lmms_eval.api.model.lmms`` with ``is_simple = True``): a simple
model's request carries the rendered prompt text and ``doc_to_visual``, which gives the
video file path directly, which is all AdaptToken takes; a chat model would get the same
through a message list to take apart.

``model_args``: ``pretrained`` (hub id or local path; default: the offline tiny model of
``family``), ``family``, ``method`` (the token selection, README "Baselines": ``adapttoken``,
``uniform``, ``flexselect``, ``entropyselect``, ``random``; default ``adapttoken``), ``device_map`` (``auto``), ``dtype`` (``bfloat16``, ``float16``,
``float32``, ``auto``), ``attn_implementation``, and any :class:`AdaptTokenConfig` field
(``frames``, ``budget``, ``lite``, ``units_per_group``, ``max_pixels``, ...). An unknown
key is a ValueError naming it. Under ``accelerate launch`` each rank takes
``cuda:{local_rank}``; lmms-eval shards the requests by ``rank``/``world_size``.
"""
from __future__ import annotations

import dataclasses
import re

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

from ..config import AdaptTokenConfig

__all__ = ["AdaptTokenLMMS", "split_prompt"]

_LOAD = ("pretrained", "family", "method", "device", "device_map", "dtype", "attn_implementation", "batch_size")
_OPTION = re.compile(r"^\s*\(?[A-Z]\s*[.):]\s*\S")
_VIDEO = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpeg", ".mpg", ".ts")


def split_prompt(context: str) -> tuple[str, list[str] | None]:
    """A task's prompt as ``(question, options)``: lines like ``A. text`` are the options
    (multiple choice: option-letter entropy, method.md step 4); the other lines are the
    question. No option lines: ``options`` is None (full-vocabulary entropy)."""
    lines = context.replace("<image>", "").replace("<video>", "").strip().splitlines()
    options = [ln.strip() for ln in lines if _OPTION.match(ln)]
    question = "\n".join(ln for ln in lines if not _OPTION.match(ln)).strip()
    return (question or context.strip()), (options or None)


class AdaptTokenLMMS(lmms):
    """AdaptToken as an lmms-eval model (see the module docstring for ``model_args``).

    Raises:
        ValueError: an unknown ``model_args`` key or a bad value, naming it.
    """

    is_simple = True

    def __init__(self, pretrained: str | None = None, family: str = "qwen2_5_vl",
                 method: str = "adapttoken", device: str | None = None, device_map: str | None = None, dtype: str = "auto",
                 attn_implementation: str | None = None, batch_size=1, **config) -> None:
        super().__init__()
        import torch
        from accelerate import PartialState

        from .. import methods
        from ..pipeline import AdaptToken
        fields = {f.name for f in dataclasses.fields(AdaptTokenConfig)}
        unknown = sorted(set(config) - fields)
        if unknown:
            raise ValueError(f"model_args: unknown key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(_LOAD + tuple(sorted(fields)))}")
        if dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ValueError(f"model_args: dtype must be auto, bfloat16, float16 or float32, got {dtype!r}")
        config = AdaptTokenConfig(**config)
        methods.get(method).check(config)
        self.method = method
        state = PartialState()
        self._rank, self._world_size = state.process_index, state.num_processes
        if device_map is None and device is None:  # one device per rank (data parallel)
            device = f"cuda:{state.local_process_index}" if torch.cuda.is_available() else "cpu"
        self.pipeline = AdaptToken.from_pretrained(
            pretrained, config, device=device or "cpu",
            dtype=None if dtype == "auto" else getattr(torch, dtype), device_map=device_map,
            attn_implementation=attn_implementation, family=family)

    @property
    def device(self):
        """Where inputs go (the embedding layer's device); lmms-eval gathers counts there."""
        return self.pipeline.adapter.input_device

    def generate_until(self, requests) -> list:
        """Answers in request order. Requests about the same video are answered together
        (:meth:`AdaptToken.answer_many`: one visual encoding per video). Each answer's
        ``input_tokens`` count is the number of visual tokens kept for the final pass.
        The task's ``gen_kwargs`` (``until``, ``max_new_tokens``, sampling) are not used:
        decoding is greedy up to ``max_new_tokens`` of ``model_args`` (AdaptTokenConfig)."""
        from tqdm.auto import tqdm
        by_video: dict[str, list[int]] = {}
        asked = []
        for i, req in enumerate(requests):
            context, _gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            videos = [v for v in visuals if isinstance(v, str) and v.lower().endswith(_VIDEO)]
            if len(videos) != 1:
                raise ValueError(f"{task}: doc {doc_id}: adapttoken needs exactly one video file "
                                 f"per question, got {visuals!r}")
            asked.append(split_prompt(context))
            by_video.setdefault(videos[0], []).append(i)
        out = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="AdaptToken")
        for video, idx in by_video.items():
            for i, res in zip(idx, self.pipeline.answer_many(video, [asked[j] for j in idx], progress=False,
                                                                  method=self.method)):
                out[i] = GenerationResult(res.answer, TokenCounts(input_tokens=len(res.selected_tokens)))
                self.cache_hook.add_partial("generate_until", requests[i].args[:2], res.answer)
            bar.update(len(idx))
        bar.close()
        return out

    def loglikelihood(self, requests):
        raise NotImplementedError("adapttoken: loglikelihood is not supported; AdaptToken "
                                  "generates answers (use generate_until tasks)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("adapttoken: multi-round generation is not supported")
