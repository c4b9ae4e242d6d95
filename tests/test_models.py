"""The model adapter (`reportgen.models`): one adapter per source, logits out of any output, preprocessing and
labels from the source, hooks capability, and the loading defects it mends (kwargs for torchvision, pickled
checkpoints named for what they are, torchvision's warnings, tuple/dict outputs)."""
from __future__ import annotations

import argparse
import collections
import dataclasses
import pickle
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from reportgen.config import ModelConfig, Normalize, Preprocess
from reportgen.errors import ReportgenError
from reportgen.models import (ModelAdapter, load_checkpoint, load_labels, load_model, pick_logits,
                              weights_cache_path)
from reportgen.models.adapter import Source
from reportgen.registry import SOURCES


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A test source's options: none."""


@pytest.fixture
def use_source():
    """`use_source(name, load)`: source `name` loads with `load` for the length of the test (a record registered,
    the old one back afterwards)."""
    saved = []

    def use(name, load):
        old = SOURCES.find(name)
        saved.append((name, old))
        SOURCES.register(Source(name=name, options=NoOptions, load=load) if old is None else
                         dataclasses.replace(old, load=load))

    yield use
    for name, old in reversed(saved):
        if old is None:
            SOURCES.unregister(name)
        else:
            SOURCES.register(old)


@dataclasses.dataclass(frozen=True)
class OutputConfig(ModelConfig):
    """ModelConfig with `model.output` (the field another change adds to ModelConfig itself)."""

    output: int | str | None = None


def tiny(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, num_classes))


class TwoOutputs(nn.Module):
    """Returns (logits (N, 3), features (N, 4))."""

    def __init__(self):
        super().__init__()
        self.body = tiny()

    def forward(self, x):
        features = self.body[:4](x)
        return self.body[4](features), features


class DictOutput(TwoOutputs):
    """Returns {"logits": (N, 3), "aux": (N, 4)}."""

    def forward(self, x):
        logits, features = super().forward(x)
        return {"logits": logits, "aux": features}


@dataclasses.dataclass
class HFLikeOutput:
    """Like a Hugging Face ModelOutput: logits as an attribute."""

    logits: torch.Tensor
    hidden_states: torch.Tensor | None = None


class ObjectOutput(TwoOutputs):
    def forward(self, x):
        logits, features = super().forward(x)
        return HFLikeOutput(logits=logits, hidden_states=features)


