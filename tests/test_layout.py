"""Every page type at a phone's and two desktop widths, in headless Chromium (the harness of tests/test_browser.py).

The pages are built once for the module: a report with every section the shapes demo builds (the data set
overview and the evaluation included, true classes from an ImageFolder), a second report of the same images for
`reportgen compare`, the site index of both, and a report of the shipped tiny ViT with the attention section.
On every page and width: the page never scrolls sideways, nothing in `main` lies outside it unless it is inside
a table's own scroll box, and only tables scroll sideways in their box (figure strips wrap). On desktop widths
`main` takes most of the window, and on a report no box scrolls sideways at all: every figure of a strip and
every column of a table is in view. (The site index's table has a column per headline metric of any of its
reports, dozens with the evaluation: it may scroll in its own box on any width.)
"""
from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from reportgen.cli import main
from tests.test_browser import ROOT, driver, js, open_page, save_screenshot  # noqa: F401 (driver: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = ROOT / "example_configs" / "shapes"
WIDTHS = (375, 1400, 1920)
DESKTOP = 1000  # px: from here on a width counts as a desktop's
CLASSES = ("circle", "square", "triangle", "cross", "star")


def _shapes_config(title: str, folder, analyses: dict, *, trained: bool = True) -> dict:
    model = {"source": "module", "factory": "reportgen.demo.shapes:build_model", "kwargs": {"num_classes": 5},
             "input_size": [3, 64, 64], "labels": str(SHAPES / "labels.txt"), "device": "cpu"}
    if trained:
        model["checkpoint"] = str(SHAPES / "model.pt")
    return {"title": title, "seed": 0, "model": model,
            "inputs": {"images": [str(folder / "images")], "top_k": 3,
                       "preprocess": {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}},
            "analyses": analyses, "report": {"detail": {"budget": 3}},
            "output": {"dir": str(folder / "out"), "save_arrays": True}}


def _build(folder, config: dict, name: str):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    done = CliRunner().invoke(main, ["build", str(path), "-o", str(folder / name), "-q"])
    assert done.exit_code == 0, done.output
    return folder / name


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict:
    """page type -> its HTML file, each built once."""
    root = tmp_path_factory.mktemp("layout")
    for label in CLASSES:  # an ImageFolder: every image has its true class
        (root / "images" / label).mkdir(parents=True)
        shutil.copy(SHAPES / "images" / f"{label}_0.png", root / "images" / label)
    full = {"summary": {"depth": 3},
            "kernels": {"layers": ["features.0.0"], "optimize": {"layers": ["features.2.0"], "filters": [0, 1, 2, 3]}},
            "feature_maps": {"max_channels": 16},
            "cam": {"methods": ["cam", "gradcam", "gradcampp", "layercam", "scorecam", "eigencam"], "targets": "top1"},
            "gradients": {"methods": ["saliency", "guided_backprop", "guided_gradcam", "smoothgrad",
                                      "integrated_gradients"]},
            "training": {"logs": [str(SHAPES / "train_log.csv"), str(SHAPES / "metrics.csv")]},
            "evaluation": {"step": 1024, "images": 3, "sanity": {"images": 1}},
            "dataset": {}}
    a = _build(root, _shapes_config("Every section", root, full), "a")
    cheap = {"summary": {}, "cam": {"methods": ["gradcam"]}, "gradients": {"methods": ["saliency"]}}
    b = _build(root, _shapes_config("Re-initialised", root, cheap, trained=False), "b")
    done = CliRunner().invoke(main, ["compare", str(a), str(b), "-o", str(root / "cmp")])
    assert done.exit_code == 0, done.output
    done = CliRunner().invoke(main, ["site", str(a), str(b), "-o", str(root / "site")])
    assert done.exit_code == 0, done.output
    vit = {"title": "Attention", "seed": 0,
           "model": {"source": "huggingface", "path": str(ROOT / "example_configs" / "hf_tiny_vit"),
                     "input_size": [3, 64, 64], "labels": "imagenet", "device": "cpu"},
           "inputs": {"images": [str(ROOT / "example_configs" / "grace_hopper.jpg")], "preprocess": "from_weights"},
           "analyses": {"attention": {}, "cam": {"methods": ["gradcam"]}}, "output": {"dir": str(root / "out")}}
    attention = _build(root, vit, "vit")
    done = CliRunner().invoke(main, ["build", str(ROOT / "example_configs" / "segmentation.yaml"), "-o",
                                     str(root / "seg"), "-q"])
    assert done.exit_code == 0, done.output
    done = CliRunner().invoke(main, ["build", str(ROOT / "example_configs" / "detection.yaml"), "-o",
                                     str(root / "det"), "-q", "--set", "analyses.cam.drise_masks=50",
                                     "--set", "analyses.evaluation.images=2"])
    assert done.exit_code == 0, done.output
    return {"report": a / "report.html", "compare": root / "cmp" / "compare.html",
            "site": root / "site" / "index.html", "attention": attention / "report.html",
            "segmentation": root / "seg" / "report.html", "detection": root / "det" / "report.html"}


