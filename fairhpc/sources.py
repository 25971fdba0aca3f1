"""Where rows come from: a local file (JSONL, JSON, Parquet, CSV, each optionally gzipped), a dataset
directory or a hub dataset.  The one place that tells a local path from a hub name and reads rows;
training data, evaluation data, benchmarks and the workflow's data preparation all read through it.

Rows are yielded as :class:`Row` with ``where`` ("FILE: line N" for JSONL/CSV, 1-based; "FILE: row N"
for JSON arrays, Parquet and datasets, 0-based) for error messages.  A row that cannot even be read
(invalid UTF-8 or JSON on one line) is yielded with ``error`` set, so that ``bad_rows: skip`` can drop
it; a file that cannot be read at all raises :class:`~fairhpc.errors.DataError` at once.
Each line of a JSONL or CSV file is decoded on its own, so an invalid UTF-8 byte is reported at its line.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairhpc.errors import DataError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
GZIP_SUFFIX = ".gz"
DATA_SUFFIXES = FILE_SUFFIXES + tuple(s + GZIP_SUFFIX for s in FILE_SUFFIXES)
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")
# what a data source may be, for the messages that refuse one
ACCEPTED = ("accepted: a .jsonl, .json, .parquet or .csv file (UTF-8, optionally .gz), a directory of such "
            "files or one written by datasets' save_to_disk, or a hub dataset name (owner/name)")
_BOM = b"\xef\xbb\xbf"


@dataclass
class Row:
    where: str                       # for messages: "FILE: line N", "FILE: row N", "NAME[split]: row N"
    source: str                      # compact form for records: "FILE:N", "FILE:row N", "NAME[split]:row N"
    value: Any = None
    error: DataError | None = None   # a row that could not be read (invalid UTF-8 / JSON)


def is_local_path(source: str) -> bool:
    """Whether ``source`` names a local file or directory (existing or not) rather than a hub name.

    Local: it exists; or it has a data-file suffix; or it starts with ".", "/" or "~"; or it has more
    path parts than a hub id (``name`` or ``owner/name``); or its first part is an existing directory.
    """
    s = str(source)
    p = Path(s).expanduser()
    if p.exists() or s.endswith(DATA_SUFFIXES) or s.startswith((".", "/", "~")):
        return True
    return _HUB_NAME.fullmatch(s) is None or ("/" in s and Path(s.split("/", 1)[0]).is_dir())


def file_kind(path: str | Path) -> str | None:
    """"jsonl" / "json" / "parquet" / "csv" from the suffix (a trailing .gz ignored), None otherwise."""
    name = str(path)
    name = name.removesuffix(GZIP_SUFFIX)
    return next((s[1:] for s in FILE_SUFFIXES if name.endswith(s)), None)


def iter_source(source: str, split: str | None = "train", **hub_kwargs) -> Iterator[Row]:
    """Rows of a local data file, a dataset directory or a hub dataset (``split`` applies to the last two;
    None = every split, its name in ``row["_split"]``).  Whole-file problems raise DataError here."""
    kind = check_local_source(source)
    if kind is not None:
        return _READERS[kind](Path(str(source)).expanduser())
    return _iter_hub(str(source), split, **hub_kwargs)


def check_local_source(source: str) -> str | None:
    """Refuse, without reading rows, a local source that cannot be one: a missing path, a directory that
    save_to_disk did not write, an empty file, a file of an unknown type (DataError naming the path and
    what is accepted).  Returns the file kind (``"jsonl"``, ...) of a data file, None for a dataset
    directory or a hub name."""
    source = str(source)
    p = Path(source).expanduser()
    kind = file_kind(source)
    if kind is not None:
        if not p.exists():
            raise DataError(f"{source}: no such file; {ACCEPTED}")
        if p.is_dir():
            raise DataError(f"{source}: a directory, not a data file; {ACCEPTED}")
        if not p.is_file():
            raise DataError(f"{source}: not a regular file; {ACCEPTED}")
        if p.stat().st_size == 0:
            raise DataError(f"{source}: empty file (no rows); {ACCEPTED}")
        return kind
    if p.is_file():
        raise DataError(f"{source}: unknown file type; {ACCEPTED}")
    if not p.exists() and is_local_path(source):
        raise DataError(f"{source}: no such file or directory; {ACCEPTED}")
    if p.is_dir() and not _is_saved_dataset(p) and not _holds_data_files(p):
        raise DataError(f"{source}: a directory with no data files in it and not written by save_to_disk; "
                        f"{ACCEPTED}")
    return None


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists()


def _holds_data_files(p: Path) -> bool:
    """Whether a directory holds (at any depth) a file that ``datasets`` reads as a split."""
    return any(f.is_file() and f.name.endswith(DATA_SUFFIXES + (".arrow",)) for f in p.rglob("*"))


def iter_rows(source: str, split: str | None = None, **hub_kwargs) -> Iterator[tuple[str, dict]]:
    """(where, row object) of every row of a source; the first unreadable row or non-object raises.
    A hub name with ``split=None`` gives every split (see :func:`iter_source`)."""
    if split is None and is_local_path(source):
        split = "test"  # a local dataset directory: its test split
    for r in iter_source(source, split, **hub_kwargs):
        if r.error is not None:
            raise r.error
        value = dict(r.value) if hasattr(r.value, "keys") and not isinstance(r.value, dict) else r.value
        if not isinstance(value, dict):
            raise DataError(f"{r.where}: expected an object, got {type(value).__name__}", "not_an_object")
        yield r.where, value


# ------------------------------------------------------------------------------------------ files
def _open_bytes(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(GZIP_SUFFIX) else open(path, "rb")


_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _read_all(path: Path) -> bytes:
    try:
        with _open_bytes(path) as f:
            return f.read()
    except _GZIP_ERRORS as e:
        raise DataError(f"{path}: cannot read: corrupt or truncated gzip file ({e or type(e).__name__}); "
                        f"{ACCEPTED}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _lines(path: Path) -> Iterator[tuple[int, str | None, UnicodeDecodeError | None]]:
    """(line number, text, None) or (line number, None, the decode error) of every line, read as bytes
    and decoded one line at a time (so that the line of a bad byte is exact and the rest stays readable)."""
    lineno = 0
    try:
        with _open_bytes(path) as raw:
            for lineno, line in enumerate(raw, 1):
                if lineno == 1:  # a UTF-8 byte-order mark (some editors write one) is not part of the text
                    line = line.removeprefix(_BOM)
                try:
                    yield lineno, line.decode("utf-8"), None
                except UnicodeDecodeError as e:
                    yield lineno, None, e
    except _GZIP_ERRORS as e:
        after = f" after line {lineno}" if lineno else ""
        raise DataError(f"{path}: cannot read{after}: corrupt or truncated gzip file "
                        f"({e or type(e).__name__}); {ACCEPTED}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _utf8_error(where: str, e: UnicodeDecodeError) -> DataError:
    return DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start} of the line)", "invalid_utf8")


def _iter_jsonl(path: Path) -> Iterator[Row]:
    for lineno, line, bad in _lines(path):
        where, src = f"{path}: line {lineno}", f"{path}:{lineno}"
        if bad is not None:
            yield Row(where, src, error=_utf8_error(where, bad))
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            yield Row(where, src, error=DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})",
                                                  "invalid_json"))
            continue
        yield Row(where, src, value)


def _iter_csv(path: Path) -> Iterator[Row]:
    """Records of a CSV file with a header line; ``where`` is the line a record starts on (a quoted field
    may span lines).  A record with a line that is not UTF-8 is yielded as an error at that line."""
    bad: dict[int, UnicodeDecodeError] = {}

    def text():
        for lineno, line, err in _lines(path):
            if err is not None:
                bad[lineno] = err
                line = ""
            yield line

    reader = csv.reader(text())
    try:
        header = next(reader)
    except StopIteration:
        return
    if 1 in bad:
        raise _utf8_error(f"{path}: line 1 (the header)", bad[1])
    start = reader.line_num + 1
    for rec in reader:
        end = reader.line_num
        where, src = f"{path}: line {start}", f"{path}:{start}"
        broken = [n for n in range(start, end + 1) if n in bad]
        if broken:
            yield Row(where, src, error=_utf8_error(f"{path}: line {broken[0]}", bad[broken[0]]))
        elif len(rec) > len(header):
            raise DataError(f"{where}: more fields than the header's {len(header)}")
        elif rec:
            yield Row(where, src, {k: (rec[i] if i < len(rec) else None) for i, k in enumerate(header)})
        start = end + 1


def _iter_json(path: Path) -> Iterator[Row]:
    data = _read_all(path).removeprefix(_BOM)
    try:
        value = json.loads(data)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: line {line}: not UTF-8 text ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(value, dict):  # {"data": [...]} / {"rows": [...]}
        value = value.get("data", value.get("rows"))
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON array of row objects (or JSON Lines, one object per line)")
    for i, row in enumerate(value):
        yield Row(f"{path}: row {i}", f"{path}:row {i}", row)


def _iter_parquet(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.name.endswith(GZIP_SUFFIX):
            table = pq.read_table(pa.BufferReader(_read_all(path)))
        else:
            table = pq.read_table(path)
    except DataError:
        raise
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read Parquet: {e}") from None
    for i, row in enumerate(table.to_pylist()):
        yield Row(f"{path}: row {i}", f"{path}:row {i}", row)


_READERS = {"jsonl": _iter_jsonl, "json": _iter_json, "parquet": _iter_parquet, "csv": _iter_csv}


# -------------------------------------------------------------------------------------------- hub
def _load_hub(name: str, split: str | None, **kwargs):
    """A Dataset (or, with split None, a DatasetDict) of a hub name or a local dataset directory."""
    import datasets

    p = Path(name)
    try:
        if p.is_dir() and _is_saved_dataset(p):
            ds = datasets.load_from_disk(str(p))   # written by save_to_disk
            if isinstance(ds, datasets.DatasetDict) and split is not None:
                if split not in ds:
                    raise DataError(f"{name}: no split {split!r}; splits: {', '.join(ds)}")
                ds = ds[split]
            return ds
        return datasets.load_dataset(name, split=split, **kwargs)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 -- datasets raises many kinds; the user needs the name and the cause
        cause = e.__cause__ or e.__context__
        why = f"{type(e).__name__}: {e}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
        raise DataError(f"{name}: cannot load dataset split {split!r}: {why:.600}") from None


def _iter_hub(name: str, split: str | None, **kwargs) -> Iterator[Row]:
    """Rows of a hub dataset through ``datasets``; ClassLabel columns are decoded to their names (the hub
    CrowS-Pairs stores ints).  ``split=None``: every split, in order, each row's split in ``_split``."""
    import datasets

    loaded = _load_hub(name, split, **kwargs)
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(split, loaded)]
    for split_name, ds in parts:
        labels = {k: f for k, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
        for i, row in enumerate(ds):
            for k, f in labels.items():
                if isinstance(row.get(k), int):
                    row[k] = f.int2str(row[k])
            if split is None:
                row["_split"] = split_name
            yield Row(f"{name}[{split_name}]: row {i}", f"{name}[{split_name}]:row {i}", row)
