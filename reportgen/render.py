"""HTML: one Jinja environment (autoescape, StrictUndefined), its filters beside it, one render function."""
from __future__ import annotations

import base64
import hashlib
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import yaml
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from PIL import Image

from .figures.common import Figure, encode_png, make_figure
from .packaged import templates_dir
from .figures.images import anchor, table as images_table

ASSETS = "assets"  # the folder beside a static-site page that holds its pictures


def optimise_png(png: bytes) -> bytes:
    """Lossless re-encoding: the smaller of the given PNG and a leaner one with exactly the same pixels.

    An alpha channel that is opaque everywhere is dropped (matplotlib's charts), and a picture with at most
    256 colours becomes a palette PNG (`encode_png`). Any other PNG (what `to_png` makes of maps, overlays and
    grids: `encode_png` already chose between RGB and palette) is returned as it is, undecoded."""
    with Image.open(io.BytesIO(png)) as img:
        if img.mode != "RGBA":
            return png
        img.load()
    candidates = [png]
    if img.mode == "RGBA" and img.getextrema()[3] == (255, 255):
        img = img.convert("RGB")
        candidates.append(_encode(img))
    if img.mode == "RGB" and img.getcolors(256) is not None:
        candidates.append(encode_png(img))
    return min(candidates, key=len)


def _encode(img: Image.Image, optimize: bool = False) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", optimize=optimize, compress_level=6)
    return buffer.getvalue()


def _size(fig) -> tuple[int, int]:
    """(width, height) of a figure's picture: what it says, else read from the PNG's header."""
    return (fig.width, fig.height) if fig.width and fig.height else png_size(fig.png)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    with Image.open(io.BytesIO(png)) as img:
        return img.size


class _Images:
    """Turns Figures into `src` values: data: URIs (self-contained) or files under assets/.

    Every PNG is optimised once (see `optimise_png`); the same bytes give the same URI or asset name.
    The pictures of layered figures (overlays and the maps they show) become CSS rules (`css()`), one per
    distinct picture and opacity."""

    def __init__(self, self_contained: bool):
        self.self_contained = self_contained
        self.assets: dict[str, bytes] = {}
        self._srcs: dict[bytes, str] = {}
        self._unders: dict[bytes, str] = {}  # PNG -> class name
        self._layers: dict[bytes, str] = {}
        self._alphas: dict[float, str] = {}
        self._blanks: dict[tuple[int, int], str] = {}
        self._picks: dict[tuple[str, str], str] = {}  # (section, method) -> the picker's checkbox id

    def pick(self, section: str, method: str) -> str:
        """The id of the checkbox that shows `method`'s figures (class `m-<method>`) in `section`: unchecked, a
        rule of `css()` hides them (CSS only: the page needs no script for it)."""
        return self._picks.setdefault((section, method), f"pick-{section}-{method}")

    def under_class(self, png: bytes | None) -> str:
        return "" if png is None else self._unders.setdefault(png, f"u{len(self._unders)}")

    def layer_class(self, png: bytes) -> str:
        return self._layers.setdefault(png, f"m{len(self._layers)}")

    def alpha_class(self, alpha: float) -> str:
        return self._alphas.setdefault(round(float(alpha), 3), f"o{len(self._alphas)}")

    def blank_src(self, size: tuple[int, int]) -> str:
        """A transparent PNG of `size` (w, h): the <img> of a layered figure, for its box and its alt text."""
        if size not in self._blanks:
            self._blanks[size] = self.src(_encode(Image.new("LA", size), optimize=True))
        return self._blanks[size]

    def css(self) -> str:
        """The rules layered figures use: `.uN` draws picture N beneath, `.mN` draws map N over it (its
        `::after`), `.oN` sets the map's opacity. Each picture's bytes appear once, here."""
        rules = [f'.{name}{{background-image:url("{self.src(png)}")}}' for png, name in self._unders.items()]
        rules += [f'.{name}::after{{background-image:url("{self.src(png)}")}}' for png, name in self._layers.items()]
        rules += [f".{name}::after{{opacity:{alpha:g}}}" for alpha, name in self._alphas.items()]
        # the method pickers: a rule per method (their look is templates/picker.css, a page extra)
        rules += [f"#{s}:has(#{box}:not(:checked)) .m-{m}{{display:none}}" for (s, m), box in self._picks.items()]
        return "\n".join(rules)

    def src(self, png: bytes) -> str:
        if png not in self._srcs:
            data = optimise_png(png)
            if self.self_contained:
                self._srcs[png] = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
            else:
                name = hashlib.sha256(data).hexdigest()[:20] + ".png"
                self.assets[name] = data
                self._srcs[png] = f"{ASSETS}/{name}"
        return self._srcs[png]


def _intcomma(value) -> str:
    return f"{int(value):,}"


