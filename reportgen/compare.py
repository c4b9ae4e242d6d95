"""`reportgen compare A B -o DIR`: two models side by side on the same images (before and after fine-tuning,
pruning, quantisation).

A and B are report folders built with `save_arrays` (report.json, images.jsonl, arrays.npz). `match` reads
them into plain data: the predictions of every image both saw (which changed), the summary totals and layers
of both, a summary of every pair of maps both computed (one per image, method and layer), the headline metrics
and their differences, and what is in only one of them (listed, never dropped silently). The pairs are ordered
as the page draws them: changed predictions first, then the largest differences; the first `detail` are drawn
(A, B and B − A), the rest counted. `write_compare` writes the page, compare.json (every pair's summary) and
compare_maps.npz (every pair's two maps).
"""
from __future__ import annotations

import contextlib
import math
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ReportgenError
from .owned import head
from .report_folder import JSON_LIMIT, member, metrics, number, plain_file, read_json, read_records, reading

MAP_PREFIXES = ("cam/", "gradients/")
GENERATOR = '<meta name="generator" content="reportgen compare">'
MANIFEST = ".reportgen-compare.json"  # the files compare wrote in its folder: it replaces no other
DETAIL = 40  # pairs of maps drawn by default (`reportgen compare --detail`): the page stays small
MAPS_FILE = "compare_maps.npz"  # every pair's two maps, beside compare.json
ARRAYS_LIMIT = 64 * 2**30  # bytes of an arrays.npz read (its members are bounded one by one as they are read)
OUTPUTS = ("compare.html", "compare.json", MAPS_FILE)


@dataclass(frozen=True)
class SideImage:
    source: object  # the file it was read from, as its report shows it
    truth: object  # its true class's label, or None
    top1: tuple[str, float]  # (label, probability) of the report's first prediction


TOTALS = (("parameters", "total_params"), ("trainable parameters", "trainable_params"),
          ("mult-adds", "total_mult_adds"))


@dataclass(frozen=True)
class Side:
    folder: Path
    title: str
    model: str
    input_size: tuple[int, ...]
    images: dict[str, SideImage]  # image name -> what its images.jsonl record says
    layers: dict[str, dict]  # layer name -> its row of report.json's summary
    totals: dict[str, float | None]  # TOTALS' keys -> the summary's total
    metrics: dict[str, float]
    arrays: Path
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric -> its 95 % interval


@dataclass(frozen=True)
class Prediction:
    image: str
    truth: str | None
    a: tuple[str, float]  # top-1 label, probability
    b: tuple[str, float]

    @property
    def changed(self) -> bool:
        return self.a[0] != self.b[0]


@dataclass(frozen=True)
class PairRow:
    """One pair of maps (the same image, method and layer in A and B), summarised: a row of compare.json."""
    key: str  # cam/<method>/<layer>/<image> or gradients/<method>/<image>: the arrays.npz keys without the class
    key_a: str  # the arrays.npz keys of the two maps: `key`/<the class each explains> (the same unless the
    key_b: str  # target classes differ: top-1 changed)
    prediction: Prediction | None  # of the image
    difference: float  # mean |A − B| of the two maps, each min-max normalised to [0, 1]: how the pairs are ranked
    mean_abs_difference: float  # mean |B − A| of the maps as they are
    correlation: float | None

    @property
    def class_a(self) -> str:
        return self.key_a.rsplit("/", 1)[1]

    @property
    def class_b(self) -> str:
        return self.key_b.rsplit("/", 1)[1]

    @property
    def method(self) -> str:
        return _parts(self.key)[0]

    @property
    def layer(self) -> str | None:
        return _parts(self.key)[1]

    @property
    def image(self) -> str:
        return _parts(self.key)[2]

    @property
    def changed(self) -> bool:
        return self.prediction is not None and self.prediction.changed

    def to_json(self, drawn: bool) -> dict:
        p = self.prediction
        return {"key": self.key, "image": self.image, "method": self.method, "layer": self.layer,
                "prediction_a": p.a[0] if p else None, "prediction_b": p.b[0] if p else None,
                "changed": self.changed, "difference": self.difference, "class_a": self.class_a,
                "class_b": self.class_b, "key_a": self.key_a, "key_b": self.key_b,
                "mean_abs_difference": self.mean_abs_difference, "correlation": self.correlation, "drawn": drawn}


