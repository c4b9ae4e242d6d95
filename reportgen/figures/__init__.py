"""Figures: arrays in, PNG bytes out. Grids and overlays are numpy/Pillow; charts use matplotlib's object API."""
