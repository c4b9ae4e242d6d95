"""`reportgen site DIR... -o SITE`: many reports in one static site.

SITE/
  index.html             every report: thumbnail, title, model, date, headline metrics; sortable, filterable
  site.json              what the index lists (the site's own record: adding a report re-reads it)
  reports/<slug>/        each report's page, report.json and images.jsonl (arrays.npz stays where it was)
  assets/<hash>.png      the pictures of reports built with `self_contained: false`, stored once for all
  thumbs/<slug>.png      each report's first input image, small

A report's slug is its folder's name (made safe for a URL); adding a report whose folder has a name the site
already lists replaces that entry and leaves the others as they are. Every link is relative, so the site works
from file://, from a sub-path of GitHub Pages or S3, and offline. Nothing outside reports/, assets/, thumbs/,
index.html and site.json is touched, and a folder that holds files but no site.json is refused. Inside reports/,
only the folders site.json lists are the site's, and in them only its own files (a user's notes.txt stays; a
folder site.json does not list is the user's, and a report of that name takes the next free slug). The site
writes through no link, and copies no file that a report folder links from outside itself.

What the site needs of a page, its report.json says (`page`: the folder of its pictures, and where its first
input image is); a report built before report.json said so is listed without a thumbnail.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from markupsafe import escape
from PIL import Image

from .errors import ReportgenError
from .owned import ASSET_NAME
from .report_folder import JSON_LIMIT, PICTURE_PIXELS, json_object, metrics, number, plain_file, reading
from .write import write_atomic

RECORD = "site.json"
THUMB = 160  # px, the longer side
COLUMNS = 12  # metrics the index shows (a report with its evaluation has about 100): the rest in site.json
_NAME = re.compile(r"[A-Za-z0-9_-]+")  # an assets folder's name, a card's id
_EMBEDDED = 'src="data:image/png;base64,'
OWN_FILES = ("report.html", "index.html", "report.json", "images.jsonl")  # what the site puts in reports/<slug>/


@dataclass(frozen=True)
class SiteEntry:
    slug: str
    title: str
    model: str
    created: str
    images: int
    metrics: dict[str, float]
    page: str  # relative to the site: reports/<slug>/report.html or .../index.html
    thumb: str | None  # relative to the site, or None
    source: str  # the folder it was copied from (as given)


@dataclass(frozen=True)
class _Found:
    folder: Path
    page: Path
    html: str
    copied: dict[str, bytes]  # report.json and images.jsonl, as they are
    listed: dict  # its fields of the index: title, model, created, images, metrics
    assets: str | None  # the folder of the page's pictures, None when they are embedded
    thumb: bytes | None  # its first input image, small (PNG), or None


def add_reports(folders: list[Path], site: Path) -> Path:
    """Copy the reports in `folders` into `site` (made when missing) and write its index; returns index.html.
    Every folder is checked before anything is written."""
    found = [_read(Path(folder)) for folder in folders]
    entries = _load_record(site)
    site.mkdir(parents=True, exist_ok=True)
    for sub in ("reports", "assets", "thumbs"):
        _no_link(site / sub, site)
    # a folder in reports/ that site.json does not list is the user's: a report of that name takes another slug
    taken = {p.name for p in (site / "reports").iterdir()} - set(entries) if (site / "reports").is_dir() else set()
    for report in found:
        slug = _slug(report.folder.resolve().name, taken)
        taken.add(slug)
        entries[slug] = _copy(report, site, slug)
    write_atomic(_no_link(site / RECORD, site),
                 json.dumps({"reports": [asdict(e) for e in entries.values()]}, indent=1).encode())
    index = site / "index.html"
    write_atomic(_no_link(index, site), render_index(list(entries.values())).encode("utf-8"))
    return index


def _no_link(path: Path, site: Path) -> Path:
    """`path`, when neither it nor a folder between it and `site` is a link: the site writes through none."""
    for step in (path, *path.parents):
        if step == site:
            return path
        if step.is_symlink():
            raise ReportgenError(f"`{step}` is a link: `reportgen site` writes through no link. Remove it, or "
                                 "choose another site folder with -o.")
    return path


def _inside(folder: Path, path: Path) -> Path:
    """`path`, a file of a report folder, when it is no link to something outside that folder (a stranger's
    folder may link its images.jsonl to /etc/passwd: the site copies no such file)."""
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        raise ReportgenError(f"`{path}` is a link to a file outside its report folder: the site copies no such "
                             "file. Replace the link with the file it points to.")
    return path


def _read(folder: Path) -> _Found:
    """A report folder: report.json and its page (report.html, or index.html with assets/)."""
    if not folder.is_dir():
        raise ReportgenError(f"`{folder}` is not a folder: give report folders (what `reportgen build` writes).")
    page = next((folder / name for name in ("report.html", "index.html") if (folder / name).is_file()), None)
    if page is None or not (folder / "report.json").is_file():
        raise ReportgenError(f"`{folder}` holds no report (no report.json beside report.html or index.html): "
                             "give the folders `reportgen build` wrote.")
    for name in (page.name, "report.json", "images.jsonl"):
        _inside(folder, folder / name)
    with reading(folder):  # a stranger's folder: what is not as a build writes it is one message
        copied = {name: plain_file(folder / name, JSON_LIMIT).read_bytes() for name in ("report.json", "images.jsonl")
                  if (folder / name).is_file()}
        data = json_object(copied["report.json"], folder / "report.json")
        if not isinstance(data.get("title"), str):
            raise ReportgenError(f"`{folder / 'report.json'}` is not a reportgen report.json (no title).")
        html = plain_file(page, JSON_LIMIT).read_bytes().decode("utf-8")
        assets, first = _page_record(data, folder / "report.json", page)
        inputs, model = data.get("inputs") or {}, data.get("model") or {}
        listed = {"title": data["title"], "model": str(model.get("description", "")),
                  "created": str(data.get("created", "")),
                  "images": int(number(inputs.get("images", len(data.get("images") or [])), "`inputs.images`")),
                  "metrics": metrics(data)}
        return _Found(folder, page, html, copied, listed, assets, _thumbnail(folder, first, html))


def _page_record(data: dict, path: Path, page: Path) -> tuple[str | None, dict | None]:
    """(assets, first_input) from report.json's `page` entry, each checked: a name, or a picture in assets/."""
    if "page" not in data:  # written before report.json described its page: no thumbnail, pictures in assets/
        return ("assets" if page.name == "index.html" else None), None
    record = data["page"]
    try:
        assets, first = record["assets"], record["first_input"]
        good = assets is None or _NAME.fullmatch(assets)
        if first is not None:  # its card's id, and its picture: embedded (None) or a file in the assets folder
            picture = first["picture"]
            in_assets = picture is None or (assets is not None and picture.startswith(f"{assets}/")
                                            and ASSET_NAME.match(picture[len(assets) + 1:]))
            good = good and _NAME.fullmatch(first["card"]) and in_assets
    except (TypeError, KeyError, AttributeError):
        good = False
    if not good:
        raise ReportgenError(f"`{path}`: its `page` entry is not one reportgen writes ({json.dumps(record)[:200]}).")
    return assets, first


