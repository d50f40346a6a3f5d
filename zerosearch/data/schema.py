"""The one row format every stage reads.

A QA row is ``{id, question, golden_answers, data_source, split}``: ``golden_answers`` is a
non-empty list of strings (aliases), ``data_source`` names the benchmark (``nq``,
``tinyworld_single``...). A row may also carry ``prompt``: the policy prompt as chat messages
(``[{role, content}, ...]``, the ZeroSearch/Search-R1 ``prompt`` column); the question is kept
as written (a trailing "?" stays). A file has the ``prompt`` column only when some row has
one. Corpus documents are ``{id, title, text}`` (jsonl). Files are written atomically (temp
file + rename) and deterministically (same rows -> same bytes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from zerosearch.atomic import atomic_path
from zerosearch.errors import InputError

QA_COLUMNS = ("id", "question", "golden_answers", "data_source", "split")
QA_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("golden_answers", pa.list_(pa.string())),
        ("data_source", pa.string()),
        ("split", pa.string()),
    ]
)
PROMPT_COLUMN = "prompt"  # optional: written only when some row has one
PROMPT_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


class MalformedRowError(InputError, ValueError):
    """A row that cannot be normalized; the message names the file and the row."""


def _as_answer_list(value: Any) -> list[str] | None:
    """Lists, tuples and numpy arrays of strings become a list; anything else is None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        return None
    if not all(isinstance(a, str) for a in value):
        return None
    answers = [a.strip() for a in value if a.strip()]
    return answers or None


def _as_messages(value: Any, where: str) -> list[dict[str, str]] | None:
    """A ``prompt`` value as ``[{role, content}, ...]`` (lists, tuples or numpy arrays of
    mappings with string ``role`` and ``content``); None or empty is None; anything else raises."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (list, tuple)) and all(
            isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value] or None
    raise MalformedRowError(f"{where}: 'prompt' must be a list of {{role, content}} chat messages, got {value!r}")


def normalize_row(
    raw: Mapping[str, Any],
    *,
    source: str,
    row_index: int,
    data_source: str,
    split: str,
) -> dict[str, Any]:
    """Return the normalized row or raise MalformedRowError naming ``source`` and the row."""
    where = f"{source}, row {row_index}"
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise MalformedRowError(f"{where}: missing or empty 'question'")
    if "golden_answers" not in raw:
        raise MalformedRowError(f"{where}: missing 'golden_answers'")
    answers = _as_answer_list(raw["golden_answers"])
    if answers is None:
        raise MalformedRowError(
            f"{where}: 'golden_answers' must be a non-empty list of strings, "
            f"got {raw['golden_answers']!r}"
        )
    row_id = raw.get("id")
    row_id = str(row_id) if row_id not in (None, "") else f"{data_source}-{split}-{row_index}"
    row = {
        "id": row_id,
        "question": question.strip(),
        "golden_answers": answers,
        "data_source": str(raw.get("data_source") or data_source),
        "split": split,
    }
    prompt = _as_messages(raw.get(PROMPT_COLUMN), where)
    if prompt is not None:
        row[PROMPT_COLUMN] = prompt
    return row


def normalize_rows(
    raws: Iterable[Mapping[str, Any]],
    *,
    source: str,
    data_source: str,
    split: str,
    skip_malformed: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Normalize every row; returns (rows, n_skipped). Raises on the first bad row unless
    ``skip_malformed``, in which case bad rows are counted and dropped."""
    rows: list[dict[str, Any]] = []
    skipped = 0
    for i, raw in enumerate(raws):
        try:
            rows.append(
                normalize_row(raw, source=source, row_index=i, data_source=data_source, split=split)
            )
        except MalformedRowError:
            if not skip_malformed:
                raise
            skipped += 1
    return rows, skipped


