"""Loader for LongBench-style multi-document QA files (HotpotQA, 2WikiMultihopQA, MuSiQue).

Each record has `input` (the question), `context` (the passages, "Passage N:" headed in
LongBench's files) and `answers` (a list). Passages become the question's documents.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from app.bench.generator import Question

_PASSAGE_HEAD = re.compile(r"(?:^|\n)\s*Passage \d+:\s*\n")


class DatasetError(ValueError):
    """The file is not a LongBench-style QA file this loader understands."""


def split_passages(context: str | list) -> list[str]:
    """The passages of a record's context, in order."""
    if isinstance(context, list):
        return [str(p).strip() for p in context if str(p).strip()]
    parts = [p.strip() for p in _PASSAGE_HEAD.split(context)]
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        parts = [p.strip() for p in re.split(r"\n\s*\n", context) if p.strip()]
    return parts


def _records(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{path}:{number}: not JSON: {error}") from error
        return records


def load_longbench(path: str | Path, limit: int | None = None, max_docs: int | None = None) -> list[Question]:
    """Questions from a LongBench JSON or JSONL file on disk; nothing is downloaded."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"no dataset file at {path}")
    questions = []
    for number, record in enumerate(_records(path)):
        missing = {"input", "context", "answers"} - set(record)
        if missing:
            raise DatasetError(f"{path}: record {number} lacks {', '.join(sorted(missing))}")
        passages = split_passages(record["context"])
        if max_docs:
            passages = passages[:max_docs]
        answers = record["answers"] if isinstance(record["answers"], list) else [record["answers"]]
        kind = "two-hop" if record.get("dataset") in {"hotpotqa", "2wikimqa", "musique"} else "dataset"
        questions.append(Question(str(record["input"]), tuple(passages), tuple(map(str, answers)), kind))
        if limit and len(questions) >= limit:
            break
    if not questions:
        raise DatasetError(f"{path} holds no records")
    return questions