def check_site(site: Path) -> None:
    """Raises ReportgenError when `site` cannot become or is not a site (before a build that joins it runs)."""
    _load_record(site)


def _load_record(site: Path) -> dict[str, SiteEntry]:
    """The entries a site already lists; a folder with files but no site.json is not a site: refused."""
    record = site / RECORD
    if not record.is_file():
        if site.is_dir() and any(site.iterdir()):
            raise ReportgenError(f"`{site}` holds files but no {RECORD}: it is not a reportgen site. Choose an empty "
                                 "or new folder with `-o`.")
        return {}
    try:
        listed = json.loads(record.read_text(encoding="utf-8"))["reports"]
        return {e["slug"]: SiteEntry(**e) for e in listed}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportgenError(f"`{record}` cannot be read ({type(exc).__name__}: {exc}); remove the site folder "
                             "and build it again.") from None


def _slug(name: str, taken: set[str]) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "report"
    candidate, n = slug, 2
    while candidate in taken:
        candidate, n = f"{slug}-{n}", n + 1
    return candidate


def _copy(report: _Found, site: Path, slug: str) -> SiteEntry:
    """The report's files into reports/<slug>/ (replacing an earlier copy), its pictures into the shared assets/,
    its thumbnail into thumbs/; returns its index entry."""
    html, thumb = report.html, None
    if report.thumb is not None:
        (site / "thumbs").mkdir(exist_ok=True)
        write_atomic(_no_link(site / "thumbs" / f"{slug}.png", site), report.thumb)
        thumb = f"thumbs/{slug}.png"
    if report.assets is not None:  # pictures beside the page: stored once for the whole site
        (site / "assets").mkdir(exist_ok=True)
        for picture in sorted((report.folder / report.assets).glob("*.png")):
            target = _no_link(site / "assets" / picture.name, site)  # named by content hash: same name, same picture
            if not target.exists():
                write_atomic(target, _inside(report.folder, picture).read_bytes())
        html = _relinked(html, report.assets)
    files = {report.page.name: html.encode("utf-8"), **report.copied}
    target = site / "reports" / slug
    target.parent.mkdir(exist_ok=True)
    if target.exists():  # our earlier copy (site.json lists it): our files replaced, a file the user put there kept
        _no_link(target, site)
        for name in OWN_FILES:
            if name in files:
                write_atomic(_no_link(target / name, site), files[name])
            elif (target / name).is_file() or (target / name).is_symlink():
                (target / name).unlink()
    else:  # all at once: a reader sees the whole copy or none
        staging = Path(tempfile.mkdtemp(prefix=f".{slug}-", dir=site))
        try:
            os.chmod(staging, _folder_mode())  # mkdtemp's 0700 would hide the report from a web server's user
            for name, data in files.items():
                (staging / name).write_bytes(data)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return SiteEntry(slug=slug, **report.listed, page=f"reports/{slug}/{report.page.name}", thumb=thumb,
                     source=str(report.folder))


