"""The `insight` stage's concepts and feature space (`stages.insight_parts`): a build's concept maps are
pytorch-grad-cam's `dff` of the sample's activations where they were fitted and their NNLS projection elsewhere, its
feature map is the exact PCA of the classifier head's inputs, each mistake's neighbours are the nearest correct
images, and bad input exits 2 with nothing written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from reportgen.demo import shapes
from reportgen.hooks import capture_outputs
from reportgen.metrics import concepts, feature_space
from tests.test_insight import SHIPPED, build, shapes_project

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("sklearn")

LAYER = "features.2"


def activations(root, names, layers):
    """The shipped model's outputs of `layers` for the images `names` (the manifest's files), computed here."""
    model = shapes.load_model(SHIPPED / "model.pt")
    x = shapes.to_input(np.stack([np.asarray(Image.open(root / f"{n}.png").convert("RGB")) for n in names]))
    with torch.no_grad(), capture_outputs(model, layers) as out:
        model(x)
    return {name: out[name].float().numpy() for name in layers}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("insight-parts")
    config = shapes_project(root, n=40, concepts=3, concept_layer=LAYER, concept_sample=12, concept_fit=6,
                            neighbours=2)
    config["inputs"]["batch_size"] = 7  # batches that split the sample
    done = build(root, config)
    assert done.exit_code == 0, done.output
    with np.load(root / "out" / "arrays.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k.startswith("insight/")}
    return root, json.loads((root / "out" / "report.json").read_text())["insight"], arrays


def test_concepts_are_dff_where_fitted_and_nnls_elsewhere(built):
    root, ev, arrays = built
    k = ev["concepts"]
    assert k["layer"] == LAYER and k["concepts"] == 3 and k["fitted"] == 6 and 6 < k["sample"] <= 12 + 6
    acts = activations(root, k["images"], [LAYER])[LAYER].astype(np.float16).astype(np.float32)  # stored as float16
    fitted = concepts.fit_concepts(acts[:6], 3, seed=0, layer=LAYER)
    heat = arrays["insight/concepts/heat_maps"]
    assert heat.shape == (k["sample"], 3, *acts.shape[2:])
    np.testing.assert_allclose(heat[:6], fitted.heat_maps, atol=1e-4 * max(1.0, np.abs(fitted.heat_maps).max()))
    projected = concepts.project(fitted, acts[6:])
    np.testing.assert_allclose(heat[6:], projected, atol=1e-4 * max(1.0, np.abs(projected).max()))
    assert all(abs(sum(v) - 1) < 1e-3 for v in k["shares"].values())  # each class's shares sum to 1


def test_the_feature_map_is_the_pca_of_the_heads_inputs_and_mistakes_list_their_nearest_correct(built):
    root, ev, arrays = built
    space = ev["feature_space"]
    assert space["projection"] == "pca" and space["images"] == 40
    names = [f"s{i:03d}" for i in arrays["insight/feature_space/images"].astype(int)]
    pooled = activations(root, names, ["pool"])["pool"].reshape(40, -1)  # the head's input (`fc` reads it)
    stored = feature_space.as_storage(pooled)
    # the features are stored as float16, and the build's batched forward may round a last bit otherwise than ours
    ours = feature_space.pca_2d(stored)
    np.testing.assert_allclose(arrays["insight/feature_space/xy"], ours, atol=1e-3 * np.abs(ours).max())
    truth = np.array([int(line.split(",")[1]) for line in (root / "set.csv").read_text().splitlines()[1:]])[
        arrays["insight/feature_space/images"].astype(int)]
    model = shapes.load_model(SHIPPED / "model.pt")
    with torch.no_grad():
        predicted = model.fc(torch.as_tensor(pooled)).argmax(1).numpy()
    expected = feature_space.nearest_correct(stored, truth, predicted, 2)
    assert [m["image"] for m in space["mistakes"]] == [names[i] for i, _ in expected]
    for m, (_, near) in zip(space["mistakes"], expected):
        assert [n["image"] for n in m["nearest_correct"]] == [names[j] for j, _ in near]


def test_the_section_draws_the_concepts_and_the_scatter(built):
    root, ev, _ = built
    html = (root / "out" / "report.html").read_text()
    assert "<h3>Concepts</h3>" in html and html.count("<h4>Concept ") == 3
    assert 'id="insight-scatter"' in html and "scatter-data" in html
    assert "Leans on" in html


@pytest.mark.parametrize("insight, message", [
    ({"concepts": 2, "concept_layer": "fc"}, "`fc` has no spatial output"),
    ({"features": "nope"}, "no layer `nope`"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, insight, message):
    done = build(tmp_path, shapes_project(tmp_path, n=6, **insight))
    assert done.exit_code == 2, done.output
    assert message in done.output and not (tmp_path / "out").exists()


def test_umap_without_its_extra_names_it(tmp_path):
    # umap-learn is not in the test extra: the message is what a user without it sees
    try:
        import umap  # noqa: F401
    except ImportError:
        done = build(tmp_path, shapes_project(tmp_path, n=6, projection="umap"))
        assert done.exit_code == 2 and "pip install 'reportgen[umap]'" in done.output
        assert not (tmp_path / "out").exists()
    else:
        pytest.fail("umap-learn is installed here: this test checks the message without it")