@dataclass(frozen=True)
class MapPair:
    """A pair the page draws: its row and the two maps."""
    row: PairRow
    a: np.ndarray  # (H, W) float32 (a gradient map: Σ|channels|, as the report draws it)
    b: np.ndarray

    @property
    def difference(self) -> np.ndarray:
        return self.b - self.a


@dataclass(frozen=True)
class Comparison:
    a: Side
    b: Side
    predictions: list[Prediction]
    only: dict[str, list[str]]  # "images in A only", "maps in B only", ... -> names
    layers: list[tuple[str, str | None, str | None, int | None, int | None]]  # name, type A, type B, params A, B
    totals: list[tuple[str, float | None, float | None]]  # (what, A, B) of the summaries
    metrics: list[tuple[str, float | None, float | None]]  # (name, A, B) of report.metrics()
    pairs: list[PairRow]  # every pair of maps, in the page's order: changed predictions first, then by difference
    maps: list[MapPair]  # the first of them, drawn
    notes: list[str] = field(default_factory=list)

    @property
    def maps_not_drawn(self) -> int:
        return len(self.pairs) - len(self.maps)

    def to_json(self) -> dict:
        return {
            "a": {"folder": str(self.a.folder), "title": self.a.title, "model": self.a.model},
            "b": {"folder": str(self.b.folder), "title": self.b.title, "model": self.b.model},
            "images": len(self.predictions), "changed": sum(p.changed for p in self.predictions),
            "predictions": [{"image": p.image, "truth": p.truth, "a": {"label": p.a[0], "probability": p.a[1]},
                             "b": {"label": p.b[0], "probability": p.b[1]}, "changed": p.changed}
                            for p in self.predictions],
            "totals": [{"what": w, "a": a, "b": b} for w, a, b in self.totals],
            "metrics": [{"name": n, "a": a, "b": b, "delta": None if a is None or b is None else b - a,
                         "a_interval": self.a.intervals.get(n), "b_interval": self.b.intervals.get(n)}
                        for n, a, b in self.metrics],
            "maps": [row.to_json(drawn=i < len(self.maps)) for i, row in enumerate(self.pairs)],
            "maps_drawn": len(self.maps), "maps_not_drawn": self.maps_not_drawn,
            "maps_file": MAPS_FILE,  # a/<key_a> and b/<key_b>: the two maps of each pair, as the page draws them
            "only": self.only, "notes": self.notes,
        }


def read_side(folder: Path) -> Side:
    """A report folder built with `save_arrays`, checked as a stranger's may need (`report_folder`): a clear
    error naming what is missing or malformed."""
    folder = Path(folder)
    missing = [name for name in ("report.json", "images.jsonl", "arrays.npz") if not (folder / name).is_file()]
    if missing:
        hint = " (build it with `save_arrays: true` or --save-arrays)" if "arrays.npz" in missing else ""
        raise ReportgenError(f"`{folder}` is not a report folder to compare: it lacks {', '.join(missing)}{hint}.")
    with reading(folder):
        data = read_json(folder / "report.json")
        records = read_records(folder / "images.jsonl")
        model = data.get("model") or {}
        input_size = tuple(int(number(v, "`model.input_size`")) for v in model.get("input_size", ()))
        if len(input_size) != 3 or min(input_size) < 1 or max(input_size) > 16384:
            raise ReportgenError(f"`{folder / 'report.json'}`: its model's input_size is not three sizes.")
        summary = data.get("summary") if isinstance(data.get("summary"), dict) else {}
        return Side(folder=folder, title=str(data.get("title", folder.name)), model=str(model.get("description", "")),
                    input_size=input_size,
                    images={r["name"]: SideImage(source=r.get("source"), truth=(r.get("truth") or {}).get("label"),
                                                 top1=_top1(r)) for r in records},
                    layers={r["name"]: r for r in _list(summary.get("rows")) if isinstance(r, dict)
                            and isinstance(r.get("name"), str) and r["name"]},
                    totals={key: _total(summary, key) for _, key in TOTALS}, metrics=metrics(data),
                    arrays=folder / "arrays.npz", intervals=_intervals(data))


@contextlib.contextmanager
def _maps(side: Side):
    """The side's arrays.npz, opened without pickles; what is malformed in it is a message naming its folder."""
    with reading(side.folder), np.load(plain_file(side.arrays, ARRAYS_LIMIT), allow_pickle=False) as npz:
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise ReportgenError(f"`{side.arrays}` is one array, not the arrays.npz a build writes.")
        yield npz


def _map(npz, side: Side, key: str) -> np.ndarray:
    with reading(side.folder):
        return _plane(member(npz, key, side.input_size))