# What lies outside `main` (and is not inside a table's own scroll box), and every box that scrolls sideways.
LAYOUT = """
const main = document.querySelector('main'), box = main.getBoundingClientRect();
const own = e => e.closest('.table-wrap, .scroll-x, table.data, pre');
const name = e => {
  const section = e.closest('section');
  return `${section ? '#' + section.id + ' ' : ''}${e.tagName.toLowerCase()}.${[...e.classList].join('.')}` +
         (e.getAttribute('alt') ? ` "${e.getAttribute('alt').slice(0, 40)}"` : '');
};
const shown = [...main.querySelectorAll('*')].filter(e => e.getClientRects().length && !e.closest('details:not([open])'));
const outside = shown.filter(e => {
  const r = e.getBoundingClientRect();
  if (own(e.parentElement || e)) return false;  // inside a table's own scroll box
  return r.right > box.right + 1 || r.left < box.left - 1;
}).map(e => `${name(e)} ${Math.round(e.getBoundingClientRect().right)} > ${Math.round(box.right)}`);
// text that runs out of its box (a long unbroken name) shows in no element's box: its box's scrollWidth
const spills = shown.filter(e => getComputedStyle(e).display !== 'inline' && getComputedStyle(e).overflowX === 'visible'
  && e.scrollWidth > e.clientWidth + 1 && !own(e)).map(e => `${name(e)} holds ${e.scrollWidth} px in ${e.clientWidth}`);
const scrolls = shown.filter(e => /auto|scroll/.test(getComputedStyle(e).overflowX) && e.scrollWidth > e.clientWidth + 1)
  .map(e => ({what: name(e), table: !!own(e)}));
return {inner: innerWidth, scroll: document.documentElement.scrollWidth, main: box.width,
        outside: outside.concat(spills).slice(0, 20), scrolls};
"""


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("page", ["report", "site", "compare", "attention", "segmentation", "detection"])
def test_every_page_fits_its_window(driver, pages, page, width):
    open_page(driver, pages[page], width=width, height=900)
    layout = js(driver, LAYOUT)
    # the page never scrolls sideways (a phone's browser widens the page to its content instead of scrolling)
    assert layout["inner"] == width and layout["scroll"] <= layout["inner"], layout
    assert layout["outside"] == [], layout["outside"]
    assert [s for s in layout["scrolls"] if not s["table"]] == [], layout["scrolls"]  # only a table in its own box
    if width >= DESKTOP:
        assert layout["main"] / layout["inner"] >= 0.6, layout
        if page in ("report", "attention"):  # a report's tables all fit a desktop: every column in view
            assert layout["scrolls"] == [], layout["scrolls"]
        if page == "report":  # a chart is shown at its drawn size: the confusion matrix's counts stay readable
            shown, drawn = js(driver, """const i = document.querySelector('#dataset img[alt^="Confusion matrix"]');
                return [i.getBoundingClientRect().height, +i.getAttribute('height')];""")
            assert shown >= drawn - 1, (shown, drawn)
    save_screenshot(driver, f"layout-{page}-{width}.png")


