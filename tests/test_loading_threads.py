"""Loading a model on the meta device (no random initialisation, the checkpoint's tensors assigned) changes
nothing for the other threads of the process: a training loop beside a report build still gets initialised
layers, and `load_state_dict` still copies."""
from __future__ import annotations

import math
import threading

import torch
import torchvision
from torch import nn

from reportgen.config import ModelConfig
from reportgen.models import _load_skipping_init
from reportgen.registry import SOURCES

LOADS = 6
LAYERS = 50  # at least this many built beside the loads


def _initialised(layer: nn.Linear, seen: set[bytes]) -> str | None:
    """Why `layer` (Linear(64, 64), just built) was not initialised as `reset_parameters` does, or None.
    Its weight and bias are uniform in ±1/sqrt(64), so their std is about 1/sqrt(3 * 64); a skipped
    initialisation leaves torch.empty's memory: zeros, garbage, or a freed layer's values (seen before)."""
    bound, std = 1 / math.sqrt(64), 1 / math.sqrt(3 * 64)
    weight, bias = layer.weight.detach(), layer.bias.detach()
    if not (torch.isfinite(weight).all() and weight.abs().max() <= bound and abs(weight.std() - std) < 0.15 * std):
        return f"weight not uniform in ±{bound}: std {weight.std():.4g}, max {weight.abs().max():.4g}"
    if not (torch.isfinite(bias).all() and bias.abs().max() <= bound and bias.std() > 0.3 * std):
        return f"bias not uniform in ±{bound}: std {bias.std():.4g}"
    for values in (weight, bias):
        if values.numpy().tobytes() in seen:
            return "the values of a layer built before"
        seen.add(values.numpy().tobytes())
    return None


def test_layers_built_in_another_thread_while_models_load_are_initialised(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    cfg = ModelConfig(name="resnet18", checkpoint=tmp_path / "r18.pt", device="cpu", labels=None)
    loading = threading.Event()
    done = threading.Event()
    loaded: list = []
    failures: list[str] = []
    built = 0

    def load() -> None:
        try:
            for _ in range(LOADS):
                loading.set()
                loaded.append(_load_skipping_init(cfg, SOURCES["torchvision"].load, None))  # the meta-device path
        finally:
            done.set()

    def build() -> None:
        nonlocal built
        seen: set[bytes] = set()
        source = nn.Linear(64, 64)
        loading.wait()
        while not done.is_set() or built < LAYERS:
            layer = nn.Linear(64, 64)
            built += 1
            why = _initialised(layer, seen)
            if why is not None:
                failures.append(f"layer {built}: {why}")
            weight = layer.weight
            layer.load_state_dict(source.state_dict())
            if layer.weight is not weight or not torch.equal(weight, source.weight):
                failures.append(f"layer {built}: load_state_dict assigned instead of copying")

    threads = [threading.Thread(target=load), threading.Thread(target=build)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == LOADS and all(adapter is not None for adapter in loaded)  # each took the meta path
    assert built >= LAYERS
    assert not failures, f"{len(failures)} of {built} layers: {failures[:3]}"
    model = loaded[-1].model
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    assert torch.equal(model.conv1.weight, torch.load(tmp_path / "r18.pt")["conv1.weight"])