@pytest.fixture
def hub(tmp_path):
    """A private torch hub folder, so cached-weights tests write nothing to the real cache."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(before)


def cache(weights, model: nn.Module) -> Path:
    path = weights_cache_path(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


# ---- the adapter


def test_a_module_adapter_and_what_it_knows():
    cfg = ModelConfig(source="module", factory="tests.test_models:tiny", kwargs={"num_classes": 5}, device="cpu")
    adapter = load_model(cfg)
    assert isinstance(adapter, ModelAdapter)
    assert adapter.source == "module" and adapter.device == torch.device("cpu") and not adapter.model.training
    assert adapter.description == "tests.test_models:tiny(num_classes=5)"
    assert adapter.forward(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    assert adapter.hooks and adapter.layer_view("0") is None and adapter.categories is None
    assert adapter.prescribed is None
    pre = Preprocess(resize=(10,), normalize=Normalize(mean=(0.5,), std=(0.25,)))
    assert adapter.preprocess(pre) is pre and adapter.normalize(pre) == Normalize(mean=(0.5,), std=(0.25,))
    with pytest.raises(ReportgenError, match=r"`inputs.preprocess: from_weights` needs torchvision weights .*"
                                             r"a `module` model prescribes no preprocessing"):
        adapter.preprocess(Preprocess(from_weights=True))


def test_torchvision_weights_give_preprocessing_normalisation_and_labels(hub):
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    cache(weights, torchvision.models.resnet18())
    adapter = load_model(ModelConfig(name="resnet18", weights="IMAGENET1K_V1", device="cpu"))
    assert adapter.source == "torchvision" and adapter.description == f"torchvision resnet18 ({weights})"
    t = weights.transforms()
    pre = adapter.preprocess(Preprocess(from_weights=True))
    assert (pre.resize, pre.center_crop, pre.interpolation) == (tuple(t.resize_size), tuple(t.crop_size),
                                                                 t.interpolation.value)
    assert adapter.normalize(Preprocess(from_weights=True)) == Normalize(mean=tuple(t.mean), std=tuple(t.std))
    assert adapter.categories == list(weights.meta["categories"])
    labels, note = load_labels("imagenet", 1000, adapter.categories)
    assert labels == adapter.categories and note == ""
    random = load_model(ModelConfig(name="resnet18", device="cpu"))
    assert random.categories is None and random.description == "torchvision resnet18 (random weights)"
    with pytest.raises(ReportgenError, match=r"^`inputs.preprocess: from_weights` needs torchvision weights "
                                             r"\(`model.weights`\)\.$"):
        random.preprocess(Preprocess(from_weights=True))


def test_labels_from_categories_and_the_imagenet_fallback():
    assert load_labels("imagenet", 3, ["a", "b", "c"]) == (["a", "b", "c"], "")
    labels, note = load_labels("imagenet", 4, ["a", "b", "c"])
    assert labels is None and "do not fit" in note
    assert load_labels("imagenet", 1000)[0][0] == "tench"  # torchvision's ImageNet list
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1  # old callers pass the weights enum
    assert load_labels("imagenet", 1000, weights)[0] == list(weights.meta["categories"])
    assert load_labels(None, 3, ["a", "b", "c"]) == (None, "")


def test_torchscript_takes_no_hooks_and_says_so_in_one_place(tmp_path):
    torch.jit.save(torch.jit.script(tiny()), tmp_path / "m.ts")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's deprecation note of torch.jit.load stays off the terminal
        adapter = load_model(ModelConfig(source="torchscript", path=tmp_path / "m.ts", device="cpu"))
    assert adapter.source == "torchscript" and not adapter.hooks
    assert adapter.forward(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    error = adapter.refuse_hooks("guided_backprop", key="analyses.gradients")
    assert isinstance(error, ReportgenError)
    assert str(error) == ("`analyses.gradients`: guided_backprop needs hooks on the model's layers, which a "
                          "TorchScript model does not take. Load the model from Python (`model.source: module`) "
                          "or leave this out.")
    assert "guided_backprop, deconvnet need hooks" in str(adapter.refuse_hooks("guided_backprop, deconvnet",
                                                                               plural=True))


def test_sources_registry_one_record_adds_a_source(use_source):
    calls = []

    def fake(cfg, base_dir):
        calls.append(base_dir)
        return ModelAdapter(model=TwoOutputs(), source="fake", description="a fake", categories=["a", "b", "c"])

    use_source("fake", fake)
    adapter = load_model(OutputConfig(source="fake", device="cpu", output=0), base_dir=Path("/somewhere"))
    assert calls == [Path("/somewhere")] and adapter.source == "fake" and not adapter.model.training
    assert adapter.output == 0 and adapter.forward(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    with pytest.raises(ReportgenError, match="`model.source`: `fak` is not a model source. Did you mean `fake`"):
        load_model(ModelConfig(source="fak", device="cpu"))


# ---- a. model.kwargs reach torchvision's builder


def test_torchvision_kwargs_reach_the_builder_and_a_10_class_checkpoint_fits(tmp_path):
    reference = torchvision.models.resnet18(num_classes=10)
    torch.save(reference.state_dict(), tmp_path / "ten.pt")
    adapter = load_model(ModelConfig(name="resnet18", kwargs={"num_classes": 10}, checkpoint=tmp_path / "ten.pt",
                                     device="cpu"))
    assert adapter.model.fc.out_features == 10
    assert torch.equal(adapter.model.fc.weight, reference.fc.weight)
    assert adapter.description == "torchvision resnet18(num_classes=10) (random weights), checkpoint ten.pt"
    assert adapter.forward(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_a_bad_torchvision_kwarg_is_one_error_naming_model_kwargs(hub):
    with pytest.raises(ReportgenError, match=r"^`model.kwargs`: torchvision's resnet18\(colour='red'\) failed: "
                                             r".*unexpected keyword argument 'colour'"):
        load_model(ModelConfig(name="resnet18", kwargs={"colour": "red"}, device="cpu"))
    cache(torchvision.models.ResNet18_Weights.IMAGENET1K_V1, torchvision.models.resnet18())
    with pytest.raises(ReportgenError, match=r"^`model.kwargs`: .*num_classes.* the weights "
                                             r"ResNet18_Weights.IMAGENET1K_V1 fix it"):
        load_model(ModelConfig(name="resnet18", weights="IMAGENET1K_V1", kwargs={"num_classes": 10}, device="cpu"))


# ---- b. checkpoints that need full unpickling are named for what they are; nothing in them runs


class Custom:
    def __init__(self):
        self.tensor = torch.zeros(2)


class OrderedState(collections.OrderedDict):
    pass


class Marker:
    """Unpickling this creates the file `path`: code from the checkpoint running."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _state():
    return tiny().state_dict()


