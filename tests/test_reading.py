"""Images are read ahead of the model, in a pool of threads (`inputs.read_ahead`): the next batch is read while
the model runs on this one, in the same order, with the same images skipped and the same messages."""
from __future__ import annotations

import threading
import time

import pytest

from reportgen import datasets
from reportgen.config import load_config
from reportgen.inputs import ImageReadError
from reportgen.pipeline import prepare_model
from tests.conftest import make_image


def _setup(project, names, broken=(), **inputs):
    """A plain folder of image files `names` (those in `broken` are text), and the loaded config and model info
    of a build over it."""
    folder = project.root / "set"
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        if name in broken:
            (folder / name).write_text("not an image")
        else:  # the first image is large, so that a reader finishes later ones before it
            make_image(folder / name, size=(1200, 1200) if i == 0 else (40, 32), seed=i)
    config = project.base()
    config["inputs"].update({"images": ["set/"], **inputs})
    cfg = load_config(project.write(config))
    return cfg, prepare_model(cfg)[0]


def test_the_next_batch_is_read_in_other_threads_while_the_caller_holds_this_one(project, monkeypatch):
    names = [f"{i:02d}.png" for i in range(10)]
    cfg, info = _setup(project, names, batch_size=2)
    read: list[tuple[str, threading.Thread]] = []  # (file, thread) of each read, as it ends
    real = datasets.read_entry

    def recorded(entry, *args, **kwargs):
        out = real(entry, *args, **kwargs)
        read.append((entry.path.name, threading.current_thread()))
        return out

    monkeypatch.setattr(datasets, "read_entry", recorded)
    batches = datasets.scan(cfg, info.preprocess, datasets.select(cfg, None, None), datasets.Scan())
    first = next(batches)
    assert [entry.path.name for entry, _, _ in first] == names[:2]
    deadline = time.monotonic() + 10
    while len(read) < 4 and time.monotonic() < deadline:  # nothing more asked for: the pool reads on
        time.sleep(0.01)
    assert {name for name, _ in read} >= set(names[:4]), read
    # read while the caller held the first batch: by the pool (the first two may have been read by the caller)
    readers = {thread for name, thread in read if name in names[2:4]}
    assert threading.main_thread() not in readers, read
    time.sleep(0.2)
    assert len(read) <= 2 + 2 + 1  # bounded: a batch ahead (and the one being handed out), not the whole set
    batches.close()  # left early (an error, Ctrl-C): the reads not started are cancelled, the threads end
    for thread in readers:
        thread.join(timeout=10)
        assert not thread.is_alive()
    assert len(read) <= 2 + 2 + 1


def test_order_skipped_images_and_messages_are_those_of_one_image_at_a_time(project):
    names, broken = [f"{i:02d}.png" for i in range(9)], ("02.png", "05.png")
    cfg, info = _setup(project, names, broken, batch_size=2, limit=6)
    loaded = datasets.load(cfg, info.preprocess)
    assert [image.name for image in loaded.images] == ["00", "01", "03", "04", "06", "07"]
    assert [image.source for image in loaded.images] == ["set/00.png", "set/01.png", "set/03.png", "set/04.png",
                                                         "set/06.png", "set/07.png"]
    assert loaded.notes == ["2 images could not be read and were skipped: set/02.png (not an image Pillow can "
                            "read), set/05.png (not an image Pillow can read)."]

    cfg, info = _setup(project, names, broken, batch_size=2, strict=True)
    with pytest.raises(ImageReadError, match="02.png is not an image"):  # the first in order, not a later one
        datasets.load(cfg, info.preprocess)

