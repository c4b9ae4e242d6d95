"""The only module (with the CLI) that touches the disk: atomic writes of the report's files.

Ownership (`owned`): a build records the files it wrote in `.reportgen-manifest.json` in the output folder. A
later build removes only files that manifest lists and it no longer writes, and it refuses to overwrite a file
it would write that no manifest lists (the user's own `index.html`, say).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from .errors import WriteError
from .owned import MANIFEST, check_out_dir, owned_files, planned_files, safe_relative, same_bytes



_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_TEMPORARY = re.compile(r"^\..+\.(\d+)@([A-Za-z0-9-]+)\.[^.]*\.tmp$")  # ._name_.<pid>@<host>.<random>.tmp


def _temp_prefix(name: str) -> str:
    """The start of a temporary file's name: the file it becomes, and the process writing it (so that a later
    build can tell one a killed build left from one a running build is writing)."""
    return f".{name}.{os.getpid()}@{_HOST}."


def remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary files of builds that were killed before they could (SIGKILL, a power cut): ours
    by their name, written on this host by a process that is gone. A running build's are left alone."""
    for where in (folder, folder / "assets"):
        if not where.is_dir() or where.is_symlink():
            continue
        for path in where.iterdir():
            found = _TEMPORARY.match(path.name)
            if found and found[2] == _HOST and not _alive(int(found[1])) and path.is_file() \
                    and not path.is_symlink():
                _unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _write_temp(path: Path, data: bytes | Iterable[bytes]) -> str:
    """Write `data` (bytes, or pieces of them written as they come) to a temporary file beside `path`; return
    its name (removed again on error)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
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


def write_npz(path: Path, arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """An npz of (key, array) pairs (float32, deflated) written one entry at a time under a temporary name and
    renamed into place, as `write_atomic` does: never all arrays in memory, never half a file, a link at `path`
    replaced rather than written through."""
    tmp = _temp_zip(path.parent, path.name)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as target:
            for key, value in arrays:
                _add_array(target, key, value)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _add_array(target: zipfile.ZipFile, key: str, value: np.ndarray) -> None:
    with target.open(f"{key}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(value, dtype=np.float32), allow_pickle=False)


class ArraysWriter:
    """`arrays.npz` written entry by entry as a build produces them (one `.npy` member per key, deflated,
    as `np.savez_compressed` writes them), into a temporary file in the output folder: the build never holds
    every array at once. `write_report` renames it into place with the rest of the report; `discard()` (or
    leaving the `with` block on an error) removes it, and the output folder if this writer made it.

    `drop(keys)` takes entries back (a stage that failed part-way): they are left out when the file is
    finished. Under torchrun every rank writes a shard of its own (`shard`: the rank) into the output folder (a
    shared file system) and rank 0 copies the others' entries into its file (`merge_shards`)."""

    def __init__(self, out_dir: Path, shard: int | None = None):
        out_dir = Path(out_dir)
        self.made = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = _temp_zip(out_dir, "arrays.npz" if shard is None else f"arrays.npz.rank{shard}")
        self._zip: zipfile.ZipFile | None = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED,
                                                             allowZip64=True)
        self.keys: dict[str, None] = {}  # written so far, in order
        self._dropped: set[str] = set()

    def add(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Write each array (as float32) under its key; a key written before is a bug, not a user error."""
        for key, value in arrays.items():
            if key in self.keys:
                raise ValueError(f"arrays.npz: the key {key!r} is written twice")
            try:
                _add_array(self._zip, key, value)
            except OSError as exc:  # a full disk: the build stops (a stage did nothing wrong)
                raise WriteError(f"`output.save_arrays`: writing arrays.npz in {Path(self.path).parent} failed "
                                 f"({exc.strerror or exc}); the previous report, if any, is unchanged.") from None
            self.keys[key] = None

    def drop(self, keys: Iterable[str]) -> None:
        self._dropped.update(keys)

    def finish(self) -> str:
        """Close the file (without the dropped entries) and return its temporary name."""
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            if self._dropped & set(self.keys):
                self._rewrite([k for k in self.keys if k not in self._dropped])
        return self.path

    def _rewrite(self, keep: Iterable[str]) -> None:
        tmp = _temp_zip(Path(self.path).parent, "arrays.npz")
        try:
            with zipfile.ZipFile(self.path) as source, \
                    zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as target:
                for key in keep:
                    _copy_member(source, target, f"{key}.npy")
        except BaseException:
            _unlink(tmp)
            raise
        os.replace(tmp, self.path)
        self.keys = {k: None for k in self.keys if k not in self._dropped}

    def merge_shards(self, group) -> None:
        """Under torchrun (`group`: a `dist.Group`): every rank closes its shard, rank 0 copies the entries of
        the others' shards into its own file and removes them. Without torchrun: nothing to do."""
        if group.size == 1:
            return
        from . import dist

        paths = dist.gather(group, None if group.root else self.finish())
        if not group.root:
            return
        for path in paths[1:]:
            try:
                with zipfile.ZipFile(path) as source:
                    for member in source.namelist():
                        key = member[:-len(".npy")]
                        if key in self.keys:
                            raise ValueError(f"arrays.npz: the key {key!r} is written by two ranks")
                        _copy_member(source, self._zip, member)
                        self.keys[key] = None
            finally:
                _unlink(path)

    def discard(self) -> None:
        if self._zip is not None:
            with contextlib.suppress(Exception):
                self._zip.close()
            self._zip = None
        _unlink(self.path)
        for folder in self.made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty

    def __enter__(self) -> "ArraysWriter":
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            self.discard()


def _temp_zip(folder: Path, name: str) -> str:
    """An empty temporary file for an arrays.npz in `folder`, readable as the report's other files are
    (mkstemp makes it 0600)."""
    fd, path = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(name), suffix=".tmp")
    os.close(fd)
    os.chmod(path, 0o644)
    return path


