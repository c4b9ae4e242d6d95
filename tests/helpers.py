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