THIN = "\u202f"  # narrow no-break space: groups thousands as people write them (1 944 040) and never breaks
SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def readable_number(value, digits: int = 4) -> str:
    """A number as people write it, never in exponent notation unless it is tiny: every digit of its whole part,
    thousands grouped (1944040.0 -> "1 944 040", with narrow no-break spaces), a fraction to `digits`
    significant digits without trailing zeros (0.81234 -> "0.8123", 12.0 -> "12"); below 1e-4 "3.2 × 10⁻⁷".
    None and NaN are "–". `digits` ≥ 1."""
    if value is None:
        return "–"
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"
    if abs(value) < 1e-4:
        mantissa, exponent = f"{value:.{max(digits - 1, 0)}e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".") if "." in mantissa else mantissa
        return f"{mantissa} × 10{str(int(exponent)).translate(SUPERSCRIPT)}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    sign, text = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, dot, fraction = text.partition(".")
    return sign + f"{int(whole):,}".replace(",", THIN) + dot + fraction


def _shape(value) -> str:
    return "×".join(str(v) for v in value) if value else "–"


def section_template(env: Environment, stage):
    """The template of a stage's section: reportgen's own by name, a plug-in's from the file its record names."""
    path = stage.template_path
    if path.parent == templates_dir() / "sections":
        return env.get_template(f"sections/{path.name}")
    return env.from_string(path.read_text(encoding="utf-8"))


def make_environment(images: _Images, extras: list[str] | None = None) -> Environment:
    """The one Jinja environment of a page. `extras` collects the files a section's template asks for with
    `page_extra("scatter.js")` (a script or stylesheet of templates/, once each): only pages that need them
    carry them (`render_report` inlines them and allows each script's hash)."""
    extras = [] if extras is None else extras  # a section drawn on its own (tests) may ask too
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
    env.filters["number"] = readable_number  # a number as people write it (see there)
    env.filters["under_class"] = lambda fig: images.under_class(fig.under)
    env.filters["layer_class"] = lambda fig: images.layer_class(fig.png)
    env.filters["blank_src"] = lambda fig: images.blank_src(_size(fig))
    env.filters["alpha_class"] = lambda fig: images.alpha_class(fig.alpha)
    env.filters["anchor"] = anchor  # the id of an image's card, as the images table links it
    env.filters["shown_size"] = lambda fig: png_size(fig.thumb) if fig.thumb else _size(fig)  # the inline picture
    env.globals["self_contained"] = images.self_contained
    env.globals["pick"] = images.pick
    env.globals["page_extra"] = lambda name: _ask_extra(extras, name)
    return env


def _ask_extra(extras: list[str], name: str) -> str:
    if not re.fullmatch(r"[a-z_]+\.(js|css)", name) or not (templates_dir() / name).is_file():
        raise ValueError(f"no page extra {name!r} here: a report section may ask for a .js or .css of templates/")
    if name not in extras:
        extras.append(name)
    return ""


def page_extras(extras: list[str]) -> tuple[str, list[str]]:
    """The stylesheet text and the scripts of the extras a page's sections asked for (see `make_environment`)."""
    read = lambda name: (templates_dir() / name).read_text(encoding="utf-8")  # noqa: E731
    return ("".join(read(n) for n in extras if n.endswith(".css")), [read(n) for n in extras if n.endswith(".js")])


def page_style_and_script() -> tuple[str, str]:
    """The stylesheet and the script every page of ours carries inline (the report, a site's index, a comparison)."""
    folder = templates_dir()
    return (folder / "style.css").read_text(encoding="utf-8"), (folder / "report.js").read_text(encoding="utf-8")


def page_policy(css: str, js: str, img_src: str, extra_scripts: Sequence[str] = ()) -> str:
    """The Content-Security-Policy of such a page: nothing from the network; only its own inline stylesheet and
    scripts (report.js and `extra_scripts`, by hash) and pictures from `img_src`."""
    scripts = " ".join(_csp_hash(text) for text in [js, *extra_scripts])
    return (f"default-src 'none'; img-src {img_src}; style-src {_csp_hash(css)}; script-src {scripts}; "
            "base-uri 'none'; form-action 'none'")


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


def _input_alt(name: str, top_k: list[dict]) -> str:
    alt = f"Input image {name} as the model sees it"
    if top_k:
        best = top_k[0]
        alt += (f"; predicted class {best['label']} ({100 * best['probability']:.1f}%)" if "probability" in best
                else f"; best box a {best['label']} (score {best['score']:.2f})" if "score" in best
                else f"; most pixels predicted as {best['label']} ({100 * best['share']:.1f}%)")
    return alt


def _correct(entry: dict) -> bool | None:
    """Whether the top-1 prediction is the true class; None where the truth is unknown."""
    truth, top_k = entry.get("truth"), entry["top_k"]
    if not truth or truth.get("index") is None or not top_k:
        return None
    return top_k[0]["index"] == truth["index"]


