"""``adapttoken batch``: answer a JSONL file of questions, resumably, on one or many processes.

Input lines: ``{"id", "video", "question", "options"?}`` (a relative ``video`` path is
relative to the input file's folder). Output lines: ``{"id", ...}`` plus
:meth:`AdaptTokenResult.to_dict`, or ``{"id", "line", "error"}``, one per input line, in
input order.

- Questions are answered grouped by video, through :meth:`AdaptToken.answer_many`, so
  each video is decoded and encoded once while its encoding is cached (method.md step 1).
- Each answer is appended to a journal, flushed and fsynced before the next starts; a
  restart skips ids already answered and redoes a torn last line.
- What produced the answers is kept beside them in ``<output>.run.json``
  (:func:`run_record`: the model, its dtype and attention backend, every setting that
  changes an answer, the input file's SHA-256). A rerun into the same output that
  differs in any of these is refused (ValueError naming ``--output``) unless
  ``restart``, which discards the old answers first.
- A question that raises anything becomes that line's ``error`` and the run goes on; a
  CUDA out-of-memory error empties the CUDA cache first. A ``started`` mark is journalled
  before each question, so a question the process died on (killed, out of host memory) is
  retried once by the next run and then recorded as an error, never retried forever.
- Under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1) videos are sharded by
  rank, rank ``r`` journals to ``<output>.rank{r}``, and rank 0 merges all in input order
  once every rank is done or has failed (:func:`rendezvous`, gloo). The output's folder
  must be shared by all nodes.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
from dataclasses import dataclass

__all__ = ["Question", "Rendezvous", "check", "read_questions", "run", "run_record"]


@dataclass
class Question:
    """One input line: ``line`` number (1-based), ``id``, absolute ``video`` path,
    ``question``, ``options``; ``error`` when the line itself is bad."""
    line: int
    id: object = None
    video: str = ""
    question: str = ""
    options: list | None = None
    error: str | None = None


def read_questions(path: str) -> list[Question]:
    """Parse the input JSONL (blank lines skipped). Bad lines get ``error``: not a JSON
    object, a missing or mistyped field, a duplicate id (all but its first line).

    Raises:
        FileNotFoundError: naming ``--input``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--input: no such file: {path!r}")
    base = os.path.dirname(os.path.abspath(path))
    out, first = [], {}
    with open(path, encoding="utf-8") as f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            q = Question(n)
            out.append(q)
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                q.error = f"line {n}: not valid JSON ({e})"
                continue
            if not isinstance(d, dict):
                q.error = f"line {n}: not a JSON object"
                continue
            q.id = d.get("id")
            missing = [k for k in ("id", "video", "question") if d.get(k) in (None, "")]
            if missing:
                q.error = f"line {n}: missing field {', '.join(map(repr, missing))}"
            elif not isinstance(q.id, (str, int)) or isinstance(q.id, bool):
                q.error = f"line {n}: 'id' must be a string or an integer, got {q.id!r}"
            elif not isinstance(d["video"], str) or not isinstance(d["question"], str):
                q.error = f"line {n}: 'video' and 'question' must be strings"
            elif d.get("options") is not None and not (
                    isinstance(d["options"], list) and all(isinstance(o, str) for o in d["options"])):
                q.error = f"line {n}: 'options' must be a list of strings"
            elif _key(q.id) in first:
                q.error = f"line {n}: duplicate id {q.id!r} (first on line {first[_key(q.id)]})"
            else:
                first[_key(q.id)] = n
                q.video = os.path.join(base, d["video"])
                q.question, q.options = d["question"], d.get("options")
    return out


def _key(i) -> str:
    return json.dumps(i)  # 1 and "1" are different ids


