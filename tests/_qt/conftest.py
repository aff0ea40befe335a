"""Fixtures of the GUI tests."""

import gc

import pytest


@pytest.fixture(autouse=True)
def _heap_unfrozen_before_viewers_close(request):
    """A run leaves the heap frozen (stream_worker.FROZEN_HEAP) until a layer leaves the viewer.
    napari's make_napari_viewer checks at teardown that the test's closed viewer was collected,
    which a viewer without layers, frozen by a run, would not be: unfreeze before it closes."""
    if "make_napari_viewer" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("make_napari_viewer")  # a dependency: torn down after this fixture
    yield
    gc.unfreeze()
