"""reportgen.metrics.localisation: Quantus 0.6.0's PointingGame, and hand-computed energy and IoU."""
import numpy as np
import pytest

from reportgen.metrics.localisation import box_mask, energy_pointing_game, pointing_game, top_iou


def test_box_mask_covers_pixels_whose_centres_are_inside():
    np.testing.assert_array_equal(box_mask((1, 2, 4, 3), (5, 6)), np.pad(np.ones((1, 3), bool), ((2, 2), (1, 2))))
    # fractional box: centres 1.5 and 2.5 are inside [1.2, 2.6), 0.5 and 3.5 are not
    assert box_mask((1.2, 0, 2.6, 1), (1, 5)).tolist() == [[False, True, True, False, False]]
    assert not box_mask((1.1, 1.1, 1.4, 1.4), (4, 4)).any()


def test_pointing_game_hits_misses_and_excludes():
    maps = np.zeros((4, 6, 6))
    maps[:, 1, 1] = 1.0  # the peak at row 1, column 1
    masks = np.zeros((4, 6, 6), bool)
    masks[0, 0:3, 0:3] = True  # around the peak: hit
    masks[1, 4:, 4:] = True  # far away: miss
    masks[2, 1, 4] = True  # 3 px to the right: miss at tolerance 0, hit at 3
    assert pointing_game(maps, masks) == [True, False, False, None]
    assert pointing_game(maps, masks, tolerance=3) == [True, False, True, None]
    assert pointing_game(maps, masks, tolerance=2.9) == [True, False, False, None]
    # (1,1) to (4,4): distance sqrt(18) = 4.24
    assert pointing_game(maps[1:2], masks[1:2], tolerance=4.3) == [True]


def test_pointing_game_any_tied_peak_counts():
    m = np.zeros((1, 4, 4))
    m[0, 0, 0] = m[0, 3, 3] = 2.0
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 3, 3] = True
    assert pointing_game(m, mask) == [True]


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="bool masks"):
        pointing_game(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError):
        top_iou(np.zeros((4, 4)), np.zeros((4, 4), bool))


import quantus  # noqa: E402 (the reference for the tests below)


def quantus_pointing(maps: np.ndarray, masks: np.ndarray) -> list[bool]:
    n = len(maps)
    metric = quantus.PointingGame(disable_warnings=True)  # normalise (by max |a|) keeps the argmax
    x = np.zeros((n, 3) + maps.shape[1:], np.float32)
    scores = metric(model=None, x_batch=x, y_batch=np.zeros(n, int), a_batch=maps[:, None].astype(np.float32),
                    s_batch=masks[:, None].astype(np.float32))
    return [bool(s) for s in scores]


def test_pointing_game_equals_quantus_on_non_constant_maps():
    rng = np.random.default_rng(0)
    n, h, w = 40, 12, 10
    maps = rng.normal(size=(n, h, w))
    maps[::4] = np.round(maps[::4])  # ties at the maximum on some images
    x0, y0 = rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, 8, n), y0 + rng.uniform(1, 8, n)], 1)
    masks = np.stack([box_mask(b, (h, w)) for b in boxes])
    assert all(m.any() for m in masks)
    ours = pointing_game(maps, masks)
    assert 0 < sum(ours) < n  # both outcomes occur
    assert ours == quantus_pointing(maps, masks)


def test_a_constant_map_hits_in_quantus_but_misses_here():
    maps = np.zeros((2, 6, 6))
    maps[1] = 3.0
    masks = np.zeros((2, 6, 6), bool)
    masks[:, 2:4, 2:4] = True
    assert quantus_pointing(maps, masks) == [True, True]  # Quantus counts every tied pixel
    assert pointing_game(maps, masks) == [False, False]
    assert pointing_game(maps, masks, tolerance=15) == [False, False]


def test_energy_pointing_game_by_hand():
    m = np.array([[[1.0, 2.0], [3.0, 4.0]]])  # min-shifted: 0, 1, 2, 3 (mass 6)
    mask = np.array([[[False, True], [False, True]]])  # holds 1 + 3
    assert energy_pointing_game(m, mask) == [pytest.approx(4 / 6)]
    assert energy_pointing_game(m * 5 - 2, mask) == [pytest.approx(4 / 6)]  # scale and shift cancel
    assert energy_pointing_game(np.ones((1, 2, 2)), mask) == [0.0]  # constant: no mass
    assert energy_pointing_game(m, np.zeros_like(mask)) == [None]


def test_top_iou_by_hand():
    m = np.arange(20, dtype=float).reshape(1, 4, 5)  # 85th percentile of 0..19 = 16.15: top = {17, 18, 19}
    mask = np.zeros((1, 4, 5), bool)
    mask[0, 3, 1:4] = True  # values 16, 17, 18
    assert top_iou(m, mask) == [pytest.approx(2 / 4)]
    assert top_iou(m, mask, percentile=50) == [pytest.approx(3 / 10)]  # top = 10..19 (>= 9.5)
    assert top_iou(np.zeros((1, 4, 5)), mask) == [pytest.approx(3 / 20)]  # constant: every pixel
    assert top_iou(m, np.zeros_like(mask)) == [None]
