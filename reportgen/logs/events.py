"""TensorBoard event files: TFRecord records (framing and CRC checked), decoded with the `tensorboard` package.

Scalars and histograms only, every point (nothing sampled away); a restart marker drops the points
logged after it, as TensorBoard does. `tensorboard` is imported only when event files are read.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ReportgenError
from .data import LogData, Points

TENSORBOARD_MISSING = ("reading TensorBoard event files needs the tensorboard package: "
                       "pip install 'reportgen[tensorboard]'")
CRC_CHECK_MAX_BYTES = 1 << 20  # larger records (images, graphs) are checked for framing only: pure-Python CRC is slow


def tensorboard_modules():
    """The tensorboard modules the event reader needs, or a ReportgenError naming the extra."""
    try:
        from tensorboard import data_compat, dataclass_compat
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
        from tensorboard.util import tensor_util
    except ImportError:
        raise ReportgenError(TENSORBOARD_MISSING) from None
    return data_compat, dataclass_compat, event_pb2, masked_crc32c, tensor_util


def read_records(path: Path, masked_crc32c) -> tuple[list[bytes], str | None]:
    """The whole TFRecord records of an event file, and a message when it ends in a partial or corrupt one.

    A record: uint64 length, uint32 masked CRC-32C of the length, data, uint32 masked CRC-32C of the data.
    """
    records: list[bytes] = []
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            header = f.read(12)
            if not header:
                return records, None
            damage = None
            if len(header) < 12:
                damage = "ends in a truncated record"
            else:
                length, length_crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != length_crc:
                    damage = f"has a corrupt record at byte {offset} (bad length checksum)"
                else:
                    data, footer = f.read(length), f.read(4)
                    if len(data) < length or len(footer) < 4:
                        damage = "ends in a truncated record"
                    elif length <= CRC_CHECK_MAX_BYTES and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                        damage = f"has a corrupt record at byte {offset} (bad data checksum)"
            if damage:
                size = path.stat().st_size
                return records, (f"TensorBoard event file `{path.name}` {damage}: read its {len(records)} whole "
                                 f"records, skipped the last {size - offset} of {size} bytes.")
            records.append(data)


Summarize = Callable[[np.ndarray], np.ndarray]  # a histogram's (k, 3) buckets -> what is kept of it


def load_event_files(paths: Sequence[Path], warnings: list[str], summarize: Summarize | None = None) -> LogData:
    """Scalars and histograms of one run's event files (name order), nothing sampled away.

    Each histogram is kept as `summarize` makes of its (k, 3) [left edge, right edge, count] buckets
    (the buckets themselves where it is None)."""
    data_compat, dataclass_compat, event_pb2, masked_crc32c, tensor_util = tensorboard_modules()
    out = LogData()
    plugins: dict[str, str] = {}  # tag -> plugin name, from the first value that carries metadata
    initial_metadata: dict = {}  # dataclass_compat's per-run state
    file_version = 0.0
    purged = 0
    for path in paths:
        records, problem = read_records(path, masked_crc32c)
        if problem:
            warnings.append(problem)
        for i, record in enumerate(records):
            try:
                event = event_pb2.Event.FromString(record)
            except Exception:  # protobuf's DecodeError: a record that passed framing but is not an Event
                warnings.append(f"TensorBoard event file `{path.name}`: record {i + 1} is not an event: "
                                f"read the {i} records before it, skipped the rest.")
                break
            if event.HasField("file_version"):
                file_version = _file_version(event.file_version)
            if (file_version >= 2 and event.HasField("session_log")
                    and event.session_log.status == event_pb2.SessionLog.START):
                purged += _purge(out, event.step)
            if not event.HasField("summary"):
                continue
            for migrated in dataclass_compat.migrate_event(data_compat.migrate_event(event), initial_metadata):
                for value in migrated.summary.value:
                    _take_value(out, value, migrated, plugins, tensor_util, summarize)
    if purged:
        warnings.append(f"`{paths[0].parent.name}`: a restart marker dropped {purged} points logged after the "
                        "restart step, as TensorBoard does.")
    return out


def _file_version(text: str) -> float:
    try:
        return float(text.rpartition(":")[2])
    except ValueError:
        return 0.0


def _purge(out: LogData, step: int) -> int:
    """Drop every point at `step` or later (a restart makes them orphans). Returns how many."""
    dropped = 0
    for tag, points in out.scalars.items():
        keep = [i for i, s in enumerate(points.steps) if s < step]
        dropped += len(points.steps) - len(keep)
        out.scalars[tag] = Points([points.steps[i] for i in keep], [points.values[i] for i in keep],
                                  [points.wall_times[i] for i in keep])
    for tag, (steps, rows) in out.histograms.items():
        keep = [i for i, s in enumerate(steps) if s < step]
        dropped += len(steps) - len(keep)
        out.histograms[tag] = ([steps[i] for i in keep], [rows[i] for i in keep])
    return dropped


def _take_value(out: LogData, value, event, plugins: dict[str, str], tensor_util, summarize: Summarize | None) -> None:
    if value.metadata.plugin_data.plugin_name:
        plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
    plugin = plugins.get(value.tag)
    if value.WhichOneof("value") != "tensor" or plugin not in ("scalars", "histograms"):
        return
    array = tensor_util.make_ndarray(value.tensor)
    if plugin == "scalars" and array.size == 1:
        out.scalars.setdefault(value.tag, Points()).add(int(event.step), float(array.reshape(())), event.wall_time)
    elif plugin == "histograms" and array.ndim == 2 and array.shape[1] == 3:
        steps, rows = out.histograms.setdefault(value.tag, ([], []))
        steps.append(int(event.step))
        rows.append(summarize(array) if summarize is not None else array)
