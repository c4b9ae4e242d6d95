"""`ReportCallback`: a real Lightning Trainer (CPU) trains the shipped shapes model for two short epochs; after each
validation (not the sanity check) a report of the live model is built and attached to an MLFlowLogger (SQLite
store) and a TensorBoardLogger, and training goes on as it would have."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing leaves the machine (checked at each use)
from lightning import pytorch as pl
import mlflow
from tensorboard.backend.event_processing import event_accumulator

from reportgen.demo import shapes  # noqa: E402
from reportgen.errors import ReportgenError  # noqa: E402
from reportgen.lightning import ReportCallback  # noqa: E402

SHAPES = Path(__file__).resolve().parents[1] / "example_configs" / "shapes"
pytestmark = pytest.mark.slow


class ShapesModule(pl.LightningModule):
    """The shipped shapes network (as `self.net`: its layers are `net.features.3`, ...) with a plain training step."""

    def __init__(self):
        super().__init__()
        self.net = shapes.build_model()
        self.net.load_state_dict(torch.load(SHAPES / "model.pt", weights_only=True))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_accuracy", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def _loader(seed: int, n: int = 16):
    data = shapes.generate(n, seed=seed)
    dataset = torch.utils.data.TensorDataset(shapes.to_input(data.images), torch.from_numpy(data.labels))
    return torch.utils.data.DataLoader(dataset, batch_size=8)


class Probe(pl.Callback):
    """What the model and the random generators are on either side of the report callback."""

    def __init__(self, before: Probe | None = None):
        self.before, self.seen = before, []

    def on_validation_end(self, trainer, pl_module):
        state = (trainer.sanity_checking, torch.get_rng_state(), np.random.get_state()[1].copy(), pl_module.training,
                 [p.requires_grad for p in pl_module.parameters()], torch.is_inference_mode_enabled(),
                 torch.is_grad_enabled())
        self.seen.append(state)


def test_the_callback_reports_after_each_validation_and_attaches_to_mlflow_and_tensorboard(tmp_path):
    root = tmp_path
    batch = shapes.generate(10, seed=31_337)
    for i, (image, label) in enumerate(zip(batch.images, batch.labels)):
        folder = root / "images" / shapes.CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    config = {"title": "Shapes while training",
              "model": {"input_size": [3, 64, 64], "labels": str(SHAPES / "labels.txt")},
              "inputs": {"images": [str(root / "images")],
                         "preprocess": {"normalize": {"mean": shapes.MEAN, "std": shapes.STD}}},
              "analyses": {"summary": {}, "dataset": {}, "cam": {"methods": ["gradcam"], "target_layers": ["net.features.3"]},
                           "gradients": {"methods": ["saliency"]}},
              "output": {"dir": str(root / "reports")}}
    report_callback = ReportCallback(config)
    before, after = Probe(), Probe()
    mlf = pl.loggers.MLFlowLogger(experiment_name="shapes", tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                                  artifact_location=str(root / "artifacts"))
    tb = pl.loggers.TensorBoardLogger(str(root / "tb"), name="shapes")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                         num_sanity_val_steps=1, logger=[mlf, tb], callbacks=[before, report_callback, after],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1)
    model = ShapesModule()
    trainer.fit(model, _loader(1), _loader(2))

    # the sanity check ran validation once, without a report; each epoch's validation made one
    assert [s[0] for s in before.seen] == [True, False, False]
    assert [r.out_dir for r in report_callback.reports] == [root / "reports" / "epoch-0", root / "reports" / "epoch-1"]
    for report in report_callback.reports:
        assert report.exit_code == 0 and [s.status for s in report.stages] == ["ok"] * 4  # CAM and saliency: gradients
        assert json.loads(report.json_path.read_text())["model"]["description"] == "ShapesModule, given in Python"
    # the model and the generators come back as they were: training draws what it would have drawn
    for b, a in zip(before.seen[1:], after.seen[1:]):
        assert torch.equal(b[1], a[1]) and np.array_equal(b[2], a[2]) and b[3:] == a[3:]  # modes, flags, grad mode
    assert before.seen[-1][5:] == (False, False)  # fit validates under no_grad: the callback enabled gradients

    # MLflow: each epoch's files under epoch-<n>/, the metrics at the trainer's global step
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    for epoch in range(len(report_callback.reports)):
        logged = {a.path for a in client.list_artifacts(mlf.run_id, f"epoch-{epoch}")}
        assert logged == {f"epoch-{epoch}/{name}" for name in ("report.html", "report.json", "images.jsonl")}
    metrics = report_callback.reports[-1].metrics()
    assert "dataset/top1_accuracy" in metrics
    history = client.get_metric_history(mlf.run_id, "dataset/top1_accuracy")
    assert [m.step for m in history] == [2, 4]
    assert [m.value for m in history] == pytest.approx([r.metrics()["dataset/top1_accuracy"]
                                                        for r in report_callback.reports])
    assert client.get_run(mlf.run_id).data.metrics["summary/total_params"] == metrics["summary/total_params"]

    # TensorBoard: in the logger's own folder, beside its scalars; the text names each epoch's page
    events = event_accumulator.EventAccumulator(tb.log_dir, size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    texts = events.Tensors("reportgen/report/text_summary")
    assert [t.step for t in texts] == [2, 4]
    for text, report in zip(texts, report_callback.reports):
        assert str(report.html_path.resolve()) in text.tensor_proto.string_val[0].decode()
    assert any(tag.startswith("cam/") for tag in events.Tags()["images"]) and "train_loss" in events.Tags()["scalars"]

    # Trainer.validate runs under torch.inference_mode(): the callback leaves it for the backward passes
    trainer.validate(model, _loader(3), verbose=False)
    assert before.seen[-1][0] is False and before.seen[-1][5] is True and after.seen[-1][5] is True
    last = report_callback.reports[-1]
    assert last.out_dir == root / "reports" / "epoch-2" and [s.status for s in last.stages] == ["ok"] * 4


def test_every_n_epochs_must_be_a_positive_integer():
    with pytest.raises(ReportgenError, match="`every_n_epochs` must be a positive integer, got 0"):
        ReportCallback({"model": {"input_size": [3, 64, 64]}}, every_n_epochs=0)


def test_without_lightning_the_callback_is_a_pytorch_lightning_callback():
    """Where only `pytorch_lightning` is installed (here: `lightning` made unimportable in a fresh interpreter)."""
    import subprocess
    import sys

    script = ("import sys; sys.modules['lightning'] = None\n"
              "import pytorch_lightning\n"
              "from reportgen.lightning import ReportCallback\n"
              "print(issubclass(ReportCallback, pytorch_lightning.Callback))")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