def match(folder_a: Path, folder_b: Path, detail: int = DETAIL) -> Comparison:
    """The comparison of two report folders (see the module docstring), its first `detail` pairs of maps drawn.
    Reports of different input sizes, or without an image in common, are refused with what differs."""
    a, b = read_side(folder_a), read_side(folder_b)
    if a.input_size != b.input_size:
        raise ReportgenError(f"the reports were built at different input sizes (A {list(a.input_size)}, B "
                             f"{list(b.input_size)}): their maps cannot be put side by side. Build both with the "
                             "same `model.input_size`.")
    common = [name for name in a.images if name in b.images]
    if not common:
        raise ReportgenError(f"the reports share no image (A: {_some(a.images)}; B: {_some(b.images)}): build both "
                             "from the same `inputs.images`.")
    moved = [n for n in common if a.images[n].source != b.images[n].source]
    notes = [f"{len(moved)} image(s) share a name but come from different files: {_some(moved)}"] if moved else []
    only = {"images in A only": [n for n in a.images if n not in b.images],
            "images in B only": [n for n in b.images if n not in a.images]}
    predictions = [Prediction(image=n, truth=a.images[n].truth, a=a.images[n].top1, b=b.images[n].top1)
                   for n in common]
    of_image = {p.image: p for p in predictions}
    with _maps(a) as npz_a, _maps(b) as npz_b:
        maps_of = lambda npz: [k for k in npz.files if k.startswith(MAP_PREFIXES)]  # noqa: E731
        keys, only["maps in A only"], only["maps in B only"] = _pair_maps(maps_of(npz_a), maps_of(npz_b))
        # one pair's maps in memory at a time (a data set's need not fit), read again for the few drawn
        pairs = [_summarise(k_a, k_b, _map(npz_a, a, k_a), _map(npz_b, b, k_b), of_image) for k_a, k_b in keys]
        pairs.sort(key=lambda row: (not row.changed, -row.difference))  # stable: ties keep the reports' order
        maps = [MapPair(row, _map(npz_a, a, row.key_a), _map(npz_b, b, row.key_b)) for row in pairs[:max(detail, 0)]]
    layers, layer_only = _layers(a.layers, b.layers)
    only |= layer_only
    totals = [(what, a.totals[key], b.totals[key]) for what, key in TOTALS]
    names = list(dict.fromkeys([*a.metrics, *b.metrics]))
    return Comparison(a=a, b=b, predictions=predictions, only={k: v for k, v in only.items() if v}, layers=layers,
                      totals=totals, metrics=[(n, a.metrics.get(n), b.metrics.get(n)) for n in names], pairs=pairs,
                      maps=maps, notes=notes)


def _summarise(key_a: str, key_b: str, a: np.ndarray, b: np.ndarray, of_image: dict[str, Prediction]) -> PairRow:
    key = key_a.rsplit("/", 1)[0]
    return PairRow(key=key, key_a=key_a, key_b=key_b, prediction=of_image.get(_parts(key)[2]),
                   difference=float(np.abs(_normalised(a) - _normalised(b)).mean()),
                   mean_abs_difference=float(np.abs(b - a).mean()), correlation=_correlation(a, b))


def _parts(key: str) -> tuple[str, str | None, str]:
    """(method, layer or None, image) of a pair's key; an image's name may hold "/": all after the method (and
    layer) is the image's."""
    if key.startswith("cam/"):
        _, method, layer, image = key.split("/", 3)
        return method, layer, image
    _, method, image = key.split("/", 2)
    return method, None, image


