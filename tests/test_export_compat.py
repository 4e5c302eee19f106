"""pipeline.compat: cityscapesscripts across numpy (in1d removed in 2.4) and Pillow (mode I in 13)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from pipeline.compat import _in1d, numpy_in1d, png16_bytes, read_png_ints


def test_in1d_matches_isin_flattened():
    a = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(_in1d(a, [2, 4]), [False, True, False, True])
    np.testing.assert_array_equal(_in1d(a, [2, 4], invert=True), [True, False, True, False])


def test_numpy_in1d_works_without_it_and_restores(monkeypatch):
    # simulate numpy >= 2.4, where np.in1d no longer exists
    monkeypatch.delattr(np, "in1d", raising=False)
    with numpy_in1d():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.in1d([1, 5], [5]).tolist() == [False, True]
    assert not hasattr(np, "in1d")


def test_numpy_in1d_restores_an_existing_one(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(np, "in1d", sentinel, raising=False)
    with numpy_in1d():
        assert np.in1d is _in1d
    assert np.in1d is sentinel


def test_png16_roundtrip_above_255_and_never_mode_I():
    a = np.array([[0, 26, 26001], [65535, 7, 1000]], dtype=np.int64)
    data = png16_bytes(a)
    img = Image.open(io.BytesIO(data))
    assert img.mode in ("I;16", "I")  # Pillow < 13 may open it as I, >= 13 as I;16
    assert data[24:26] == bytes([16, 0]), "IHDR: 16-bit greyscale"
    buf = io.BytesIO(data)
    np.testing.assert_array_equal(read_png_ints(buf), a)
    with pytest.raises(ValueError, match="0..65535"):
        png16_bytes(np.array([[70000]]))


def test_read_png_ints_reads_8bit_label_pngs():
    buf = io.BytesIO()
    Image.fromarray(np.array([[3, 255]], dtype=np.uint8)).save(buf, format="PNG")
    assert read_png_ints(buf).tolist() == [[3, 255]]