# Config fields that change speed or memory, never an answer (not in the run record).
_PERFORMANCE_ONLY = ("decode_cache_mb", "visual_cache_gb")
# Runs that may die on one question before it is recorded as an error instead of retried.
MAX_DEATHS = 2


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_record(model: str, config, input_path: str, adapter=None, method: str = "adapttoken") -> dict:
    """What produces a batch's answers: ``model`` (the checkpoint's name or path), the
    selection ``method`` (README "Baselines"), every
    :class:`AdaptTokenConfig` field but the cache sizes (they change speed, not answers),
    the input file's SHA-256 and, given the loaded ``adapter``, the weights' dtype and the
    attention backend. The input's path is kept for the reader and not compared."""
    rec = {"model": model, "method": method,
           "settings": {k: v for k, v in config.to_dict().items() if k not in _PERFORMANCE_ONLY},
           "input_sha256": _sha256(input_path), "input": os.path.abspath(input_path)}
    if adapter is not None:
        text = adapter.model.config.get_text_config()
        rec["dtype"] = str(adapter.model.dtype).removeprefix("torch.")
        rec["attn_implementation"] = getattr(text, "_attn_implementation", None)
    return rec


def _record_path(output: str) -> str:
    return output + ".run.json"


def _differences(old: dict, new: dict) -> list[str]:
    """``name: old there, new now`` for every compared key of ``new`` that differs."""
    out = []
    for k, v in new.items():
        if k == "input":
            continue
        if k == "settings":
            there = old.get("settings", {})
            out += [f"{f}: {there.get(f)!r} there, {x!r} now" for f, x in v.items() if there.get(f) != x]
        elif k == "input_sha256" and old.get(k) != v:
            out.append("--input: its content differs from the file those answers came from")
        elif old.get(k) != v:
            out.append(f"{k}: {old.get(k)!r} there, {v!r} now")
    return out


def check(input_path: str, output: str, record: dict | None = None, restart: bool = False) -> None:
    """Before any model work: ``--input`` is a file, ``--output`` can be written, and
    answers already in ``output`` came from a run with the same ``record`` (the keys it
    has; see :func:`run_record`) unless ``restart``.

    Raises:
        FileNotFoundError: naming ``--input``.
        ValueError: naming ``--output``: a directory, no such folder, the input file, or
            answers from another run (listing what differs).
    """
    if os.path.isdir(input_path):
        raise ValueError(f"--input: {input_path!r} is a directory, not a JSONL file")
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"--input: no such file: {input_path!r}")
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise ValueError(f"--output: {output!r} is a directory; name a file")
    if not os.path.isdir(folder):
        raise ValueError(f"--output: no such directory for {output!r}")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--output: cannot write in {folder!r}")
    if os.path.abspath(output) == os.path.abspath(input_path):
        raise ValueError("--output: must not be the --input file")
    if restart or record is None:
        return
    old = _load_record(_record_path(output))
    if old is None:  # the record is written before any answer: this file is not ours
        if any(os.path.getsize(p) for p in _journals(output) if os.path.isfile(p)):
            raise ValueError(f"--output: {output!r} is not empty but has no {_record_path(output)!r} "
                             "saying what produced it; pass --restart to replace it, or choose "
                             "another --output")
        return
    diff = _differences(old, record)
    if diff:
        raise ValueError(f"--output: {output!r} holds answers of another run ({'; '.join(diff)}); "
                         "pass --restart to discard them and start over, or choose another --output")


def _load_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:
        raise ValueError(f"--output: cannot read {path!r} ({e}); pass --restart to start over") from None