def _folder_mode() -> int:
    """The mode the user's umask gives a new folder."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _relinked(html: str, assets: str) -> str:
    """A page of `self_contained: false` whose pictures move from ./<assets>/ to the site's ../../assets/: its
    <img> and <a> links, and the url()s of its stylesheet, whose hash in the Content-Security-Policy changes
    with it. (A quote in the page's text is escaped: `src="` and `url("` stand in its markup only.)"""
    from .render import _csp_hash

    for attribute in ("src", "href"):
        html = html.replace(f'{attribute}="{assets}/', f'{attribute}="../../assets/')
    start = html.find("<style>") + len("<style>")
    end = html.find("</style>", start)
    if start < len("<style>") or end < 0:
        return html
    style = html[start:end]
    css = style.replace(f'url("{assets}/', 'url("../../assets/')
    html = html[:start] + css + html[end:]
    old, new = _csp_hash(style), _csp_hash(css)
    return html.replace(str(escape(old)), str(escape(new)))  # the policy sits in an attribute, HTML-escaped


def _thumbnail(folder: Path, first: dict | None, html: str) -> bytes | None:
    """The report's first input image, at most THUMB px, as PNG bytes; None when the page shows none (or was
    built before report.json said where it is)."""
    if first is None:
        return None
    if first["picture"] is not None:
        data = plain_file(_inside(folder, folder / first["picture"]), JSON_LIMIT).read_bytes()
    else:  # embedded: the first picture in its card
        card = html.find(f'id="{first["card"]}"')
        at = html.find(_EMBEDDED, card) if card >= 0 else -1
        if at < 0:
            return None
        at += len(_EMBEDDED)
        data = base64.b64decode(html[at:html.find('"', at)], validate=True)
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ReportgenError(f"`{folder}`: its first input picture has more pixels than a report's pictures "
                             "have.") from None
    except (OSError, ValueError):  # Pillow's UnidentifiedImageError is an OSError
        raise ReportgenError(f"`{folder}`: its first input picture is not an image Pillow can read.") from None
    with img:
        if img.width * img.height > PICTURE_PIXELS:
            raise ReportgenError(f"`{folder}`: its first input picture is {img.width} x {img.height} pixels, more "
                                 "than a report's pictures are.")
        img = img.convert("RGB")
        img.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def render_index(entries: list[SiteEntry]) -> str:
    """The index page: one row per report, its metrics as columns, at most COLUMNS of them (the report's style
    and script: sortable columns, a filter over title and model)."""
    from .render import render_page

    shown, hidden = index_columns(entries)
    rows = sorted(entries, key=lambda e: e.created, reverse=True)
    return render_page("site.html.jinja2", entries=rows, columns=shown, hidden=hidden)


def index_columns(entries: list[SiteEntry]) -> tuple[list[str], int]:
    """(the metrics the index shows, how many more there are): those most reports have first, the model's and
    the data set's before the evaluation's many per method and layer, at most COLUMNS; the rest are in
    site.json and each report."""
    count: dict[str, int] = {}
    for entry in entries:
        for key in entry.metrics:
            count[key] = count.get(key, 0) + 1
    ranked = sorted(count, key=lambda key: (-count[key], key.startswith("evaluation/"), key.count("/"), key))
    return sorted(ranked[:COLUMNS]), max(0, len(ranked) - COLUMNS)