def _normalised(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (a constant map: all 0): maps of two models compare by shape, not by scale."""
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _pair_maps(keys_a: list[str], keys_b: list[str]) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(pairs of keys, A's unpaired, B's unpaired): maps of the same method, layer and image pair up, the same
    class first, then the others in order (top-1 changed: A explains its class, B its own)."""
    by_b: dict[str, list[str]] = {}
    for key in keys_b:
        by_b.setdefault(key.rsplit("/", 1)[0], []).append(key)
    pairs, left = [], []
    for key in keys_a:
        candidates = by_b.get(key.rsplit("/", 1)[0], [])
        if key in candidates:
            candidates.remove(key)
            pairs.append((key, key))
        else:
            left.append(key)
    unpaired = []
    for key in left:
        candidates = by_b.get(key.rsplit("/", 1)[0], [])
        if candidates:
            pairs.append((key, candidates.pop(0)))
        else:
            unpaired.append(key)
    order = {key: i for i, key in enumerate(keys_a)}
    pairs.sort(key=lambda pair: order[pair[0]])
    return pairs, unpaired, [key for keys in by_b.values() for key in keys]


def _intervals(data: dict) -> dict[str, tuple[float, float]]:
    """The evaluation's bootstrap intervals, keyed as its headline metrics (`evaluation/<column>/<row>`)."""
    out = {}
    for row in (data.get("evaluation") or {}).get("rows", []):
        key = f"{row['method']}/{row['layer']}" if row.get("layer") else row["method"]
        for column, score in (row.get("scores") or {}).items():
            if score and score.get("low") is not None and score.get("high") is not None:
                out[f"evaluation/{column}/{key}"] = (float(score["low"]), float(score["high"]))
    return out


def _top1(record: dict) -> tuple[str, float]:
    top = (record.get("top_k") or [{}])[0]
    return str(top.get("label", top.get("index", "?"))), float(top.get("probability", float("nan")))


def _plane(values: np.ndarray) -> np.ndarray:
    """A map as the report draws it: (H, W) as it is, (C, H, W) as Σ|channels|."""
    values = np.asarray(values, dtype=np.float32)
    return np.abs(values).sum(axis=0) if values.ndim == 3 else values


def _layers(rows_a: dict[str, dict], rows_b: dict[str, dict]):
    names = list(dict.fromkeys([*rows_a, *rows_b]))
    rows = [(n, _text(rows_a.get(n, {}).get("class_name")), _text(rows_b.get(n, {}).get("class_name")),
             _count(rows_a.get(n, {}).get("num_params")), _count(rows_b.get(n, {}).get("num_params"))) for n in names]
    return rows, {"layers in A only": [n for n in rows_a if n not in rows_b],
                  "layers in B only": [n for n in rows_b if n not in rows_a]}


def _count(value) -> int | None:
    """A layer's parameter count as report.json gives it; anything else (a tampered file's) is unknown."""
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        else None


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _total(summary: dict, key: str) -> float | None:
    value = (summary.get("totals") or {}).get(key)
    return None if value is None else float(value)


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _some(names, most: int = 5) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def write_compare(folder_a: Path, folder_b: Path, out: Path, detail: int = DETAIL) -> Path:
    """compare.html (one self-contained page, `detail` pairs of maps drawn), compare.json and compare_maps.npz in
    `out`; returns the page's path. One of those files there that compare did not write is refused, never
    replaced (its manifest, `.reportgen-compare.json`, says which it wrote)."""
    from .figures.compare import plot
    from .render import render_page
    from .owned import check_out_dir, owned_files
    from .write import write_atomic, write_npz

    comparison = match(folder_a, folder_b, detail)
    page = out / "compare.html"
    check_out_dir(out, OUTPUTS, owned_files(out, MANIFEST, legacy=_before_manifests), key="-o")
    data = comparison.to_json()
    html = render_page("compare.html.jinja2", c=comparison, maps=plot(comparison), changed=data["changed"],
                       maps_file=MAPS_FILE, generator=GENERATOR)
    out.mkdir(parents=True, exist_ok=True)
    a, b = comparison.a, comparison.b
    with _maps(a) as npz_a, _maps(b) as npz_b:
        write_npz(out / MAPS_FILE, ((f"{name}/{key}", _map(npz, side, key)) for row in comparison.pairs
                                    for name, npz, side, key in (("a", npz_a, a, row.key_a), ("b", npz_b, b, row.key_b))))
    write_atomic(out / "compare.json", json.dumps(data, indent=1).encode("utf-8"))
    write_atomic(page, html.encode("utf-8"))
    write_atomic(out / MANIFEST, json.dumps({"files": list(OUTPUTS)}, indent=1).encode("utf-8"))
    return page


def _before_manifests(out: Path) -> set[str]:
    """What a `compare` from before compare kept a manifest wrote in `out`: a compare.html with the generator
    tag, and beside it a compare.json of the shape compare writes."""
    try:
        if GENERATOR.encode() not in head(out / "compare.html", 4096):
            return set()
    except OSError:  # none, or a link, a folder, a device: not ours
        return set()
    try:
        old = json.loads(head(out / "compare.json", JSON_LIMIT))
    except (OSError, ValueError):
        old = None
    return {"compare.html"} | ({"compare.json"} if isinstance(old, dict) and {"a", "b", "predictions", "maps"}
                               <= set(old) else set())
