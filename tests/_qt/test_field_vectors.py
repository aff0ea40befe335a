"""_qt/field_vectors.py overrides private parts of napari's Vectors layer: the napari versions are pinned,
and this fails loudly when a napari release renames or drops what it overrides."""

from __future__ import annotations

import inspect
import tomllib
from pathlib import Path

import napari
import napari.layers
import numpy as np
from packaging.requirements import Requirement
from packaging.version import Version

from napari_deformdiff._qt import field_vectors

# Every private attribute field_vectors.py reads or overrides on napari's Vectors layer.
OVERRIDDEN = ("_extent_data", "_update_thumbnail")
READ = ("_thumbnail_shape", "_view_data", "_view_indices", "_max_vectors_thumbnail", "_slice_input", "_edge")


def napari_requirement() -> Requirement:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    return next(Requirement(d) for d in project["dependencies"] if Requirement(d).name == "napari")


def test_napari_is_pinned_to_the_minor_release_tested_and_installed():
    spec = napari_requirement().specifier
    installed = Version(napari.__version__)
    assert installed in spec, f"napari {installed} is outside the pin {spec}; check _qt/field_vectors.py"
    assert any(s.operator == "<" for s in spec), "the napari pin needs an upper bound"
    assert Version(f"{installed.major}.{installed.minor + 1}") not in spec  # the next minor is not allowed


def test_the_private_parts_it_overrides_exist_in_this_napari():
    base = napari.layers.Vectors
    for name in OVERRIDDEN:
        assert name in vars(field_vectors.Vectors) and hasattr(base, name), name
    assert isinstance(inspect.getattr_static(base, "_extent_data"), property)
    layer = base(np.array([[[1.0, 2.0], [0.0, 3.0]]]))
    for name in READ:
        assert hasattr(layer, name), f"napari.layers.Vectors has no {name} any more"
    assert hasattr(layer._slice_input, "displayed") and hasattr(layer._edge, "colors")


def test_napari_uses_the_overrides(monkeypatch):
    data = np.array([[[4.0, 4.0], [0.0, 6.0]], [[10.0, 2.0], [3.0, 0.0]]])
    fixed = np.array([[0.0, 0.0], [19.0, 29.0]])
    layer = field_vectors.Vectors(data, extent=lambda: fixed, edge_color="red", length=1.0)
    np.testing.assert_array_equal(layer.extent.data, fixed)  # napari's extent comes from _extent_data
    own = field_vectors.Vectors(data, length=1.0)
    np.testing.assert_allclose(own.extent.data, napari.layers.Vectors(data, length=1.0).extent.data)

    calls = []
    real = field_vectors.Vectors._update_thumbnail
    monkeypatch.setattr(field_vectors.Vectors, "_update_thumbnail", lambda self: calls.append(1) or real(self))
    layer.length = 2.0
    layer.refresh()
    assert calls, "napari no longer calls _update_thumbnail"
    thumb = layer.thumbnail
    lit = thumb[..., 0] > 0
    assert lit.sum() > 3 and np.all(thumb[lit][:, 1:3] == 0)  # red lines drawn on black