@pytest.mark.parametrize("case, content, named", [
    ("custom class", lambda: {"state_dict": _state(), "extra": Custom()}, "tests.test_models.Custom"),
    ("OrderedDict subclass", lambda: OrderedState(_state()), "tests.test_models.OrderedState"),
    ("argparse.Namespace", lambda: {"state_dict": _state(), "args": argparse.Namespace(lr=0.1)},
     "argparse.Namespace"),
    ("whole module", lambda: tiny(), "torch.nn.modules.container.Sequential"),
])
def test_checkpoints_with_python_objects_say_so_and_name_the_way_out(tmp_path, case, content, named):
    path = tmp_path / "ckpt.pt"
    torch.save(content(), path)
    with pytest.raises(ReportgenError) as err:
        load_checkpoint(tiny(), path)
    message = str(err.value)
    assert message.startswith("`model.checkpoint`: ckpt.pt holds Python objects beyond tensors (")
    assert named in message and "needs full unpickling" in message
    assert "would run code from the file" in message and "`model.trust_checkpoint: true`" in message
    assert "not a PyTorch checkpoint" not in message
    load_checkpoint(tiny(), path, trust=True)  # trusted, it loads


def test_nothing_in_an_untrusted_checkpoint_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name, save in [("torch.pt", lambda p, obj: torch.save(obj, p)),
                       ("legacy.pt", lambda p, obj: torch.save(obj, p, _use_new_zipfile_serialization=False)),
                       ("plain.pkl", lambda p, obj: p.write_bytes(pickle.dumps(obj, protocol=4)))]:
        path = tmp_path / name
        save(path, {"state_dict": _state(), "hook": Marker(marker)})
        assert not marker.exists()
        with pytest.raises(ReportgenError, match="holds Python objects beyond tensors .*open.* Refused: nothing "
                                                 "in it ran"):
            load_model(ModelConfig(source="module", factory="tests.test_models:tiny", checkpoint=path,
                                   device="cpu"))
        assert not marker.exists(), name
    load_checkpoint(tiny(), tmp_path / "torch.pt", trust=True)  # trusted, it is unpickled: the marker appears
    assert marker.exists()


def test_a_tensor_only_pickle_the_safe_loader_cannot_read_is_not_called_garbage(tmp_path):
    path = tmp_path / "p4.pt"
    torch.save(_state(), path, pickle_protocol=4)  # opcodes weights_only does not read
    with pytest.raises(ReportgenError, match=r"p4.pt is a Python pickle that the safe loader "
                                             r"\(`torch.load\(weights_only=True\)`\) cannot read \(Unsupported "
                                             r"operand 149\), so it needs full unpickling"):
        load_checkpoint(tiny(), path)
    load_checkpoint(tiny(), path, trust=True)