def _copy_member(source: zipfile.ZipFile, target: zipfile.ZipFile, name: str) -> None:
    """One member of an open zip copied into another (decompressed and compressed again, as zipfile can)."""
    with source.open(name) as src, target.open(name, "w", force_zip64=True) as dst:
        shutil.copyfileobj(src, dst)


def write_report(out_dir: Path, *, html: str, report_json: dict,
                 arrays: dict[str, np.ndarray] | ArraysWriter | None, assets: dict[str, bytes],
                 self_contained: bool, records: Iterable[dict] | None = None) -> dict:
    """Write report.html (or index.html + assets/), report.json, images.jsonl (`records`, one JSON line per
    image, made and written a few at a time) and arrays.npz into `out_dir`. `arrays`: a mapping written here,
    or an `ArraysWriter` that already wrote them (its file is renamed into place).

    Raises ReportgenError (nothing written) when one of those files exists and reportgen did not write it.
    Every file is first written in full under a temporary name; only then are they renamed into place, the
    HTML last. Any error or KeyboardInterrupt before the last rename undoes the renames already made: the
    previous report is left as it was, and no temporary file stays behind. Then what the previous build
    wrote and this one does not is removed (only files the previous manifest lists), and the manifest
    is rewritten."""
    out_dir = Path(out_dir)
    owned = owned_files(out_dir)
    if out_dir.is_dir():  # every build ends here: it tidies up after one that was killed
        remove_stale_temporaries(out_dir)
    names = planned_files(self_contained=self_contained, save_arrays=arrays is not None, records=records is not None)
    check_out_dir(out_dir, names, owned, assets)
    made = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # removed again if the write fails
    if assets and (out_dir / "assets") not in made and not (out_dir / "assets").exists():
        made.insert(0, out_dir / "assets")
    try:
        result = _write_report(out_dir, owned, html=html, report_json=report_json, arrays=arrays, assets=assets,
                               self_contained=self_contained, records=records)
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        raise
    return result


def _write_report(out_dir: Path, owned: set[str], *, html, report_json, arrays, assets, self_contained,
                  records) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, bytes | Iterable[bytes]]] = []
    prewritten: list[tuple[str, Path]] = []  # (temporary file, its place): written before, renamed with the rest
    if isinstance(arrays, ArraysWriter):
        prewritten.append((arrays.finish(), out_dir / "arrays.npz"))
    elif arrays is not None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        files.append(("arrays.npz", buffer.getvalue()))
    files.append(("report.json", json.dumps(report_json, indent=2, ensure_ascii=False).encode("utf-8")))
    if records is not None:
        files.append(("images.jsonl", _json_lines(records)))
    if assets:
        (out_dir / "assets").mkdir(exist_ok=True)
    # names are content hashes: a file already there with these bytes is already the same file
    new_assets = [name for name, data in assets.items() if not same_bytes(out_dir / "assets" / name, data)]
    files += [(f"assets/{name}", assets[name]) for name in new_assets]
    html_name = "report.html" if self_contained else "index.html"
    html_bytes = html.encode("utf-8")
    files.append((html_name, html_bytes))
    # ours: what this build writes, and the assets an earlier build wrote with the same bytes (an identical
    # copy the user put there stays the user's: it is neither claimed nor ever removed)
    written = {name for name, _ in files} | {f"assets/{name}" for name in assets if f"assets/{name}" in owned}
    written |= {path.name for _, path in prewritten}

    # while the files move into place, the manifest lists both the old and the new files: a crash at any
    # point leaves every file of ours listed (a listed file that does not exist is harmless)
    files.insert(0, (MANIFEST, _manifest(owned | written)))
    pending: list[tuple[str, Path]] = []
    try:
        for name, data in files:
            pending.append((_write_temp(out_dir / name, data), out_dir / name))
            if name == MANIFEST:
                pending += prewritten  # renamed after the manifest that lists them, before the page
    except BaseException:
        for tmp, _ in pending:
            _unlink(tmp)
        raise
    _commit(pending)
    with _interrupts_deferred():  # the new report is in place: tidying up is not interrupted
        _remove_stale(out_dir, owned - written)
        write_atomic(out_dir / MANIFEST, _manifest(written))
    size = len(html_bytes) + sum(len(data) for data in assets.values())  # what a reader downloads
    return {"html": out_dir / html_name, "json": out_dir / "report.json", "size": size,
            "files": sorted(written)}


