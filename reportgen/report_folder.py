"""Reading a report folder that may be a stranger's (`reportgen site`, `reportgen compare`): what is read is
bounded (file sizes, JSON depth, the arrays' sizes and types, picture sizes), and anything that is not as a build
writes it is one message naming the folder, never a traceback.

A folder is read inside `reading(folder)`: an error of the kinds that malformed data raises there (a key that
is missing, a value of another type, a number that is not one, a broken zip) becomes that message.
"""
from __future__ import annotations

import contextlib
import json
import zipfile
from pathlib import Path

import numpy as np

from .errors import ReportgenError

JSON_LIMIT = 256 * 2**20  # bytes of report.json or images.jsonl (a build over 200 000 images writes ~200 MB)
PICTURE_PIXELS = 64 * 2**20  # a thumbnail's source picture: a report's pictures are a few megapixels at most

MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, EOFError,
             zipfile.BadZipFile, OSError)  # json, float(), dict access, np.load, zip and PIL errors


@contextlib.contextmanager
def reading(folder: Path):
    """Turn what malformed or tampered data raises into one ReportgenError naming `folder`."""
    try:
        yield
    except ReportgenError:
        raise
    except MALFORMED as exc:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ReportgenError(f"`{folder}` is not a report folder as reportgen writes it (changed, or written by "
                             f"something else): {type(exc).__name__}: {text}. Build it again.") from None


def plain_file(path: Path, limit: int) -> Path:
    """`path`, a plain file (no device, FIFO or folder) of at most `limit` bytes; else a ReportgenError."""
    if not path.is_file():
        raise ReportgenError(f"`{path}` is not a plain file.")
    if path.stat().st_size > limit:
        raise ReportgenError(f"`{path}` is larger ({path.stat().st_size:,} bytes) than a report's can be "
                             f"({limit:,}).")
    return path


def read_json(path: Path) -> dict:
    """report.json: a JSON object."""
    return json_object(plain_file(path, JSON_LIMIT).read_bytes(), path)


def json_object(raw: bytes, path: Path) -> dict:
    """report.json's bytes (read already, to be copied as they are) as the JSON object they must hold."""
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise ReportgenError(f"`{path}` holds no JSON object: it is not a report.json reportgen wrote.")
    return data


def metrics(data: dict) -> dict[str, float]:
    """report.json's headline metrics, each a finite number."""
    return {str(key): number(value, f"metric `{key}`") for key, value in (data.get("metrics") or {}).items()}


def read_records(path: Path) -> list[dict]:
    """images.jsonl: one JSON object per line, each with its image's `name`."""
    records = []
    for line_no, line in enumerate(plain_file(path, JSON_LIMIT).read_bytes().decode("utf-8").splitlines(), 1):
        if line.strip():
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("name"), str):
                raise ReportgenError(f"`{path}`, line {line_no}: not an image's record (an object with its `name`).")
            records.append(record)
    return records


def number(value, what: str) -> float:
    """A finite number read from a report (a bool or a string is not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ReportgenError(f"{what} is `{str(value)[:40]}`, not a finite number.")
    return float(value)


def member(npz, key: str, input_size: tuple[int, ...]) -> np.ndarray:
    """The map `key` of an arrays.npz (opened with `allow_pickle=False`): no larger when unpacked than the
    model's input in float64, and numbers."""
    size = npz.zip.getinfo(f"{key}.npy").file_size
    if size > 8 * int(np.prod(input_size or (1,))) + 4096:
        raise ReportgenError(f"arrays.npz: `{key}` unpacks to {size:,} bytes, more than a map of the model's input "
                             f"{list(input_size)} can be.")
    values = npz[key]
    if values.dtype.kind not in "fiu" or values.ndim not in (2, 3) or values.shape[-2:] != tuple(input_size[-2:]):
        raise ReportgenError(f"arrays.npz: `{key}` is a {values.dtype} array of shape {list(values.shape)}, not a "
                             f"map of the model's input {list(input_size)}.")
    return values
