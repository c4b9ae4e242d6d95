"""The only module (with the CLI) that touches the disk: atomic writes of the report's files."""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np


def _write_temp(path: Path, data: bytes) -> str:
    """Write `data` to a temporary file beside `path`; return its name (removed again on error)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: Path, data: bytes) -> None:
    """Readers never see half a file, and the previous file survives a crash."""
    os.replace(_write_temp(path, data), path)


def write_report(out_dir: Path, *, html: str, report_json: dict, arrays: dict[str, np.ndarray] | None,
                 assets: dict[str, bytes], self_contained: bool) -> dict:
    """Write report.html (or index.html + assets/), report.json and arrays.npz into `out_dir`.

    Every file is first written in full under a temporary name; only then are they renamed into place,
    the HTML last. A crash before the renames leaves the previous report as it was."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[tuple[Path, bytes]] = []
    if arrays is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        files.append((out_dir / "arrays.npz", buffer.getvalue()))
    json_path = out_dir / "report.json"
    files.append((json_path, json.dumps(report_json, indent=2, ensure_ascii=False).encode("utf-8")))
    if assets:
        (out_dir / "assets").mkdir(exist_ok=True)
        # names are content hashes: an existing file is already the same file
        files += [(out_dir / "assets" / name, data) for name, data in assets.items()
                  if not (out_dir / "assets" / name).exists()]
    html_path = out_dir / ("report.html" if self_contained else "index.html")
    files.append((html_path, html.encode("utf-8")))
    pending: list[tuple[str, Path]] = []
    try:
        for path, data in files:
            pending.append((_write_temp(path, data), path))
    except BaseException:
        for tmp, _ in pending:
            os.unlink(tmp)
        raise
    for tmp, path in pending:
        os.replace(tmp, path)
    _remove_stale(out_dir, keep={path for path, _ in files} | {out_dir / "assets" / name for name in assets})
    size = len(files[-1][1]) + sum(len(data) for data in assets.values())  # what a reader downloads
    return {"html": html_path, "json": json_path, "size": size}


ASSET_NAME = re.compile(r"^[0-9a-f]{20}\.png$")  # render.py names assets by content hash


def _remove_stale(out_dir: Path, keep: set[Path]) -> None:
    """Once the new report is in place, remove what an earlier build wrote and this one did not: the other
    output mode's HTML, an old arrays.npz, assets no page refers to. Only reportgen's own file names."""
    ours = [out_dir / "report.html", out_dir / "index.html", out_dir / "arrays.npz"]
    assets = out_dir / "assets"
    if assets.is_dir():
        ours += [path for path in assets.iterdir() if ASSET_NAME.match(path.name)]
    for path in ours:
        if path not in keep and path.is_file():
            path.unlink()
    if assets.is_dir() and not any(assets.iterdir()):
        assets.rmdir()
