"""The only module (with the CLI) that touches the disk: atomic writes of the report's files."""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it into place: readers never see half a file,
    and the previous file survives a crash."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(out_dir: Path, *, html: str, report_json: dict, arrays: dict[str, np.ndarray] | None,
                 assets: dict[str, bytes], self_contained: bool) -> dict:
    """Write report.html (or index.html + assets/), report.json and arrays.npz into `out_dir`.
    The HTML goes last, so a report never points at files that are not there yet."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomic(out_dir / "arrays.npz", buffer.getvalue())
    json_path = out_dir / "report.json"
    write_atomic(json_path, json.dumps(report_json, indent=2, ensure_ascii=False).encode("utf-8"))
    size = 0
    if assets:
        (out_dir / "assets").mkdir(exist_ok=True)
        for name, data in assets.items():
            target = out_dir / "assets" / name
            if not target.exists():  # names are content hashes: an existing file is the same file
                write_atomic(target, data)
            size += len(data)
    html_path = out_dir / ("report.html" if self_contained else "index.html")
    encoded = html.encode("utf-8")
    write_atomic(html_path, encoded)
    return {"html": html_path, "json": json_path, "size": size + len(encoded)}