def _write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in its folder; nothing is left
    behind when it fails."""
    tmp = f"{path}.{os.getpid()}.partial"  # several ranks may write the same record
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_journal(path: str, repair: bool) -> list[dict]:
    """Records of a journal. A torn last line (a crash mid-write) is dropped, and with
    ``repair`` cut from the file so that appends start on a fresh line."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    records, good = [], 0
    for raw in data.splitlines(keepends=True):
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("torn")
            records.append(json.loads(raw))
        except ValueError:
            break
        good += len(raw)
    if repair and good < len(data):
        print(f"adapttoken: {path}: dropping a torn last line; what it held is redone",
              file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


def _journals(output: str) -> list[str]:
    """The output and every rank journal beside it (files only)."""
    folder = os.path.dirname(os.path.abspath(output))
    stem = os.path.basename(output) + ".rank"
    return [output] + sorted(p for n in os.listdir(folder)
                             if n.startswith(stem) and n[len(stem):].isdigit()
                             and os.path.isfile(p := os.path.join(folder, n)))


def _state(output: str, own: str) -> tuple[dict, collections.Counter]:
    """Over the output and every journal: id key -> the record no rerun redoes (the latest
    answer, else an error saying the process died on it), and id key -> how many runs
    died while answering it (``started`` marks without a record after them)."""
    done, started, finished = {}, collections.Counter(), collections.Counter()
    for path in _journals(output):
        for r in _read_journal(path, repair=path == own):
            if not isinstance(r, dict) or "id" not in r:
                continue
            k = _key(r["id"])
            if r.get("started"):
                started[k] += 1
                continue
            finished[k] += 1
            if "error" not in r or (r.get("died") and k not in done):
                done[k] = r
    return done, started - finished


def _discard(output: str, own: str, rank: int, world: int) -> None:
    """``restart``: every rank empties its own journal; rank 0 also removes the output (a
    journal of its own when ``world`` is 1), the run record, and the journals of ranks
    this run does not have."""
    open(own, "w").close()
    if rank != 0:
        return
    for path in _journals(output)[1:]:
        if world == 1 or int(path.rsplit(".rank", 1)[1]) >= world:
            os.remove(path)
    for path in ([output] if world > 1 else []) + [_record_path(output)]:
        if os.path.exists(path):
            os.remove(path)


def _shard(questions: list[Question], rank: int, world: int) -> list[Question]:
    """This rank's questions, grouped by video (videos in order of first appearance, dealt
    round-robin to ranks)."""
    videos: dict[str, list[Question]] = {}
    for q in questions:
        if q.error is None:
            videos.setdefault(q.video, []).append(q)
    return [q for i, qs in enumerate(videos.values()) if i % world == rank for q in qs]


def _error_text(e: Exception) -> str:
    """One line for an exception a question raised."""
    import torch
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return (f"CUDA out of memory ({first}); the CUDA cache was emptied and the run went on: "
                "a smaller --frames, --budget or --max-pixels needs less")
    if isinstance(e, (ValueError, OSError)):
        return str(e)
    return f"{type(e).__name__}: {first}"


def _answer(at, q: Question, method: str = "adapttoken") -> dict:
    """One question's record: the answer, or an error for anything it raised."""
    import torch
    try:
        return {"id": q.id, **at.answer_many(q.video, [(q.question, q.options)], progress=False, method=method)[0].to_dict()}
    except Exception as e:  # noqa: BLE001 - one question's failure must not end the run
        oom, rec = isinstance(e, torch.cuda.OutOfMemoryError), {"id": q.id, "line": q.line,
                                                                   "error": _error_text(e)}
    if oom:  # after the except block: the traceback no longer holds the failed forward's tensors
        torch.cuda.empty_cache()
    return rec


class Rendezvous:
    """The end of a multi-process batch (``torch.distributed``, gloo): every rank calls it
    once, after its questions or after failing, with ``"ok"`` or its error; every rank
    gets all ranks' statuses. A rank that never arrives (killed, hung) makes it raise
    RuntimeError after ``timeout_s`` seconds on the others, naming that rank."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.called = False

    def __call__(self, status: str) -> list[str]:
        import datetime

        import torch.distributed as dist
        self.called = True
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=self.timeout_s), wait_all_ranks=True)
            statuses = [None] * dist.get_world_size()
            dist.all_gather_object(statuses, status)
        except RuntimeError as e:
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RuntimeError(f"a rank did not reach the end (killed, crashed, or not done within "
                               f"--barrier-timeout {self.timeout_s:g} s): {why}; the answers so far "
                               "are in the rank journals: run the same command again to finish "
                               "and merge them") from None
        return statuses


def run(at, input_path: str, output: str, progress: bool = True, rank: int = 0, world: int = 1,
        gather=None, restart: bool = False, method: str = "adapttoken") -> int:
    """Answer every question of ``input_path`` into ``output`` (see the module docstring).

    Args:
        at: an :class:`~adapttoken_ext.pipeline.AdaptToken`.
        rank, world: this process's rank and the number of processes.
        gather: with ``world`` > 1, a :class:`Rendezvous` (called once, with ``"ok"``).
        restart: discard answers already in ``output`` (and its journals) and start over.
        method: the selection method of every answer (:meth:`AdaptToken.answer`).

    Returns:
        0 when every line has an answer, 1 when some line has an error (listed on stderr)
        or some rank failed.

    Raises:
        FileNotFoundError, ValueError: naming ``--input`` or ``--output`` (answers of a
            run with other settings there, without ``restart``).
        RuntimeError: a rank did not finish within the rendezvous' timeout.
    """
    check(input_path, output)  # the paths, before hashing the input
    from . import methods
    methods.get(method).check(at.config)
    record = run_record(at.name, at.config, input_path, at.adapter, method)
    check(input_path, output, record, restart)
    questions = read_questions(input_path)
    own = output if world == 1 else f"{output}.rank{rank}"
    if restart:
        _discard(output, own, rank, world)
    # Every rank writes the record (the same one: all run one command) before its first
    # journal line, so a slower rank 0's check never finds rank journals without a record.
    if _load_record(_record_path(output)) != record:
        _write_atomic(_record_path(output), json.dumps(record, indent=1))
    done, died = ({}, collections.Counter()) if restart else _state(output, own)
    todo = [q for q in _shard(questions, rank, world) if _key(q.id) not in done]
    print(f"adapttoken batch: rank {rank}/{world}: {len(questions)} lines, {len(done)} already "
          f"answered, {len(todo)} to answer here", file=sys.stderr)
    from .stages import progress_bar
    bar = progress_bar(todo, progress, desc=f"rank {rank}" if world > 1 else "questions",
                    unit="q", position=rank)
    with open(own, "a", encoding="utf-8") as journal:
        def put(rec):
            journal.write(json.dumps(rec) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
        for q in bar:
            n = died[_key(q.id)]
            if n >= MAX_DEATHS:
                put({"id": q.id, "line": q.line, "died": n, "error": (
                    f"the process died {n} times while answering this question (killed, or out "
                    "of host memory?); not retried: --restart tries again")})
                continue
            put({"id": q.id, "started": True})  # a run that dies now leaves this mark
            put(_answer(at, q, method))
    failed = {}
    if world > 1:
        failed = {r: s for r, s in enumerate(gather("ok")) if s != "ok"}
        if 0 in failed:  # rank 0 merges; without it the journals wait for a rerun
            print(f"adapttoken batch: rank {rank}: rank 0 failed ({failed[0]}); nothing merged: "
                  "run the same command again", file=sys.stderr)
            return 1
    if rank != 0:
        return 0
    return _merge(questions, output, world, failed)


def _merge(questions: list[Question], output: str, world: int = 1, failed: dict | None = None) -> int:
    """Rank 0: one record per input line, in input order, written atomically; journals of
    ranks are removed once merged. ``failed``: rank -> its error; their unanswered lines
    say so."""
    latest = {}
    journals = _journals(output)
    for path in journals:
        for r in _read_journal(path, repair=False):
            if not isinstance(r, dict) or r.get("started"):
                continue
            k = _key(r.get("id"))
            if "error" not in r or "error" in latest.get(k, r):  # an answer beats an error
                latest[k] = r
    owner = {_key(q.id): r for r in (failed or {}) for q in _shard(questions, r, world)}
    lines, errors = [], []
    for q in questions:
        why = (f"not answered: rank {owner[_key(q.id)]} failed ({failed[owner[_key(q.id)]]})"
               if _key(q.id) in owner else "not answered")
        r = ({"id": q.id, "line": q.line, "error": q.error} if q.error else
             latest.get(_key(q.id), {"id": q.id, "line": q.line, "error": why}))
        if "error" in r:
            errors.append(r["error"] if r["error"].startswith("line ") else f"line {q.line}: {r['error']}")
        lines.append(json.dumps(r) + "\n")
    _write_atomic(output, "".join(lines))
    for path in journals[1:]:
        os.remove(path)
    for e in errors:
        print(f"adapttoken batch: error: {e}", file=sys.stderr)
    for r, s in sorted((failed or {}).items()):
        print(f"adapttoken batch: error: rank {r} failed: {s}", file=sys.stderr)
    print(f"adapttoken batch: wrote {output}: {len(lines) - len(errors)} answers, {len(errors)} errors",
          file=sys.stderr)
    return 1 if errors or failed else 0
