"""scikit-learn's handwritten digits as an ImageFolder and a small CNN for them: what benchmarks/reading.py
and benchmarks/threads.py build reports over (the data of the trial in issue 22; no network needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# the CNN of PyTorch's MNIST example (pytorch/examples, mnist/main.py; its dropout layers are left out: the
# reports are of eval mode) for 1-channel 28x28 digits, random (seeded) weights:
# `model: {source: module, factory: digitsnet:build}`
DIGITSNET = '''
import torch
from torch import nn


def build(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, num_classes),
    )
'''


def write_digits(root: Path, images: int, size: int = 28) -> Path:
    """The last `images` of sklearn's 1 797 digits (the held-out end of a 1 200 / 597 split) as `size`² grey PNGs
    (8x8 upscaled, nearest), one folder per class: `root/digits/<class>/<n>.png`. Also writes
    `root/digitsnet.py`. Returns the ImageFolder's path."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = root / "digits"
    picked = range(len(digits.images) - images, len(digits.images))
    for n in picked:
        pixels = (digits.images[n] * (255 / 16)).round().astype(np.uint8)
        cls = folder / str(digits.target[n])
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").resize((size, size), Image.NEAREST).save(cls / f"{n:04d}.png")
    (root / "digitsnet.py").write_text(DIGITSNET)
    return folder


def model_config(size: int = 28) -> dict:
    """The `model:` section for digitsnet.py."""
    return {"source": "module", "factory": "digitsnet:build", "input_size": [1, size, size], "labels": None,
            "device": "cpu"}