@pytest.mark.parametrize("content", [b"nope", b"\xff\xd8\xff\xe0 a jpeg", b"PK\x03\x04 broken zip", b""])
def test_files_that_are_no_checkpoint_say_so(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(content)
    with pytest.raises(ReportgenError, match=r"`model.checkpoint`: .*ckpt.pt is not a PyTorch checkpoint"):
        load_checkpoint(tiny(), path)


# ---- c. torchvision's warnings stay off the terminal


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_building_googlenet_and_inception_raises_no_warning(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adapter = load_model(ModelConfig(name=name, device="cpu"))
        if name == "googlenet":  # in eval mode GoogLeNet returns the logits tensor, aux heads unused
            assert adapter.forward(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


# ---- d. tuple and dict outputs with `model.output`


@pytest.mark.parametrize("factory, output", [("TwoOutputs", 0), ("TwoOutputs", -2), ("DictOutput", "logits")])
def test_model_output_picks_the_logits(factory, output):
    adapter = load_model(OutputConfig(source="module", factory=f"tests.test_models:{factory}", output=output,
                                      device="cpu"))
    x = torch.rand(2, 3, 8, 8)
    logits = adapter.forward(x)
    torch.testing.assert_close(logits, adapter.model.body(x))
    out = adapter.model(x)  # an output computed elsewhere (the pipeline's hooked forward)
    assert adapter.pick_logits(out) is (out[output])


def test_without_model_output_a_tuple_or_dict_is_a_clear_error():
    x = torch.zeros(1, 3, 8, 8)
    two = load_model(ModelConfig(source="module", factory="tests.test_models:TwoOutputs", device="cpu"))
    with pytest.raises(ReportgenError) as err:
        two.forward(x)
    assert str(err.value) == ("the model returns a tuple of 2: [0] Tensor (1, 3), [1] Tensor (1, 4), not a logits "
                              "tensor of shape (N, num_classes). Set `model.output: <index or key>` to the one "
                              "that holds the logits: `0` or `1`.")
    with pytest.raises(ReportgenError, match=r"a dict with keys 'logits' Tensor \(1, 3\), 'aux' Tensor \(1, 4\).* "
                                             r"Set `model.output: <index or key>`.*`logits` or `aux`"):
        pick_logits(DictOutput()(x))


def test_an_object_with_logits_needs_no_model_output_and_bad_choices_are_named():
    x = torch.zeros(1, 3, 8, 8)
    model = ObjectOutput()
    assert pick_logits(model(x)).shape == (1, 3)
    assert pick_logits(model(x), "hidden_states").shape == (1, 4)
    with pytest.raises(ReportgenError, match=r"`model.output`: 'logit' is not in the model's output, a dict .* "
                                             r"Did you mean `logits`\? Valid: logits, aux\."):
        pick_logits(DictOutput()(x), "logit")
    with pytest.raises(ReportgenError, match=r"`model.output`: 2 is not in the model's output, a tuple of 2"):
        pick_logits(TwoOutputs()(x), 2)
    with pytest.raises(ReportgenError, match=r"`model.output` is 0, but the model returns a tensor \[1, 3\]: "
                                             r"leave `model.output` out"):
        pick_logits(tiny()(x), 0)
    with pytest.raises(ReportgenError, match=r"the model's output `1` is \[1, 2, 2\]; reportgen explains "
                                             r"classifiers with logits of shape \(N, num_classes\)"):
        pick_logits((torch.zeros(1, 3), torch.zeros(1, 2, 2)), 1)
    with pytest.raises(ReportgenError, match=r"`model.output`: 1 picks a str from the model's output"):
        pick_logits((torch.zeros(1, 3), "text"), 1)
    with pytest.raises(ReportgenError, match=r"the model returns None, not a logits tensor"):
        pick_logits(None)
    assert pick_logits((torch.zeros(1, 3), torch.zeros(1, 4)), "0").shape == (1, 3)  # `--set model.output=0`


# ---- c. a checkpoint that overwrites every tensor: the model is built on the meta device, no initialisation


def _normally(cfg: ModelConfig) -> nn.Module:
    """The model as the ordinary path loads it: built (initialised), then the checkpoint copied in."""
    model = SOURCES[cfg.source].load(cfg, None).model
    load_checkpoint(model, cfg.checkpoint)
    return model.eval()


def _spy_meta(monkeypatch) -> list:
    """Records what the meta-device path returned (None: it fell back to the ordinary path)."""
    import reportgen.models as models

    outcomes: list = []
    real = models._load_skipping_init
    monkeypatch.setattr(models, "_load_skipping_init", lambda *a: outcomes.append(real(*a)) or outcomes[-1])
    return outcomes


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_checkpoint_skips_initialisation_and_loads_the_same_model(tmp_path, monkeypatch, dtype):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(num_classes=7)
    reference.train()(torch.randn(4, 3, 32, 32))  # BatchNorm statistics and num_batches_tracked that differ from init
    torch.save({"state_dict": {k: (v.to(dtype) if v.is_floating_point() else v)
                               for k, v in reference.state_dict().items()}}, tmp_path / "r18.pt")
    cfg = ModelConfig(name="resnet18", kwargs={"num_classes": 7}, checkpoint=tmp_path / "r18.pt", device="cpu")
    outcomes = _spy_meta(monkeypatch)
    model = load_model(cfg).model
    assert outcomes and outcomes[0] is not None  # the meta path was taken
    normal = _normally(cfg)
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    ours, theirs = model.state_dict(), normal.state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in normal.parameters()]
    assert not model.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), normal(x))


