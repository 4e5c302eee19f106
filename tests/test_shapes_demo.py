"""shapes' `class_colour`: a class-dependent colour bias that changes colours only, never masks."""

import numpy as np
import pytest

from pipeline.datasets.shapes import CLASSES, ShapesOptions, render
from pipeline.errors import ConfigError


def _samples(class_colour: float, n: int = 40, size=(32, 32)):
    opts = ShapesOptions(class_colour=class_colour)
    return [render(i, 0, size, opts) for i in range(n)]


def test_class_colour_moves_colours_towards_the_class_but_keeps_masks_and_variety():
    old, demo = _samples(0.0), _samples(0.8)
    # same (seed, i) → same masks at any bias (the option draws nothing), same bytes twice
    assert all((a[1] == b[1]).all() for a, b in zip(old, demo, strict=True))
    again = _samples(0.8, n=5)
    assert all((a[0] == b[0]).all() for a, b in zip(demo, again, strict=False))
    assert any((a[0] != b[0]).any() for a, b in zip(old, demo, strict=True))

    def region_means(samples, cls):  # mean colour of each sample's pixels of class cls
        return np.array(
            [img[m == cls].mean(0) for img, m in samples if (m == cls).sum() >= 20], float
        )

    for cls, (_, colour) in enumerate(CLASSES):
        d_old, d_demo = (np.abs(region_means(s, cls) - colour).mean() for s in (old, demo))
        assert d_demo < 0.7 * d_old, (cls, d_old, d_demo)  # a bias towards the class colour
    # but not a label: the background's colour still varies from sample to sample
    assert region_means(demo, 0).std(0).min() > 10


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_class_colour_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="class_colour"):
        ShapesOptions(class_colour=bad)