def test_the_report_has_every_section_the_layout_tests_mean_to_cover(pages):
    text = pages["report"].read_text()
    for section in ("summary", "kernels", "feature_maps", "cam", "gradients", "training", "evaluation", "dataset"):
        assert f'id="{section}"' in text, section
    assert 'id="attention"' in pages["attention"].read_text()
    assert pages["compare"].read_text().count("<img") >= 3  # A, B and B − A of at least one map


# ---------------------------------------------------------------------------------------------------------------
# what the report's figures and cards draw (no browser)


def test_the_confusion_matrix_grows_with_its_classes_so_each_count_stays_readable():
    import numpy as np

    from reportgen.figures.dataset import plot_confusion

    for k in (5, 10, 20, 30):
        matrix = np.diag(np.arange(1, k + 1))
        fig = plot_confusion(matrix, tuple(f"c{i}" for i in range(k)))
        assert fig.height / k >= 55 and fig.width >= fig.height, (k, fig.width, fig.height)  # px per class


def test_training_curves_draw_the_logged_values_bold_and_the_smoothed_curve_light_beneath():
    import numpy as np
    from matplotlib.figure import Figure as MplFigure

    from reportgen.figures.training import draw_curves
    from reportgen.stages import training

    values = np.array([0.2, 0.5, 0.7, 0.8, 0.85, 0.88, 0.9, 0.9, 0.905, 0.906], dtype=np.float32)
    series = training.Series(run="r", tag="val_accuracy", steps=np.arange(1, 11, dtype=np.int64), values=values,
                             smoothed=training.smooth(values, 0.6), wall_times=np.full(10, np.nan))
    ax = MplFigure().add_subplot()
    draw_curves(ax, [series], 0.6)
    raw, smoothed = ax.lines
    assert np.array_equal(raw.get_ydata(), values) and not np.array_equal(smoothed.get_ydata(), values)
    assert raw.get_linewidth() > smoothed.get_linewidth()
    assert (raw.get_alpha() or 1.0) == 1.0 and smoothed.get_alpha() < 0.5
    assert raw.get_zorder() > smoothed.get_zorder()  # the logged values on top
    assert raw.get_label() == "r"


def test_each_detail_card_shows_the_truth_and_whether_the_prediction_is_right(project):
    import json
    import re

    from tests.conftest import labelled_folder

    config = labelled_folder(project, 2, seed=40)
    done = CliRunner().invoke(main, ["build", str(project.write(config)), "-q"])
    assert done.exit_code == 0, done.output
    records = {r["name"]: r for r in map(json.loads, (project.root / "out" / "images.jsonl").read_text().splitlines())}
    html = (project.root / "out" / "report.html").read_text()
    cards = re.findall(r'<article id="[^"]*" class="card"[^>]*>\s*<h3[^>]*>([^<]*)</h3>(.*?)</article>', html, re.S)
    assert len(cards) == len(records) == 6
    marks = set()
    for name, body in cards:
        record = records[name]
        right = record["top_k"][0]["index"] == record["truth"]["index"]
        truth = re.search(r'<p class="truth">Truth: ([^<]*) <span class="muted">#(\d+)</span> <span class="(yes|no)">', body)
        assert truth, body
        assert (truth.group(1), int(truth.group(2))) == (record["truth"]["label"], record["truth"]["index"])
        assert truth.group(3) == ("yes" if right else "no"), name
        marks.add(truth.group(3))
    assert marks == {"yes", "no"}  # the untrained network gets some right and some wrong


def test_a_card_without_a_true_class_shows_no_truth(project):
    done = CliRunner().invoke(main, ["build", str(project.write()), "-q"])
    assert done.exit_code == 0, done.output
    html = (project.root / "out" / "report.html").read_text()
    assert html.count('class="card"') == 2 and 'class="truth"' not in html
