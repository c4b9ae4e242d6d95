"""Per-image records (one line each of images.jsonl) -> the payload of the report's table of every image.

A record: {"name", "source", "truth": {"index", "label"} | None, "top_k": [{"index", "label", "probability"}, ...],
"detail": why the image has figures in the report ("confident mistake", "class sample", ...) | None}.
The table carries no thumbnail: its size follows the number of images at a few dozen bytes a row, while pictures
stay with the few detail images."""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable

# the payload's row layout; labels are positions in its "labels" list, so each label's text appears once
COLUMNS = ["name", "truth", "prediction", "confidence", "correct", "anchor", "detail"]


def anchor(name: str) -> str:
    """The id of an image's card: `image-<slug>-<hash>` (the hash keeps names with the same slug apart)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-")[:40]
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"image-{slug}-{digest}" if slug else f"image-{digest}"


def table(records: Iterable[dict]) -> dict | None:
    """{"count", "labelled", "mistakes", "json"} for templates/images_table.html.jinja2, or None for no records.

    `json` is compact JSON text safe inside <script type="application/json"> (`<`, `>`, `&` as \\u escapes):
    {"rows": [[name, truth, prediction, confidence, correct], ...], "columns": COLUMNS, "labelled": bool,
    "labels": [text, ...]}.
    truth and prediction are positions in labels (truth null without ground truth); confidence is the top-1
    probability (4 decimals); correct is 1 or 0 (truth index == top-1 index), null without truth. A row of a
    detail image adds its card's anchor and its detail."""
    labels: dict[str, int] = {}
    rows = io.StringIO()  # the JSON text as it is made: a data set's rows are never lists in memory, nor copied
    rows.write('{"rows":[')
    count = mistakes = 0
    labelled = segmenter = False
    for record in records:
        best, truth = (record["top_k"] or [{"label": "–", "share": 0.0}])[0], record["truth"]
        if "share" in best:  # a segmenter's: its largest predicted class, and its mIoU where it has a truth mask
            segmenter = True
            score = (record.get("dataset") or {}).get("miou")
            best = dict(best, share=score)
        correct = None if truth is None else int(truth["index"] == best["index"])
        mistakes += correct == 0
        labelled = labelled or truth is not None
        row = [record["name"], None if truth is None else labels.setdefault(truth["label"], len(labels)),
               labels.setdefault(best["label"], len(labels)),
               None if best.get("share", 0.0) is None else  # a detector's: its best box score
               round(float(best.get("probability", best.get("share", best.get("score")))), 4), correct]
        if record.get("detail"):
            row += [anchor(record["name"]), record["detail"]]
        rows.write(("," if count else "") + _safe(json.dumps(row, ensure_ascii=False, separators=(",", ":"))))
        count += 1
    if not count:
        return None
    rest = _safe(json.dumps({"columns": COLUMNS, "labelled": labelled, "labels": list(labels)}, ensure_ascii=False,
                            separators=(",", ":")))
    rows.write("]," + rest[1:])
    text = rows.getvalue()
    return {"count": count, "labelled": labelled, "mistakes": mistakes, "json": text,
            "headers": ("Largest class", "mIoU") if segmenter else ("Prediction", "Confidence")}


def _safe(text: str) -> str:
    """JSON text safe inside <script>: `<`, `>` and `&` as \\u escapes (the same JSON)."""
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
