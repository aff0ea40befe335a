"""The event contract: every generator opens with its Plan, and RunProgress ends exactly at its total."""

import numpy as np
import pytest

from napari_deformdiff.core.ddm.adapt import AdaptSettings
from napari_deformdiff.core.ddm.generate import generate_ddm
from napari_deformdiff.core.events import Frame, Plan, Progress, RunProgress, SequencePreview
from napari_deformdiff.core.modiff.generate import generate_modiff
from napari_deformdiff.core.phantom import stream_cardiac_phantom

from . import ddm_helpers, modiff_helpers


def test_run_progress_adds_stages_in_plan_order():
    run = RunProgress()
    run.update(Plan((("weights", 1), ("adapt", 3), ("frames", 4))))
    assert run.total == 8 and run.done == 0
    run.update(Progress(1, 1, "loaded", "weights"))
    assert run.done == 1 and run.message == "loaded"
    run.update(Progress(2, 3, "adapting", "adapt"))
    assert run.done == 3
    image = np.zeros((2, 2), np.float32)
    run.update(Frame(0, 4, image))
    assert run.done == 5 and run.message == "frames 1/4"
    run.update(SequencePreview(0, 1, image[None]))  # a preview never moves the figure
    assert run.done == 5
    run.update(Progress(1, 3, "late", "adapt"))  # never goes back
    assert run.done == 5
    run.update(Frame(3, 4, image))
    assert run.done == run.total == 8


def _check_run(events):
    events = list(events)
    assert isinstance(events[0], Plan), type(events[0])
    run = RunProgress()
    figures = []
    for e in events:
        run.update(e)
        figures.append(run.done)
    assert figures == sorted(figures)
    assert run.done == run.total == events[0].total
    return events


def test_phantom_stream_plans_its_frames():
    events = _check_run(stream_cardiac_phantom(1, frames=3, two_d=True, shape=(48, 48)))
    assert events[0].stages == (("frames", 3),)


@pytest.mark.parametrize("adapt", [0, 2])
def test_ddm_generation_plans_weights_adaptation_and_frames(adapt):
    source, target, _ = ddm_helpers.pair_volumes()
    model = ddm_helpers.tiny_model(2)
    events = _check_run(generate_ddm(source, target, frames=5, model=model, adapt=adapt))
    steps = AdaptSettings(iterations=adapt).total if adapt else 0  # 2 + 4 + 8 over three levels
    assert steps == (14 if adapt else 0)
    first = (("first frame", 1),) if adapt else ()  # the source, shown before the fit
    assert events[0].stages == (("weights", 1), *first, ("adapt", steps), ("frames", 5))
    assert sum(isinstance(e, Frame) for e in events) == 5
    if adapt:  # the figure during the fit stays below the frames' part of the plan
        run, figures = RunProgress(), []
        for e in events:
            run.update(e)
            if isinstance(e, Progress) and e.stage == "adapt":
                figures.append(run.done)
        assert figures and max(figures) <= 2 + steps


def test_modiff_progress_does_not_overrun_its_plan():
    model = modiff_helpers.tiny_model(2)
    first = modiff_helpers.first_frame()
    events = _check_run(generate_modiff(first, frames=5, steps=3, model=model))
    from napari_deformdiff.core.modiff.frame_fields import ITERATIONS

    # the warp output registers the decoded frames: its iterations are a stage of their own
    assert events[0].stages == (("weights", 1), ("stage 1", 3), ("stage 2", 3), ("fields", ITERATIONS), ("frames", 5))
