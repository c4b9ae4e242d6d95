"""Test helpers: a build's context around an in-memory model and batch, as the pipeline makes it."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reportgen.config import Config
from reportgen.context import Context, ImageInput, ModelInfo
from reportgen.engine import Engine
from reportgen.layers import describe_model
from reportgen.stages import input_grad_wanted, observed_layers, relu_rules_wanted


def make_context(model: nn.Module, batch: torch.Tensor, *, labels: list[str] | None = None,
                 names: list[str] | None = None, config: Config | None = None) -> Context:
    """A context around an in-memory model and batch (the images are the batch, min-max scaled to pixels);
    its engine keeps input gradients (and ReLU rules' gradients) when `config` has a stage that will ask for them,
    as in a build."""
    model.eval()
    config = config or Config()
    with torch.no_grad():
        logits = model(batch).float().cpu()
    n = batch.shape[0]
    names = names or [f"img{i}" for i in range(n)]
    display = _to_display(batch)
    images = [ImageInput(name=names[i], source=f"{names[i]}.png", original=display[i], display=display[i])
              for i in range(n)]
    info = ModelInfo(model=model, config=config, labels=labels, num_classes=logits.shape[1],
                     layers=describe_model(model, batch[:1])[0], normalize=config.inputs.preprocess.normalize,
                     preprocess=config.inputs.preprocess)
    engine = Engine(model, batch, chunk=config.inputs.batch_size, input_grad_wanted=input_grad_wanted(config),
                    observe=observed_layers(info), relu_rules=relu_rules_wanted(config))
    return Context(info=info, device=batch.device, batch=batch, images=images, logits=logits, engine=engine)


def _to_display(batch: torch.Tensor) -> list[np.ndarray]:
    x = batch.detach().float().cpu()
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = ((x - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return [img[:3].permute(1, 2, 0).numpy() for img in x]


def shared_passes(ctx: Context) -> dict:
    """The engine's passes that kept input gradients, as a later stage finds them: ("grad_pass", classes) -> pass."""
    return {("grad_pass", p.classes): p for p in ctx.engine.cached_passes() if p.input_grad is not None}


def build_black_box(project, gradients: dict) -> None:
    """Build `project`'s two images (16 × 16) with `analyses.gradients` = `gradients` and a deletion/insertion
    evaluation, then check what every method the config names (but saliency) gave: two non-zero maps in arrays.npz,
    its title on the page, and finite deletion and insertion scores in the gradients family."""
    import json

    from click.testing import CliRunner

    from reportgen import methods
    from reportgen.cli import main

    config = project.base()
    config["analyses"] = {"gradients": gradients, "evaluation": {"metrics": ["deletion", "insertion"], "images": 2}}
    config["output"]["save_arrays"] = True
    result = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert result.exit_code == 0, result.output
    arrays = np.load(project.root / "out" / "arrays.npz")
    html = (project.root / "out" / "report.html").read_text()
    rows = {row["method"]: row for row in json.loads((project.root / "out" / "report.json").read_text())
            ["evaluation"]["rows"]}
    for method in (m for m in gradients["methods"] if m != "saliency"):
        keys = [k for k in arrays.files if k.startswith(f"gradients/{method}/")]
        assert len(keys) == 2 and all(arrays[k].shape == (3, 16, 16) for k in keys), method
        assert all(np.abs(arrays[k]).max() > 0 for k in keys), method
        assert methods.title(method) in html
        assert rows[method]["family"] == "gradients"
        assert all(np.isfinite(rows[method]["scores"][m]["mean"]) for m in ("deletion_auc", "insertion_auc"))
