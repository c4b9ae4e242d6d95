"""Images are read ahead of the model, in a pool of threads (`inputs.read_ahead`) where torch leaves a core free:
the next batch is read while the model runs on this one, in the same order, with the same images skipped and the
same messages; with torch on every core the caller reads, and no thread is started. Reading one image copies
less than it did, and gives the same pixels. Memory is trimmed between batches at a bounded share of the time."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from reportgen import datasets, inputs, ops
from reportgen.config import Preprocess, load_config
from reportgen.inputs import ImageReadError, free_readers, prepare_image, read_image
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


@pytest.fixture
def torch_threads():
    """Sets torch's thread count for one test (`torch_threads(n)`), and puts the count back after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_readers_are_the_cores_torch_leaves_free_at_most_four():
    assert [free_readers(cores, 2) for cores in (1, 2, 3, 4, 8, 64)] == [0, 0, 1, 2, 4, 4]
    assert free_readers(16, 1) == 4 and free_readers(2, 1) == 1
    # a model on a GPU: torch's CPU threads wait, the caller's thread launches the kernels
    assert [free_readers(cores, 2, "cuda") for cores in (1, 2, 3, 8)] == [0, 1, 2, 4]
    assert free_readers(2, 2, torch.device("cpu")) == 0


def test_the_next_batch_is_read_in_other_threads_while_the_caller_holds_this_one(project, monkeypatch,
                                                                                torch_threads):
    monkeypatch.setattr(inputs, "CORES", 4)  # a core free for readers beside torch's one thread: 3 readers
    torch_threads(1)
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


def test_with_torch_on_every_core_the_caller_reads_and_no_thread_starts(project, monkeypatch, torch_threads):
    monkeypatch.setattr(inputs, "CORES", 2)
    torch_threads(2)
    names = [f"{i:02d}.png" for i in range(6)]
    cfg, info = _setup(project, names, ("03.png",), batch_size=2)
    read: list[tuple[str, threading.Thread]] = []
    real = datasets.read_entry

    def recorded(entry, *args, **kwargs):
        read.append((entry.path.name, threading.current_thread()))
        return real(entry, *args, **kwargs)

    monkeypatch.setattr(datasets, "read_entry", recorded)
    before = set(threading.enumerate())
    batches = datasets.scan(cfg, info.preprocess, datasets.select(cfg, None, None), datasets.Scan())
    first = next(batches)
    assert [entry.path.name for entry, _, _ in first] == names[:2]
    assert [name for name, _ in read] == names[:2]  # nothing read ahead: only what was asked for
    assert [[entry.path.name for entry, _, _ in batch] for batch in batches] == [["02.png", "04.png"], ["05.png"]]
    assert {thread for _, thread in read} == {threading.current_thread()}, read
    assert not [t for t in set(threading.enumerate()) - before if t.name.startswith("reportgen-read")]


@pytest.mark.parametrize("readers", [0, 2])
def test_read_ahead_hands_out_values_and_errors_in_order_with_or_without_readers(readers):
    def read(i: int) -> int:
        if i == 3:
            raise ValueError("three")
        return i * 10

    got = []
    for item, future in inputs.read_ahead(read, range(6), ahead=2, readers=readers):
        got.append((item, future.exception() and str(future.exception()) or future.result()))
    assert got == [(0, 0), (1, 10), (2, 20), (3, "three"), (4, 40), (5, 50)]


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



def test_memory_is_trimmed_again_only_once_100_times_the_last_trims_time_has_passed(monkeypatch):
    trims = []
    monkeypatch.setattr(ops, "_malloc_trim", lambda: trims.append)  # each trim's argument, recorded
    monkeypatch.setattr(ops, "_last_trim", {"end": -math.inf, "cost": 0.0})
    ops.release_memory()
    assert trims == [0]
    ops._last_trim["cost"] = 3600.0  # as if that trim had taken an hour: the next waits 100 hours
    ops.release_memory()
    assert trims == [0]
    ops._last_trim["end"] -= ops.TRIM_SPACING * 3600.0  # and they have passed
    ops.release_memory()
    assert trims == [0, 0] and ops._last_trim["cost"] < 3600.0


def _copying_read(path, input_size, pre):
    """What reading and preparing an image did before it copied less (kept here as the reference): orientation
    applied on a copy, every conversion done even where the mode was right already, resize and crop done even to
    the image's own size."""
    with Image.open(path) as img:
        img.seek(0)
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I;16"):
            grey = np.clip(np.asarray(img, dtype=np.float64) / 65535.0 * 255.0, 0, 255).round().astype(np.uint8)
            pixels = np.repeat(grey[..., None], 3, axis=2)
        else:
            rgb = img.convert("RGBA").convert("RGB") if img.mode in ("RGBA", "P") and "transparency" in img.info \
                or img.mode == "RGBA" else img.convert("RGB")
            pixels = np.asarray(rgb, dtype=np.uint8)
    geo = inputs.geometry(pixels.shape[1], pixels.shape[0], pre, input_size)
    prepared = Image.fromarray(pixels).resize(geo.resized, geo.resample)
    prepared = inputs._center_crop(prepared, geo.crop)
    display = np.asarray(prepared.convert("RGB"), dtype=np.uint8)
    grey = np.asarray(prepared.convert("L"), dtype=np.float32) / np.float32(255.0)
    return pixels, display, grey


@pytest.mark.parametrize("size", [(24, 24), (40, 30)])  # the model's own size (nothing resized), and not
def test_pixels_are_those_of_the_copying_path_for_every_kind_of_file(tmp_path, size):
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    files = {}
    exif = rgb.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    rgb.save(files.setdefault("jpeg, EXIF orientation", tmp_path / "r.jpg"), exif=exif, quality=95)
    rgb.save(files.setdefault("png", tmp_path / "rgb.png"))
    rgb.convert("L").save(files.setdefault("grey png", tmp_path / "l.png"))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(files.setdefault("palette png", tmp_path / "p.png"))
    palette.save(files.setdefault("palette png, transparency", tmp_path / "pt.png"), transparency=3)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)))
    rgba.save(files.setdefault("rgba png", tmp_path / "a.png"))
    deep = Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    deep.save(files.setdefault("16-bit png", tmp_path / "d.png"))
    assert Image.open(tmp_path / "d.png").mode == "I;16" and Image.open(tmp_path / "r.jpg").getexif()[0x0112] == 6
    for channels in (1, 3):
        input_size = (channels, 24, 24)
        for kind, path in files.items():
            pixels, display, grey = _copying_read(path, input_size, Preprocess(normalize=None))
            got = read_image(path)
            prepared = prepare_image(got, Preprocess(normalize=None), input_size)
            assert got.dtype == np.uint8 and np.array_equal(got, pixels), kind
            assert np.array_equal(prepared.display, display), kind
            want = grey[None] if channels == 1 else display.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)
            assert torch.equal(prepared.tensor, torch.from_numpy(np.ascontiguousarray(want))), kind
    assert read_image(files["jpeg, EXIF orientation"]).shape[:2] == (size[0], size[1])  # turned: w × h is h × w
