"""HTML: one Jinja environment (autoescape, StrictUndefined), its filters beside it, one render function."""
from __future__ import annotations

import base64
import hashlib
from importlib import resources
from pathlib import Path

import yaml
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .figures.common import Figure, make_figure, upscale_nearest

STAGE_TITLES = {
    "summary": "Model summary",
    "kernels": "Convolution kernels",
    "feature_maps": "Feature maps",
    "cam": "Class activation maps",
    "gradients": "Gradient saliency",
    "training": "Training curves",
}


def templates_dir() -> Path:
    """The templates shipped in the wheel (`reportgen/templates`), or the repo's `templates/` folder."""
    try:
        packaged = resources.files("reportgen.templates")
        if packaged.joinpath("report.html.jinja2").is_file():
            return Path(str(packaged))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "templates"


class _Images:
    """Turns Figures into `src` values: data: URIs (self-contained) or files under assets/."""

    def __init__(self, self_contained: bool):
        self.self_contained = self_contained
        self.assets: dict[str, bytes] = {}

    def src(self, png: bytes) -> str:
        if self.self_contained:
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        name = hashlib.sha256(png).hexdigest()[:20] + ".png"
        self.assets[name] = png
        return "assets/" + name


def _intcomma(value) -> str:
    return f"{int(value):,}"


def _shape(value) -> str:
    return "×".join(str(v) for v in value) if value else "–"


def make_environment(images: _Images) -> Environment:
    env = Environment(
        loader=ChoiceLoader([FileSystemLoader(str(templates_dir()))]),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["src"] = lambda fig: images.src(fig.png)
    env.filters["thumb_src"] = lambda fig: images.src(fig.thumb or fig.png)
    env.filters["intcomma"] = _intcomma
    env.filters["shape"] = _shape
    env.filters["pct"] = lambda v, digits=1: f"{100 * float(v):.{digits}f}%"
    env.filters["num"] = lambda v, digits=3: f"{float(v):.{digits}g}"
    return env


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def section_figures(section) -> list[Figure]:
    """Every Figure inside a section's data (dicts, lists, tuples, dataclass-free), in order."""
    found: list[Figure] = []
    if isinstance(section, Figure):
        found.append(section)
    elif isinstance(section, dict):
        for value in section.values():
            found.extend(section_figures(value))
    elif isinstance(section, (list, tuple)):
        for value in section:
            found.extend(section_figures(value))
    return found


def render_report(config, ctx, runs, report_data: dict) -> tuple[str, dict[str, bytes]]:
    """(HTML text, assets for the non-self-contained mode)."""
    images = _Images(config.output.self_contained)
    env = make_environment(images)
    folder = templates_dir()
    css = (folder / "style.css").read_text(encoding="utf-8")
    js = (folder / "report.js").read_text(encoding="utf-8")
    img_src = "data:" if config.output.self_contained else "'self' data:"
    csp = (f"default-src 'none'; img-src {img_src}; style-src {_csp_hash(css)}; script-src {_csp_hash(js)}; "
           "base-uri 'none'; form-action 'none'")
    inputs = [
        {"name": img.name, "source": img.source,
         "figure": make_figure(upscale_nearest(img.display, 160), alt=f"input image {img.name} as the model sees it",
                               thumb_side=320),
         "top_k": entry["top_k"]}
        for img, entry in zip(ctx.images, report_data["images"])
    ]
    stages = [
        {"name": run.name, "title": STAGE_TITLES.get(run.name, run.name), "status": run.status,
         "error": run.error, "seconds": run.seconds, "section": run.section}
        for run in runs
    ]
    report = {
        "title": config.title,
        "created": report_data["created"],
        "versions": report_data["versions"],
        "model": report_data["model"],
        "notes": list(ctx.info.notes),
        "config_yaml": yaml.safe_dump(report_data["config"], sort_keys=False, allow_unicode=True),
        "inputs": inputs,
        "stages": stages,
        "css": css,
        "js": js,
        "csp": csp,
    }
    html = env.get_template("report.html.jinja2").render(report=report)
    return html, images.assets
