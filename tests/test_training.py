"""The training stage and reportgen.logs: logs read back value by value, smoothing, distributions, bad input."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import jinja2
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import (
    STORE_EVERYTHING_SIZE_GUIDANCE,
    EventAccumulator,
)
from tensorboard.plugins.distribution.compressor import compress_histogram
from torch.utils.tensorboard import SummaryWriter

from reportgen.config import Config, TrainingConfig
from reportgen.errors import ReportgenError, StageSkipped
from reportgen.figures import training as figures
from reportgen.logs import find_log_files, load_runs
from reportgen.stages import training
from reportgen.stages.training import BASIS_POINTS, compute_distribution, compute_stats, smooth

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


class _Ctx:
    """The stage reads no model: a log sink is all of the context it uses."""

    def __init__(self):
        self.messages: list[str] = []
        self.config = Config()  # paths shown as they are

    def log(self, message: str) -> None:
        self.messages.append(message)


def run(*logs, tags=(), smoothing=0.6) -> training.TrainingResult:
    return training.run(_Ctx(), TrainingConfig(logs=tuple(str(p) for p in logs), tags=tuple(tags), smoothing=smoothing))


def series_of(result, run_name: str, tag: str) -> training.Series:
    (found,) = [s for s in result.series if s.run == run_name and s.tag == tag]
    return found


def write_scalars(folder: Path, scalars: dict[str, dict[int, float]], histograms: dict[str, dict[int, np.ndarray]] | None = None,
                  **writer_kwargs) -> None:
    histograms = histograms or {}
    writer = SummaryWriter(log_dir=str(folder), **writer_kwargs)
    steps = sorted({s for points in [*scalars.values(), *histograms.values()] for s in points})
    for step in steps:
        for tag, points in scalars.items():
            if step in points:
                writer.add_scalar(tag, points[step], step)
        for tag, points in histograms.items():
            if step in points:
                writer.add_histogram(tag, points[step], step)
    writer.close()
    # SummaryWriter names files `...<seconds>.<host>.<pid>.<counter>`, and the process-wide counter sorts ".10"
    # before ".9": name the new file so it sorts after the folder's earlier ones, as a later run's file would
    ours = re.compile(r"^events\.out\.tfevents\.\d{4}$")
    files = list(folder.glob("events.out.tfevents.*"))
    (new,) = [f for f in files if not ours.match(f.name)]
    new.rename(folder / f"events.out.tfevents.{len(files) - 1:04d}")


def event_file(folder: Path) -> Path:
    (path,) = folder.glob("events.out.tfevents.*")
    return path


# ---------------------------------------------------------------------------- smoothing, distributions


def test_smoothing_matches_a_hand_computation_of_tensorboards_debiased_ema():
    values = np.array([1.0, 2.0, np.nan, 4.0, np.inf, 0.0])
    w = 0.6
    # last = last*w + (1-w)*v over finite values only; divided by 1 - w**n (n = finite values so far)
    l1 = 0.4 * 1.0
    l2 = l1 * 0.6 + 0.4 * 2.0
    l3 = l2 * 0.6 + 0.4 * 4.0
    l4 = l3 * 0.6 + 0.4 * 0.0
    expected = [l1 / 0.4, l2 / (1 - 0.36), np.nan, l3 / (1 - 0.216), np.inf, l4 / (1 - 0.6 ** 4)]
    np.testing.assert_allclose(smooth(values, w), expected, rtol=1e-12)
    assert smooth(values, w)[1] == pytest.approx(1.625)
    np.testing.assert_array_equal(smooth(np.array([3.0, 3.0, 3.0]), 0.9), [3.0, 3.0, 3.0])  # constant: untouched
    np.testing.assert_array_equal(smooth(values, 0.0), values)  # weight 0: the raw values


def test_distribution_equals_tensorboards_compressor():
    rng = np.random.default_rng(0)
    for trial in range(30):
        k = int(rng.integers(1, 12))
        edges = np.cumsum(rng.uniform(0.1, 2.0, size=k + 1)) - 5.0
        counts = rng.integers(0, 5, size=k).astype(float)
        if trial % 3 == 0:
            counts[0] = 0.0  # an empty first bucket: TensorBoard starts the first non-empty one at the minimum
        buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
        expected = [v for _, v in compress_histogram(buckets.tolist(), BASIS_POINTS)]
        np.testing.assert_allclose(compute_distribution(buckets), expected, rtol=1e-12, atol=1e-12)
    # by hand: 10 values spread evenly over [0, 10] -> the percentiles are the basis points / 1000
    np.testing.assert_allclose(compute_distribution(np.array([[0.0, 10.0, 10.0]])), np.array(BASIS_POINTS) / 1000)


# ---------------------------------------------------------------------------- TensorBoard event files


def test_event_files_read_back_every_scalar_and_histogram(tmp_path):
    rng = np.random.default_rng(1)
    expected = {}
    for name in ("run_a", "run_b"):
        loss = {s: float(rng.uniform(0.1, 2.0)) for s in range(0, 40, 3)}
        lr = {s: 0.1 * 0.8 ** s for s in range(0, 40, 3)}
        acc = {s: float(rng.uniform()) for s in range(0, 40, 9)}  # logged less often
        weights = {s: rng.normal(s / 10, 1.0, size=300) for s in (0, 10, 20)}
        write_scalars(tmp_path / "logs" / name, {"train/loss": loss, "lr": lr, "val/acc": acc},
                      {"conv1.weight": weights})
        expected[name] = {"train/loss": loss, "lr": lr, "val/acc": acc}
    result = run(tmp_path / "logs")

    assert [r.name for r in result.runs] == ["run_a", "run_b"]
    assert result.warnings == ()
    assert set(result.tags) == {"train/loss", "lr", "val/acc"} and result.histogram_tags == ("conv1.weight",)
    for name, tags in expected.items():
        acc = EventAccumulator(str(tmp_path / "logs" / name), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload()
        for tag, points in tags.items():
            s = series_of(result, name, tag)
            assert s.axis == "step" and s.steps.dtype == np.int64 and s.values.dtype == np.float32
            np.testing.assert_array_equal(s.steps, sorted(points))
            np.testing.assert_array_equal(s.values, np.float32([points[k] for k in sorted(points)]))
            np.testing.assert_array_equal(s.wall_times, [e.wall_time for e in acc.Scalars(tag)])
            np.testing.assert_allclose(s.smoothed, smooth(s.values.astype(np.float64), 0.6), rtol=1e-6)
        (hist,) = [h for h in result.histograms if h.run == name]
        reference = acc.CompressedHistograms("conv1.weight")  # TensorBoard's distributions view
        np.testing.assert_array_equal(hist.steps, [e.step for e in reference])
        np.testing.assert_allclose(hist.percentiles, [[value for _, value in e.compressed_histogram_values]
                                                      for e in reference], rtol=1e-5, atol=1e-5)

    entries = training.to_json(result)
    assert len(entries) == 6 and all(set(e) == {"run", "tag", "points", "first", "last", "min", "max"} for e in entries)
    entry = next(e for e in entries if e["run"] == "run_b" and e["tag"] == "train/loss")
    loss = expected["run_b"]["train/loss"]
    assert entry["points"] == len(loss)
    assert entry["first"] == float(str(np.float32(loss[0]))) and entry["last"] == float(str(np.float32(loss[39])))
    assert entry["min"] == float(str(np.float32(min(loss.values()))))
    assert entry["max"] == float(str(np.float32(max(loss.values()))))
    json.dumps(entries, allow_nan=False)
    assert training.SPEC.arrays(result) == {}


def test_logs_package_keeps_histogram_buckets_unless_told_to_summarize(tmp_path):
    weights = {s: np.random.default_rng(s).normal(size=100) for s in (0, 5)}
    write_scalars(tmp_path / "run", {"loss": {0: 1.0, 5: 0.5}}, {"w": weights})
    files = find_log_files([str(tmp_path / "run")], [])
    warnings: list[str] = []
    (raw,) = load_runs(files, warnings)
    (summarized,) = load_runs(files, warnings, summarize=compute_distribution)
    assert warnings == [] and raw.histograms["w"][0] == summarized.histograms["w"][0] == [0, 5]
    for buckets, row in zip(raw.histograms["w"][1], summarized.histograms["w"][1]):
        assert buckets.ndim == 2 and buckets.shape[1] == 3 and buckets[:, 2].sum() == 100
        np.testing.assert_array_equal(compute_distribution(buckets), row)
    assert raw.scalars["loss"].steps == [0, 5] and raw.scalars["loss"].values == [1.0, 0.5]


def test_logs_package_imports_neither_torch_nor_the_stages():
    code = ("import sys, reportgen.logs, reportgen.logs.events, reportgen.logs.tables; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'reportgen.stages'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.stdout.strip() == "[]"


def test_truncated_event_file_keeps_its_whole_records_and_warns(tmp_path):
    points = {s: 1.0 / (s + 1) for s in range(20)}
    write_scalars(tmp_path / "run", {"loss": points})
    path = event_file(tmp_path / "run")
    path.write_bytes(path.read_bytes()[:-7])  # cut into the last record (the scalar at step 19)

    result = run(tmp_path / "run")
    s = series_of(result, "run", "loss")
    np.testing.assert_array_equal(s.steps, range(19))
    np.testing.assert_array_equal(s.values, np.float32([points[k] for k in range(19)]))
    (warning,) = result.warnings
    assert path.name in warning and "truncated" in warning and "skipped the last" in warning


def test_corrupt_record_stops_the_file_there_and_warns(tmp_path):
    points = {s: float(s) * 0.5 for s in range(10)}
    write_scalars(tmp_path / "run", {"loss": points})
    path = event_file(tmp_path / "run")
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the last record's payload: its data checksum fails
    path.write_bytes(bytes(data))

    result = run(tmp_path / "run")
    np.testing.assert_array_equal(series_of(result, "run", "loss").steps, range(9))
    (warning,) = result.warnings
    assert "corrupt" in warning and "checksum" in warning


def test_restart_drops_orphaned_points_as_tensorboard_does(tmp_path):
    folder = tmp_path / "run"
    write_scalars(folder, {"loss": {s: float(s) for s in range(10)}})
    # resumed from the checkpoint at step 5: SummaryWriter(purge_step=5) writes a restart marker
    write_scalars(folder, {"loss": {s: 100.0 + s for s in range(5, 12)}}, purge_step=5)
    result = run(folder)
    s = series_of(result, "run", "loss")
    reference = EventAccumulator(str(folder), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE).Reload().Scalars("loss")
    np.testing.assert_array_equal(s.steps, [e.step for e in reference])
    np.testing.assert_array_equal(s.values, np.float32([e.value for e in reference]))
    np.testing.assert_array_equal(s.steps, list(range(12)))
    assert s.values[4] == 4.0 and s.values[5] == 105.0
    assert any("restart" in w and "5 points" in w for w in result.warnings)


def test_without_tensorboard_event_files_get_a_message_naming_the_extra(tmp_path, monkeypatch):
    write_scalars(tmp_path / "logs" / "tb", {"loss": {0: 1.0, 1: 0.5}})
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)  # `import tensorboard...` now raises ImportError
    with pytest.raises(ReportgenError, match=r"needs the tensorboard package: pip install 'reportgen\[tensorboard\]'"):
        run(tmp_path / "logs")
    (tmp_path / "logs" / "csv").mkdir()
    (tmp_path / "logs" / "csv" / "log.csv").write_text("step,loss\n0,2.5\n1,1.5\n")
    result = run(tmp_path / "logs")
    assert [r.name for r in result.runs] == ["csv"]
    np.testing.assert_array_equal(series_of(result, "csv", "loss").values, [2.5, 1.5])
    assert any("reportgen[tensorboard]" in w for w in result.warnings)


# ---------------------------------------------------------------------------- CSV and JSON lines


LIGHTNING_ROWS = [  # Lightning's CSVLogger: one row per log call, empty cells for metrics not logged then
    {"epoch": 0, "step": 49, "train_loss_step": 1.25, "lr-AdamW": 0.001},
    {"epoch": 0, "step": 99, "train_loss_step": 0.98, "lr-AdamW": 0.0009},
    {"epoch": 0, "step": 99, "val_loss": 1.1, "val_acc": 0.52},
    {"epoch": 0, "step": 99, "train_loss_epoch": 1.12},
    {"epoch": 1, "step": 149, "train_loss_step": 0.71, "lr-AdamW": 0.0008},
    {"epoch": 1, "step": 199, "train_loss_step": "nan", "lr-AdamW": 0.0007},  # NaN: a gap, as pandas writes them
    {"epoch": 1, "step": 199, "val_loss": 0.83, "val_acc": 0.61},
    {"epoch": 1, "step": 199, "train_loss_epoch": 0.8},
]


def write_lightning_csv(path: Path) -> dict[str, list[tuple[int, float]]]:
    columns = ["epoch", "lr-AdamW", "step", "train_loss_epoch", "train_loss_step", "val_acc", "val_loss"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(LIGHTNING_ROWS)
    expected: dict[str, list[tuple[int, float]]] = {}
    for row in LIGHTNING_ROWS:
        for key, value in row.items():
            if key not in ("epoch", "step") and value != "nan":
                expected.setdefault(key, []).append((row["step"], value))
    return expected


def test_lightning_metrics_csv_reads_every_value_and_skips_gaps(tmp_path):
    expected = write_lightning_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    (tmp_path / "lightning_logs" / "version_0" / "hparams.yaml").write_text("lr: 0.001\n")
    result = run(tmp_path / "lightning_logs" / "*" / "metrics.csv")
    assert [r.name for r in result.runs] == ["version_0"] and result.runs[0].files == ("metrics.csv",)
    assert list(result.tags) == ["lr-AdamW", "train_loss_epoch", "train_loss_step", "val_acc", "val_loss"]
    for tag, points in expected.items():
        s = series_of(result, "version_0", tag)
        assert s.axis == "step"
        np.testing.assert_array_equal(s.steps, [p[0] for p in points])
        np.testing.assert_array_equal(s.values, np.float32([p[1] for p in points]))
        assert np.isnan(s.wall_times).all()
    assert series_of(result, "version_0", "train_loss_step").steps.tolist() == [49, 99, 149]
    assert result.warnings == ()


def test_csv_with_only_an_epoch_column_plots_by_epoch(tmp_path):
    (tmp_path / "log.csv").write_text("Epoch,loss,phase\n0,1.5,train\n1,0.75,train\n2,0.5,train\n")
    result = run(tmp_path / "log.csv")
    s = series_of(result, tmp_path.name, "loss")
    assert s.axis == "epoch" and s.steps.tolist() == [0, 1, 2] and s.values.tolist() == [1.5, 0.75, 0.5]
    (warning,) = result.warnings
    assert "`phase`" in warning and "without numbers" in warning


def test_csv_without_a_step_column_is_named_and_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "scores.csv").write_text("loss,accuracy\n0.5,0.9\n")
    with pytest.raises(ReportgenError, match=r"`scores.csv` has no step column .*Its columns: `loss`, `accuracy`"):
        run(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "log.csv").write_text("step,loss\n1,0.25\n")
    result = run(tmp_path)
    assert [r.name for r in result.runs] == ["b"]
    assert any("scores.csv" in w and "no step column" in w for w in result.warnings)


def test_jsonl_wide_long_nested_and_a_truncated_last_line(tmp_path):
    lines = [
        {"step": 0, "loss": 2.0, "train": {"acc": 0.1}, "wall_time": 1000.5},
        {"step": 1, "loss": 1.5, "train": {"acc": None}, "wall_time": 1001.5},
        {"step": 2, "loss": 1.0, "train": {"acc": 0.3}, "note": "ok", "wall_time": 1002.5},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + '\n{"step": 3, "loss": 0.'  # the writer was killed
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "log.jsonl").write_text(text)
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"tag": "loss", "step": 10, "value": 0.5}, {"tag": "val/acc", "step": 10, "value": 0.7},
        {"tag": "loss", "step": 20, "value": 0.25}]) + "\n")
    result = run(tmp_path / "wide", tmp_path / "long")
    wide = result
    np.testing.assert_array_equal(series_of(wide, "wide", "loss").values, [2.0, 1.5, 1.0])
    np.testing.assert_array_equal(series_of(wide, "wide", "train/acc").steps, [0, 2])
    np.testing.assert_array_equal(series_of(wide, "wide", "train/acc").values, np.float32([0.1, 0.3]))
    np.testing.assert_array_equal(series_of(wide, "wide", "loss").wall_times, [1000.5, 1001.5, 1002.5])
    np.testing.assert_array_equal(series_of(result, "long", "loss").steps, [10, 20])
    np.testing.assert_array_equal(series_of(result, "long", "loss").values, [0.5, 0.25])
    assert series_of(result, "long", "val/acc").values.tolist() == [np.float32(0.7)]
    assert any("log.jsonl" in w and "line 4" in w for w in result.warnings)
    assert any("`note`" in w for w in result.warnings)


def test_two_files_logging_the_same_tag_in_one_folder_are_two_runs(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "train.csv").write_text("step,loss\n1,1.0\n2,0.5\n")
    (tmp_path / "exp" / "val.csv").write_text("step,loss\n2,0.75\n")
    result = run(tmp_path / "exp")
    assert [r.name for r in result.runs] == ["exp/train.csv", "exp/val.csv"]
    assert series_of(result, "exp/val.csv", "loss").values.tolist() == [0.75]


def test_demo_training_logs_are_read(tmp_path):
    """The shapes demo's writer (per-step CSV, per-epoch CSV and TensorBoard), on a tiny budget."""
    from reportgen.demo import shapes

    shapes.train(tmp_path / "shapes", epochs=2, train_size=48, val_size=16, batch_size=16, size=32, num_samples=1)
    result = run(tmp_path / "shapes")
    assert [r.name for r in result.runs] == ["shapes", "tb"] and result.warnings == ()
    for name in ("train_log.csv", "metrics.csv"):
        with open(tmp_path / "shapes" / name, newline="") as f:
            rows = list(csv.DictReader(f))
        for column in [c for c in rows[0] if c not in ("epoch", "step")]:
            s = series_of(result, "shapes", column)
            np.testing.assert_array_equal(s.steps, [int(r["step"]) for r in rows])
            np.testing.assert_array_equal(s.values, np.float32([float(r[column]) for r in rows]))
    accumulator = EventAccumulator(str(tmp_path / "shapes" / "tb"), size_guidance=STORE_EVERYTHING_SIZE_GUIDANCE)
    accumulator.Reload()
    assert set(accumulator.Tags()["scalars"]) == {s.tag for s in result.series if s.run == "tb"}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        s = series_of(result, "tb", tag)
        np.testing.assert_array_equal(s.steps, [e.step for e in events])
        np.testing.assert_array_equal(s.values, np.float32([e.value for e in events]))


