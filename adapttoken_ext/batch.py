"""``adapttoken batch``: answer a JSONL file of questions, resumably, on one or many processes.

Input lines: ``{"id", "video", "question", "options"?}`` (a relative ``video`` path is
relative to the input file's folder). Output lines: ``{"id", ...}`` plus
:meth:`AdaptTokenResult.to_dict`, or ``{"id", "line", "error"}``, one per input line, in
input order.

- Questions are answered grouped by video, through :meth:`AdaptToken.answer_many`, so
  each video is decoded and encoded once while its encoding is cached (method.md step 1).
- Each answer is appended to a journal, flushed and fsynced before the next starts; a
  restart skips ids already answered and redoes a torn last line.
- Under ``torchrun``/``accelerate launch`` (``WORLD_SIZE`` > 1) videos are sharded by
  rank, rank ``r`` journals to ``<output>.rank{r}``, and rank 0 merges all in input order
  once every rank is done (a ``torch.distributed`` barrier, gloo). The output's folder
  must be shared by all nodes.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

__all__ = ["Question", "read_questions", "run"]


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


def _read_journal(path: str, repair: bool) -> list[dict]:
    """Records of a journal. A torn last line (a crash mid-write) is dropped, and with
    ``repair`` cut from the file so that appends start on a fresh line."""
    if not os.path.exists(path):
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
        print(f"adapttoken batch: {path}: dropping a torn last line; its question is redone",
              file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


def _journals(output: str) -> list[str]:
    folder = os.path.dirname(os.path.abspath(output))
    stem = os.path.basename(output) + ".rank"
    return [output] + sorted(os.path.join(folder, n) for n in os.listdir(folder)
                             if n.startswith(stem) and n[len(stem):].isdigit())


def _answered(output: str, own: str) -> dict:
    """id key -> the latest record without an error, over the output and every journal."""
    done = {}
    for path in _journals(output):
        for r in _read_journal(path, repair=path == own):
            if "error" not in r and "id" in r:
                done[_key(r["id"])] = r
    return done


def _shard(questions: list[Question], rank: int, world: int) -> list[Question]:
    """This rank's questions, grouped by video (videos in order of first appearance, dealt
    round-robin to ranks)."""
    videos: dict[str, list[Question]] = {}
    for q in questions:
        if q.error is None:
            videos.setdefault(q.video, []).append(q)
    return [q for i, qs in enumerate(videos.values()) if i % world == rank for q in qs]


def run(at, input_path: str, output: str, progress: bool = True, rank: int = 0, world: int = 1,
        barrier=None) -> int:
    """Answer every question of ``input_path`` into ``output`` (see the module docstring).

    Args:
        at: an :class:`~adapttoken_ext.pipeline.AdaptToken`.
        rank, world: this process's rank and the number of processes.
        barrier: called once this rank is done, returns once all are (``world`` > 1).

    Returns:
        0 when every line has an answer, 1 when some line has an error (listed on stderr).

    Raises:
        FileNotFoundError, ValueError: naming ``--input`` or ``--output``.
    """
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise ValueError(f"--output: no such directory for {output!r}")
    if os.path.abspath(output) == os.path.abspath(input_path):
        raise ValueError("--output: must not be the --input file")
    questions = read_questions(input_path)
    own = output if world == 1 else f"{output}.rank{rank}"
    done = _answered(output, own)
    todo = [q for q in _shard(questions, rank, world) if _key(q.id) not in done]
    print(f"adapttoken batch: rank {rank}/{world}: {len(questions)} lines, {len(done)} already "
          f"answered, {len(todo)} to answer here", file=sys.stderr)
    from .stages import _progress
    bar = _progress(todo, progress, desc=f"rank {rank}" if world > 1 else "questions",
                    unit="q", position=rank)
    with open(own, "a", encoding="utf-8") as journal:
        for q in bar:
            try:
                rec = {"id": q.id, **at.answer_many(q.video, [(q.question, q.options)], progress=False)[0].to_dict()}
            except (ValueError, OSError) as e:  # this line's video or question; the run goes on
                rec = {"id": q.id, "line": q.line, "error": str(e)}
            journal.write(json.dumps(rec) + "\n")
            journal.flush()
            os.fsync(journal.fileno())
    if world > 1:
        barrier()
    if rank != 0:
        return 0
    return _merge(questions, output)


def _merge(questions: list[Question], output: str) -> int:
    """Rank 0: one record per input line, in input order, written atomically; journals of
    ranks are removed once merged."""
    latest = {}
    journals = _journals(output)
    for path in journals:
        for r in _read_journal(path, repair=False):
            k = _key(r.get("id"))
            if "error" not in r or "error" in latest.get(k, r):  # an answer beats an error
                latest[k] = r
    lines, errors = [], []
    for q in questions:
        r = ({"id": q.id, "line": q.line, "error": q.error} if q.error else
             latest.get(_key(q.id), {"id": q.id, "line": q.line, "error": "not answered"}))
        if "error" in r:
            errors.append(r["error"] if r["error"].startswith("line ") else f"line {q.line}: {r['error']}")
        lines.append(json.dumps(r) + "\n")
    tmp = f"{output}.partial"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, output)
    for path in journals[1:]:
        os.remove(path)
    for e in errors:
        print(f"adapttoken batch: error: {e}", file=sys.stderr)
    print(f"adapttoken batch: wrote {output}: {len(lines) - len(errors)} answers, {len(errors)} errors",
          file=sys.stderr)
    return 1 if errors else 0