def test_a_checkpoint_keeps_the_layer_versions_its_model_reads_on_the_meta_path(tmp_path, monkeypatch):
    """MNASNet's `_load_from_state_dict` reads its version from the state dict's metadata (and refuses none)."""
    torch.manual_seed(4)
    reference = torchvision.models.mnasnet0_5().eval()
    torch.save(reference.state_dict(), tmp_path / "m.pt")
    outcomes = _spy_meta(monkeypatch)
    model = load_model(ModelConfig(name="mnasnet0_5", checkpoint=tmp_path / "m.pt", device="cpu")).model
    assert outcomes and outcomes[0] is not None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_a_checkpoint_that_does_not_fit_says_the_same_on_the_meta_path(tmp_path, monkeypatch):
    state = torchvision.models.resnet18().state_dict()
    del state["layer1.0.bn1.num_batches_tracked"], state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "bad.pt")
    cfg = ModelConfig(name="resnet18", checkpoint=tmp_path / "bad.pt", device="cpu")
    with pytest.raises(ReportgenError) as ordinary:
        _normally(cfg)
    with pytest.raises(ReportgenError) as ours:
        load_model(cfg)
    assert str(ours.value) == str(ordinary.value)
    assert str(ours.value).startswith("`model.checkpoint`: bad.pt does not match the model: missing: "
                                      "layer1.0.bn1.num_batches_tracked, fc.bias; unexpected: extra.weight; "
                                      "wrong shape (file vs model): conv1.weight (64, 3, 5, 5) vs (64, 3, 7, 7).")


@pytest.mark.parametrize("name, weights, kwargs", [
    ("resnet18", "ResNet18_Weights", {}), ("googlenet", "GoogLeNet_Weights", {}),
    ("googlenet", "GoogLeNet_Weights", {"aux_logits": True, "transform_input": False}),
    ("inception_v3", "Inception_V3_Weights", {}), ("densenet121", "DenseNet121_Weights", {}),
    ("mnasnet0_5", "MNASNet0_5_Weights", {}), ("vgg11", "VGG11_Weights", {})])
def test_cached_weights_skip_initialisation_and_load_what_torchvisions_builder_loads(hub, monkeypatch, name, weights,
                                                                                       kwargs):
    """The reference is torchvision's own builder given the weights (it reads the file the test wrote into the
    private hub): the same arguments implied, old DenseNet names renamed, auxiliary heads dropped or kept."""
    enum = getattr(torchvision.models, weights).IMAGENET1K_V1
    torch.manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = {"aux_logits": True, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        state = torchvision.models.get_model(name, **full).state_dict()
    if name == "densenet121":  # torchvision's file is older than BatchNorm's num_batches_tracked, and holds the
        state = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v  # old names, which its builder renames
                 for k, v in state.items() if not k.endswith("num_batches_tracked")}
        assert "features.denseblock1.denselayer1.norm.1.weight" in state
    path = weights_cache_path(enum)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    outcomes = _spy_meta(monkeypatch)
    model = load_model(ModelConfig(name=name, weights="IMAGENET1K_V1", kwargs=kwargs, device="cpu")).model
    assert outcomes and outcomes[0] is not None  # the meta path was taken
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        normal = torchvision.models.get_model(name, weights=enum, **kwargs).eval()
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    ours, theirs = model.state_dict(), normal.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    for flag in ("transform_input", "aux_logits"):
        assert getattr(model, flag, None) == getattr(normal, flag, None)
    for head in ("aux1", "aux2", "AuxLogits"):
        assert (getattr(model, head, None) is None) == (getattr(normal, head, None) is None)
    size = 299 if name == "inception_v3" else 64
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(pick_logits(model(x)), pick_logits(normal(x)))


