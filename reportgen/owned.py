"""Which files of a folder reportgen wrote, and whether a build may write there: read before any work, so
that a build never overwrites or removes a file of the user's.

A build records the files it wrote in `.reportgen-manifest.json` in the output folder (relative POSIX paths).
In a folder an older reportgen wrote (no manifest), only the files that show it count as reportgen's: report.json
with `"versions": {"reportgen": ...}`, a page with reportgen's generator tag, an asset whose name is its hash.
`reportgen compare` keeps a manifest of its own (`.reportgen-compare.json`) by the same rule.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import ReportgenError

MANIFEST = ".reportgen-manifest.json"
ASSET_NAME = re.compile(r"^[0-9a-f]{20}\.png$")  # render.py names assets by content hash
GENERATOR_TAG = b'<meta name="generator" content="reportgen '  # in every page a build writes


def owned_files(out_dir: Path, manifest: str = MANIFEST,
                legacy: Callable[[Path], set[str]] | None = None) -> set[str]:
    """The relative paths (POSIX) in `out_dir` that an earlier build (or `compare`: its own `manifest`) wrote: the
    manifest's list, or, for a folder an older reportgen wrote without a manifest, the files that show it
    (`legacy`; a build's: a report.json with reportgen's versions, a page with reportgen's generator tag, an asset
    named by its hash)."""
    path = out_dir / manifest
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            files = data["files"]
            if isinstance(files, list) and all(isinstance(f, str) for f in files):
                return {f for f in files if safe_relative(f)}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return set()  # unreadable: nothing counts as ours (we never delete on a guess)
    return (legacy or _legacy_owned)(out_dir)


def _legacy_owned(out_dir: Path) -> set[str]:
    """A folder written before manifests: the very files that show reportgen wrote them (a user's index.html
    beside a report.json of ours stays the user's; so does an arrays.npz, which carries no such sign)."""
    try:
        legacy = json.loads(head(out_dir / "report.json", 2**26).decode("utf-8"))
        ours = isinstance(legacy, dict) and isinstance(legacy.get("versions"), dict) \
            and "reportgen" in legacy["versions"]
    except (OSError, ValueError):
        ours = False
    if not ours:
        return set()
    names = {"report.json"}
    for page in ("report.html", "index.html"):
        with contextlib.suppress(OSError):
            if GENERATOR_TAG in head(out_dir / page, 4096):
                names.add(page)
    assets = out_dir / "assets"
    if assets.is_dir() and not assets.is_symlink():
        for p in assets.iterdir():
            with contextlib.suppress(OSError):
                if ASSET_NAME.match(p.name) and _regular(p) and p.stat().st_size <= 2**26 \
                        and hashlib.sha256(p.read_bytes()).hexdigest()[:20] == p.stem:
                    names.add(f"assets/{p.name}")
    return names


def _regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def head(path: Path, limit: int) -> bytes:
    """The first `limit` bytes of a plain file (OSError for a link, a folder, a device)."""
    if not _regular(path):
        raise OSError(f"{path} is not a plain file")
    with open(path, "rb") as handle:
        return handle.read(limit)


def safe_relative(name: str) -> bool:
    """A manifest entry names a file inside the output folder (a tampered manifest deletes nothing outside)."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "\\" not in name


def planned_files(*, self_contained: bool, save_arrays: bool, records: bool = True) -> list[str]:
    """The fixed file names a build writes (assets, named by content, come on top in static-site mode)."""
    names = ["report.json", "report.html" if self_contained else "index.html"]
    return names + (["images.jsonl"] if records else []) + (["arrays.npz"] if save_arrays else [])


def check_out_dir(out_dir: Path, names, owned: set[str] | None = None, assets: dict[str, bytes] | None = None,
                  key: str = "output.dir") -> None:
    """Refuse (ReportgenError) to write into `out_dir` when a file the build would write there exists and no
    earlier build of reportgen wrote it. Cheap: call it before the analysis runs (nothing is written)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    if owned is None:
        owned = owned_files(out_dir)
    found = [name for name in names if name not in owned and _present(out_dir / name)]
    found += [rel for rel, data in ((f"assets/{name}", data) for name, data in (assets or {}).items())
              if rel not in owned and _present(out_dir / rel) and not same_bytes(out_dir / rel, data)]
    if found:
        raise ReportgenError(
            f"`{key}`: {out_dir / found[0]} exists and reportgen did not write it; a build never overwrites your "
            f"files. Choose another folder with `-o DIR`{'' if key == '-o' else f' (or `{key}`)'}, or remove "
            f"{found[0]}.")


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def same_bytes(path: Path, data: bytes) -> bool:
    try:
        return _regular(path) and path.stat().st_size == len(data) \
            and path.read_bytes() == data
    except OSError:
        return False


def check_output_dir(out_dir: Path, key: str = "output.dir") -> None:
    """The output folder must be creatable and writable; checked before anything runs, by writing (and
    removing) a temporary file in the folder or its nearest existing parent: nothing is left behind."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportgenError(f"`{key}`: {out_dir} exists and is not a folder.")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    problem = None if probe.is_dir() else "not a folder"
    if problem is None:
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
    if problem:
        raise ReportgenError(f"`{key}`: cannot write to {out_dir} ({probe}: {problem}). "
                             "Choose another folder with `-o DIR` or `output.dir`.")