@dataclass(frozen=True)
class Rendered:
    """A drawn report: its page, the pictures it links (static-site mode), the sections that could not be drawn
    (stage name -> why) and the page's record for report.json (`record`, what `reportgen site` needs)."""
    html: str
    assets: dict[str, bytes]
    failed: dict[str, str]
    record: dict


def render_report(config, ctx, runs, described: dict, *, records: list[dict] | None = None,
                  timed: bool = True) -> Rendered:
    """The report's page from the stages' runs and what report.json says of the build (`described`:
    created, versions, config, model, inputs, the detail images). Changes none of its inputs. `records`
    (images.jsonl's lines) fill the table of every image; without them each input is a row with its card.
    `timed`: show the timings (not in a reproducible build).

    Each stage's section is rendered on its own: a section template that raises shows that stage as failed
    (`Rendered.failed`: the caller marks it failed in the build's record too, so report.json and the exit code
    agree) and the rest of the report is still drawn."""
    images = _Images(config.output.self_contained)
    extras: list[str] = []  # the scripts and stylesheets the sections ask for (page_extra)
    env = make_environment(images, extras)
    css, js = page_style_and_script()
    inputs = [
        {"name": img.name, "source": img.source,
         # the pixels themselves: small inputs are enlarged by CSS with hard edges ("pixel"), not in the PNG
         "figure": make_figure(img.display, alt=_input_alt(img.name, entry["top_k"]), thumb_side=320),
         "figure_class": "pixel" if max(img.display.shape[:2]) < 160 else "",
         "top_k": entry["top_k"], "truth": entry.get("truth"), "correct": _correct(entry), "segmentation": None}
        for img, entry in zip(ctx.images, described["images"])
    ]
    report = {
        "title": config.title,
        "created": described["created"],
        "versions": described["versions"],
        "model": described["model"],
        "notes": list(ctx.info.notes),
        "config_yaml": yaml.dump(described["config"], Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                                 sort_keys=False, allow_unicode=True),  # libyaml's emitter where built in: 10x faster
        "inputs": inputs,
        "image_count": described.get("inputs", {}).get("images", len(inputs)),
        "self_contained": config.output.self_contained,
        "js": js,
        "timed": timed,  # a reproducible build shows no timings
    }
    if records is None:
        records = [{"name": img.name, "source": img.source, "truth": entry.get("truth"), "top_k": entry["top_k"],
                    "detail": "all images"} for img, entry in zip(ctx.images, described["images"])]
    report["table"] = images_table(records)
    for run in runs:  # a segmenter's masks, drawn by its data-set section, shown on each image's card
        cards = run.section.get("cards") if run.status == "ok" and isinstance(run.section, dict) else None
        for card in inputs if cards else ():
            card["segmentation"] = cards.get(card["name"])
    stages: list[dict] = []
    report["stages"] = stages
    errors: dict[str, str] = {}
    for run in runs:
        html = Markup("")
        status, error = run.status, run.error
        if run.status == "ok":
            try:
                html = Markup(section_template(env, run.stage).render(section=run.section, report=report))
            except Exception as exc:  # a broken section must not take the whole report down
                status, error = "failed", f"the section could not be drawn: {type(exc).__name__}: {exc}"
                errors[run.name] = error
        stages.append({"name": run.name, "title": run.title, "status": status,
                       "error": error, "seconds": run.seconds, "section": run.section, "html": html})
    extra_css, report["scripts"] = page_extras(extras)  # what the sections asked for, known once they are drawn
    css += extra_css + "\n/* the pictures of layered figures, one rule each */\n" + images.css()  # complete now too
    report["css"] = css
    report["csp"] = page_policy(css, js, "data:" if config.output.self_contained else "'self' data:", report["scripts"])
    html = env.get_template("report.html.jinja2").render(report=report)
    return Rendered(html=html, assets=images.assets, failed=errors, record=_page_record(images, inputs))


def _page_record(images: _Images, inputs: list[dict]) -> dict:
    """What the page holds, for report.json's `page`: its pictures' folder (`assets`, None when they are
    embedded) and the first input image's card (its element id) and picture (its file, None when embedded):
    a site's thumbnail."""
    first = None
    if inputs:
        fig = inputs[0]["figure"]
        src = images.src(fig.thumb or fig.png)  # the card's inline picture, as the page links it
        first = {"card": anchor(inputs[0]["name"]), "picture": None if images.self_contained else src}
    return {"assets": None if images.self_contained else ASSETS, "first_input": first}


def render_page(template: str, **context) -> str:
    """A page of ours beside the report (a site's index, a comparison), with the report's stylesheet and script
    and the same Content-Security-Policy: nothing from the network; pictures inline (`src` filter) or files
    of the site itself. `context` goes to the template as it is, with `css`, `js` and `csp`."""
    css, js = page_style_and_script()
    env = make_environment(_Images(True))
    return env.get_template(template).render(css=css, js=js, csp=page_policy(css, js, "'self' data:"), **context)