# ---------------------------------------------------------------------------- bad input, tags


def test_globs_that_match_nothing_are_named(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "log.csv").write_text("step,loss\n1,1.0\n")
    missing = str(tmp_path / "nope" / "*.csv")
    result = run(tmp_path / "ok", missing)
    assert any(missing in w and "no log files match" in w for w in result.warnings)
    with pytest.raises(StageSkipped, match="no training logs found: no log files match") as info:
        run(missing, tmp_path / "absent.csv")
    assert missing in str(info.value) and "absent.csv" in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageSkipped, match="holds no TensorBoard event files"):
        run(tmp_path / "empty")
    with pytest.raises(ReportgenError, match="is empty"):
        training.check(None, TrainingConfig(logs=()))


def test_tags_select_by_name_and_glob_and_unknown_tags_list_what_exists(tmp_path):
    (tmp_path / "log.csv").write_text("step,train/loss,train/acc,val_loss\n1,1.0,0.5,1.2\n2,0.5,0.7,0.9\n")
    result = run(tmp_path / "log.csv", tags=["val_loss", "train/*", "val_los"])
    assert result.selected_tags() == ["val_loss", "train/loss", "train/acc"]
    (warning,) = result.warnings
    assert "`val_los` is in no run" in warning and "Did you mean `val_loss`" in warning
    assert "`train/loss`, `train/acc`, `val_loss`" in warning
    with pytest.raises(ReportgenError, match="`accuracy` is in no run.*Tags found"):
        run(tmp_path / "log.csv", tags=["accuracy"])