def _json_lines(records: Iterable[dict], per_piece: int = 1000) -> Iterator[bytes]:
    """One JSON line per record, `per_piece` lines a piece: never the whole file in memory."""
    lines: list[str] = []
    for record in records:
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
        if len(lines) == per_piece:
            yield "".join(lines).encode("utf-8")
            lines = []
    yield "".join(lines).encode("utf-8")


def _manifest(files: set[str]) -> bytes:
    from .version import __version__

    return json.dumps({"reportgen": __version__, "files": sorted(files)}, indent=1).encode("utf-8")


def _commit(pending: list[tuple[str, Path]]) -> None:
    """Rename every temporary file into place, or (on an error) none: the files replaced so far are put back
    from hard-linked (or copied) backups and the new ones removed. Ctrl-C and SIGTERM are held off from the
    first rename to the last (a few system calls), so that no interrupt falls between a rename and its record:
    a signal may stop the build before the switch, never in the middle of it."""
    backups: dict[Path, str | None] = {}
    try:
        for _, path in pending:
            backups[path] = _backup(path)
    except BaseException:
        for backup in backups.values():
            if backup is not None:
                _unlink(backup)
        raise
    interrupted = None
    with _interrupts_deferred() as caught:
        done: list[Path] = []
        try:
            for tmp, path in pending:
                os.replace(tmp, path)
                done.append(path)
            if caught:  # a signal came during the switch: undone as a whole, then the signal takes effect
                interrupted = caught[0]
                raise KeyboardInterrupt
        except BaseException:
            for path in reversed(done):
                backup = backups.get(path)
                if backup is not None:
                    os.replace(backup, path)
                    backups[path] = None
                else:
                    _unlink(path)
            for tmp, path in pending:
                if path not in done:
                    _unlink(tmp)
            if interrupted is None:
                raise
        finally:
            for backup in backups.values():
                if backup is not None:
                    _unlink(backup)
    if interrupted is not None:
        signal.raise_signal(interrupted)  # with the handler the build had: KeyboardInterrupt, or the CLI's SIGTERM
        raise KeyboardInterrupt  # a handler that ignores it: the report is still not written


def _backup(path: Path) -> str | None:
    """A second name for the file now at `path` (None when there is none), to put it back if need be."""
    if not path.is_file() or path.is_symlink():
        return None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name), suffix=".tmp")
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here: a copy
            shutil.copy2(path, tmp)
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold off Ctrl-C (SIGINT) and SIGTERM for the few file operations that must not stop half-way: the
    renames that switch the report (and putting the previous one back), or tidying up once the new one is in
    place. Yields the list of signals that came meanwhile, for the caller to act on (the commit undoes the
    switch and raises the signal; the tidying up, done once the report is written, lets it go)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught  # signals reach the main thread only
        return
    previous = {}
    try:
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, lambda signum, frame: caught.append(signum))
    except (ValueError, OSError):
        pass
    try:
        yield caught
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def _remove_stale(out_dir: Path, stale: set[str]) -> None:
    """Remove what the previous build wrote and this one did not (the other output mode's HTML, an old
    arrays.npz, assets the page no longer uses). Only files a manifest lists: never a file of the user's."""
    for name in sorted(stale):
        if not safe_relative(name):
            continue
        path = out_dir / name
        if path.is_file() and not path.is_symlink():
            _unlink(path)
    assets = out_dir / "assets"
    if assets.is_dir() and not any(assets.iterdir()):
        assets.rmdir()