def write_qa_parquet(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write QA rows as parquet, atomically; same rows give the same bytes. The ``prompt``
    column is written when some row has a prompt (null for the rows without)."""
    path = Path(path)
    columns, schema = QA_COLUMNS, QA_SCHEMA
    if any(r.get(PROMPT_COLUMN) for r in rows):
        columns, schema = (*QA_COLUMNS, PROMPT_COLUMN), QA_SCHEMA.append(pa.field(PROMPT_COLUMN, PROMPT_TYPE))
    table = pa.Table.from_pylist([{k: r.get(k) if k == PROMPT_COLUMN else r[k] for k in columns} for r in rows],
                                 schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_qa_parquet(path: str | Path) -> list[dict[str, Any]]:
    """Read a QA parquet written by ``write_qa_parquet`` (or any file with those columns); a
    ``prompt`` column, when the file has one, comes along (rows without one: no ``prompt``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"QA file not found: {path}")
    table = pq.read_table(path)
    missing = [c for c in QA_COLUMNS if c not in table.column_names]
    if missing:
        raise MalformedRowError(f"{path}: missing columns {missing}")
    extra = [PROMPT_COLUMN] if PROMPT_COLUMN in table.column_names else []
    rows = table.select([*QA_COLUMNS, *extra]).to_pylist()
    for i, row in enumerate(rows):  # a hand-edited or foreign file: fail naming the row
        normalize_row(row, source=str(path), row_index=i, data_source=row.get("data_source") or "",
                      split=row.get("split") or "")
        if extra:
            prompt = _as_messages(row.pop(PROMPT_COLUMN), f"{path}, row {i}")
            if prompt is not None:
                row[PROMPT_COLUMN] = prompt
    return rows


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write records as jsonl (sorted keys, utf-8), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def read_jsonl(path: str | Path, *, skip_malformed: bool = False, skipped: list[int] | None = None
               ) -> list[dict[str, Any]]:
    """Read jsonl; a line that is not UTF-8 or not a JSON object raises naming the file and the
    line number, unless ``skip_malformed`` (then its number is appended to ``skipped``)."""
    path = Path(path)
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problem = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
            else:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    problem = f"not valid JSON ({e.msg})"
                else:
                    if isinstance(record, dict):
                        out.append(record)
                        continue
                    problem = f"a JSON {type(record).__name__}, not an object"
            if not skip_malformed:
                raise MalformedRowError(f"{path}, line {n}: {problem}")
            if skipped is not None:
                skipped.append(n)
    return out


def flashrag_document(contents: str) -> tuple[str, str]:
    """(title, text) of a FlashRAG / Search-R1 corpus row's ``contents``: ``"Title"`` on the
    first line (quoted), the passage after it. A single line is all text, no title."""
    head, sep, body = contents.partition("\n")
    if not sep:
        return "", contents.strip()
    return head.strip().strip('"').strip(), body.strip()


def read_corpus(path: str | Path, *, skip_malformed: bool = False, skipped: list[int] | None = None
                ) -> list[dict[str, str]]:
    """Read a jsonl corpus as ``{id, title, text}`` documents; names the bad line.

    Rows are ours (``{id, title, text}``) or FlashRAG / Search-R1's (``{id, contents}`` with
    ``contents`` = ``"Title"\npassage``, the wiki-18 corpus format), converted on read. A line
    that is not UTF-8, not JSON or has no text raises naming the file and the line, unless
    ``skip_malformed`` (its line number then goes to ``skipped``); a corpus with no documents
    left is an error either way."""
    path = Path(path)
    if not path.is_file():
        raise MalformedRowError(f"corpus file not found: {path}")
    lines: list[int] = []
    docs = read_jsonl(path, skip_malformed=skip_malformed, skipped=lines)
    kept = []
    for n, d in enumerate(docs, start=1):
        if "text" not in d and isinstance(d.get("contents"), str):
            d["title"], d["text"] = flashrag_document(d.pop("contents"))
        if not isinstance(d.get("text"), str) or not d["text"].strip():
            if not skip_malformed:
                raise MalformedRowError(f"{path}, document {n}: missing or empty 'text' (or FlashRAG 'contents')")
            lines.append(-n)  # a document number, not a line: JSON was fine, the text was not
            continue
        d.setdefault("title", "")
        d["id"] = str(d["id"]) if d.get("id") not in (None, "") else str(n - 1)
        kept.append(d)
    if skipped is not None:
        skipped.extend(lines)
    if not kept:
        why = f" ({len(lines)} malformed line(s) skipped)" if lines else ""
        raise MalformedRowError(f"{path}: the corpus holds no documents{why}")
    return kept