def test_stats_ignore_non_finite_values_and_report_their_steps():
    s = training.Series(run="r", tag="loss", steps=np.array([0, 5, 10, 15, 20], dtype=np.int64),
                        values=np.float32([np.nan, 3.0, 1.0, np.inf, 1.0]), smoothed=np.zeros(5, np.float32),
                        wall_times=np.full(5, np.nan))
    stats = compute_stats(s)
    assert (stats.points, stats.non_finite) == (5, 2)
    assert (stats.first, stats.first_step, stats.last, stats.last_step) == (3.0, 5, 1.0, 20)
    assert (stats.min, stats.min_step, stats.max, stats.max_step) == (1.0, 10, 3.0, 5)  # first minimum wins


# ---------------------------------------------------------------------------- figures and template


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


def test_charts_one_per_tag_with_stats_and_log_scale_over_two_decades(tmp_path):
    lr = {s: 0.1 * 0.5 ** s for s in range(12)}  # 0.1 .. 4.9e-5: 3.3 decades
    loss = {s: 2.0 - 0.1 * s for s in range(12)}
    write_scalars(tmp_path / "runs" / "a", {"lr": lr, "loss": loss},
                  {"fc.weight": {s: np.linspace(-1, 1, 50) * (s + 1) for s in (0, 5, 10)}})
    (tmp_path / "runs" / "b$").mkdir()
    (tmp_path / "runs" / "b$" / "log.csv").write_text("step,loss\n0,1.5\n6,0.5\n")
    result = run(tmp_path / "runs")
    section = figures.plot(result, None)

    assert [c["tag"] for c in section["charts"]] == ["lr", "loss"]
    lr_chart, loss_chart = section["charts"]
    assert "log scale" in lr_chart["figure"].caption and "3.3 decades" in lr_chart["figure"].caption
    assert "log scale" not in loss_chart["figure"].caption
    assert figures.log_decades([series_of(result, "a", "lr")]) == pytest.approx(math.log10(2 ** 11), rel=1e-6)
    for chart in section["charts"]:
        fig = chart["figure"]
        assert _decode(fig.png).shape[:2] == (fig.height, fig.width) == (320, 600)
        assert chart["tag"] in fig.alt
    assert [r["run"] for r in loss_chart["rows"]] == ["a", "b$"]
    row_b = loss_chart["rows"][1]
    assert (row_b["first"], row_b["first_step"], row_b["min"], row_b["min_step"]) == ("1.5", "0", "0.5", "6")
    assert row_b["points"] == 2
    (dist,) = section["distributions"]
    assert "fc.weight" in dist.alt and _decode(dist.png).shape[:2] == (dist.height, dist.width)
    assert figures.plot(result, None)["charts"][0]["figure"].png == lr_chart["figure"].png  # reproducible bytes


