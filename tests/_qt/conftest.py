"""Fixtures of the GUI tests."""

import gc

import pytest


@pytest.fixture(autouse=True)
def _heap_unfrozen_before_viewers_close(request):
    """After a run the heap stays frozen (stream_worker.FROZEN_HEAP); layers leaving the viewer start
    a full collection one turn later. napari's make_napari_viewer checks at teardown, right after
    closing the test's viewer, that it was collected: unfreeze before it closes."""
    if "make_napari_viewer" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("make_napari_viewer")  # a dependency: torn down after this fixture
    yield
    gc.unfreeze()