class _Scaled(nn.Module):
    """A buffer outside the state dict (persistent=False): a checkpoint cannot fill it."""

    def __init__(self):
        super().__init__()
        self.net = tiny()
        self.register_buffer("scale", torch.full((1,), 2.0), persistent=False)

    def forward(self, x):
        return self.net(x) * self.scale


def _tied() -> nn.Module:
    model = nn.Sequential(tiny(), nn.Linear(3, 3), nn.Linear(3, 3))
    model[2].weight = model[1].weight
    return model


@pytest.mark.parametrize("build", [_Scaled, _tied])
def test_what_a_checkpoint_cannot_fill_falls_back_to_the_ordinary_path(tmp_path, monkeypatch, use_source, build):
    torch.manual_seed(3)
    reference = build()
    torch.save(reference.state_dict(), tmp_path / "m.pt")
    use_source("torchvision", lambda cfg, base_dir: ModelAdapter(model=build(), source="torchvision"))
    outcomes = _spy_meta(monkeypatch)
    model = load_model(ModelConfig(name="resnet18", checkpoint=tmp_path / "m.pt", device="cpu")).model
    assert outcomes == [None]  # it fell back
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), reference.eval()(x))
    if build is _tied:
        assert model[2].weight is model[1].weight


def test_a_factory_is_built_as_it_says_even_with_a_checkpoint(tmp_path, monkeypatch):
    torch.save(tiny().state_dict(), tmp_path / "t.pt")
    outcomes = _spy_meta(monkeypatch)
    model = load_model(ModelConfig(source="module", factory="tests.test_models:tiny", checkpoint=tmp_path / "t.pt",
                                   device="cpu", labels=None)).model
    assert outcomes == [] and torch.equal(model[0].weight, tiny()[0].weight)


# ---- d. torchvision is imported, and a checkpoint's model loaded, without torch._dynamo (1-2 s of a build's start)


@pytest.mark.slow  # a fresh interpreter imports torch twice
def test_torchvision_imports_without_dynamo_and_still_works(tmp_path):
    import subprocess
    import sys

    script = """
import sys, torch
from reportgen.models.torchvision import import_models
tvm = import_models()
assert "torch._dynamo" not in sys.modules and "torch._dynamo.utils" not in sys.modules, "dynamo imported"
assert tvm.resnet18 and "resnet18" in tvm.list_models()
from pathlib import Path
from reportgen.config import ModelConfig
from reportgen.models import load_model, weights_cache_path
torch.save(tvm.resnet18().state_dict(), Path(sys.argv[1]) / "r18.pt")
initialiser = torch.nn.init.kaiming_normal_
load_model(ModelConfig(name="resnet18", checkpoint=Path(sys.argv[1]) / "r18.pt", device="cpu", labels="imagenet"))
torch.hub.set_dir(sys.argv[1])
cached = weights_cache_path(tvm.ResNet18_Weights.IMAGENET1K_V1)
cached.parent.mkdir()
torch.save(tvm.resnet18().state_dict(), cached)
load_model(ModelConfig(name="resnet18", weights="IMAGENET1K_V1", device="cpu", labels="imagenet"))
assert torch.nn.init.kaiming_normal_ is initialiser  # nothing replaced
assert "torch._dynamo" not in sys.modules, "dynamo imported by the model's load"
import torchvision
boxes = torch.tensor([[0, 0, 0, 4, 4.0]])
assert torchvision.ops.roi_align(torch.randn(1, 2, 8, 8), boxes, 2).shape == (1, 2, 2, 2)
stand_in = sys.modules["torchvision.ops.roi_align"].is_compile_supported
assert stand_in("cpu") in (True, False)  # the real function, imported now
from torch._dynamo.utils import is_compile_supported
assert type(sys.modules["torch._dynamo.utils"]).__name__ == "module" and hasattr(sys.modules["torch._dynamo.utils"], "__file__")
assert stand_in("cpu") == is_compile_supported("cpu")
print("ok")
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, cwd=root,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