def test_section_template_escapes_names_and_lists_what_was_skipped(tmp_path):
    (tmp_path / "<script>x").mkdir()
    (tmp_path / "<script>x" / "log.csv").write_text("step,<b>loss</b>\n0,1.0\n1,0.5\n")
    result = run(tmp_path / "<script>x", tmp_path / "missing*.csv")
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([
            jinja2.DictLoader({"macros.html.jinja2": '{% macro figure(fig) %}<img alt="{{ fig.alt }}">{% endmacro %}'}),
            jinja2.FileSystemLoader(str(TEMPLATES)),
        ]),
        autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.get_template("sections/training.html.jinja2").render(section=figures.plot(result, None), report={})
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;x" in html and "&lt;b&gt;loss&lt;/b&gt;" in html
    assert html.count("<h3>") == 1 and 'class="warn"' in html and "no log files match" in html
    assert "style=" not in html and "http" not in html


def test_a_csv_with_a_quote_never_closed_says_where_not_an_empty_reason(tmp_path):
    (tmp_path / "log.csv").write_text('step,"loss\n1,0.5\n2,0.4\n')
    with pytest.raises(ReportgenError, match=r"`log.csv`, line 1: a quote \(\"\) opened there is never closed"):
        run(tmp_path)
    (tmp_path / "log.csv").write_text('step,loss\n1,0.5\n2,"0.4\n3,0.3\n')
    result = run(tmp_path)
    assert any("`log.csv`, line 3: a quote" in w for w in result.warnings), result.warnings
