"""DDM generation on the model grid and back: streaming order, geometry, labels, seeds, adaptation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.ddm.generate import gamma_schedule, generate_ddm
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame, Progress
from napari_deformdiff.core.geometry import Geometry
from napari_deformdiff.core.io import Volume
from napari_deformdiff.core.nn.model_grid import GridMap, to_model

from .ddm_helpers import blob, pair_volumes, tiny_model


def frames_of(events):
    return [e for e in events if isinstance(e, Frame)]


def constant_field_model(shift_model_voxels, ndims=2, **kw):
    """A tiny DDM whose deformation module outputs a constant field (model voxels) for any code."""
    model = tiny_model(ndims, **kw)
    with torch.no_grad():
        for p in model.field_fn.parameters():
            p.zero_()
        model.field_fn.outconv.block.bias.copy_(torch.tensor(shift_model_voxels, dtype=torch.float32))
    return model


def test_gamma_schedules():
    assert np.allclose(gamma_schedule(5), [0, 0.25, 0.5, 0.75, 1])
    assert np.allclose(gamma_schedule(8, loop=True), [0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25])
    assert np.allclose(gamma_schedule(5, loop=True), [0, 0.5, 1, 2 / 3, 1 / 3])
    for bad in (1, 201):
        with pytest.raises(InputError, match="frames must be between"):
            gamma_schedule(bad)


def test_grid_map_keeps_physical_positions_and_displacements():
    shape, spacing = (40, 44), (1.5, 1.7)
    grid = GridMap(shape, spacing, (32, 32), (2.0, 2.0))
    centre_mm = (0.5 * (shape[0] - 1) * spacing[0] + 6.0, 0.5 * (shape[1] - 1) * spacing[1] - 4.0)
    img = blob(shape, centre_mm, 8.0, spacing)
    m = grid.image_to_model(torch.from_numpy(img)[None, None])[0, 0].numpy()
    # centroid in mm relative to the grid centre is the same on both grids
    def centroid_mm(a, sp):
        idx = np.indices(a.shape).reshape(a.ndim, -1)
        c = (idx * a.reshape(-1)).sum(1) / a.sum()
        return (c - (np.array(a.shape) - 1) / 2) * np.array(sp)
    assert np.allclose(centroid_mm(m, (2.0, 2.0)), centroid_mm(img, spacing), atol=0.2)
    # a constant field of 1.5 model voxels along y is 3 mm: 3 / 1.5 = 2 input voxels
    u = torch.zeros(1, 2, 32, 32)
    u[:, 0] = 1.5
    back = grid.field_to_input(u)[0].numpy()
    inside = back[:, 10:-10, 10:-10]
    assert np.allclose(inside[0], 2.0, atol=1e-4) and np.allclose(inside[1], 0.0, atol=1e-6)


def test_frames_stream_in_order_with_the_first_before_the_diffusion_pass():
    source, target, labels = pair_volumes()
    events = list(generate_ddm(source, target, frames=5, labels=labels, model=tiny_model(2)))
    kinds = [(type(e).__name__, getattr(e, "message", getattr(e, "index", None))) for e in events]
    assert kinds[:4] == [("Plan", None), ("Progress", "loading weights"), ("Frame", 0), ("Progress", "diffusion pass")]
    frames = frames_of(events)
    assert [f.index for f in frames] == list(range(5)) and all(f.total == 5 for f in frames)
    assert [f.info["gamma"] for f in frames] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    for f in frames:
        assert f.image.shape == source.data.shape and f.image.dtype == np.float32
        assert f.field.shape == (2, *source.data.shape)
        # each frame is the ORIGINAL source warped by its field, at the input's resolution
        expected = spatial.warp(torch.from_numpy(source.data)[None, None], torch.from_numpy(f.field)[None],
                                padding_mode="border")[0, 0].numpy()
        assert np.allclose(f.image, expected, atol=1e-5)
        assert f.labels.dtype == np.uint8 and set(np.unique(f.labels)) <= {0, 3}


def test_fields_come_back_in_the_inputs_voxels_and_geometry():
    # model spacing 2 mm; a constant field of (1, -0.5) model voxels = (2, -1) mm
    shape, spacing = (40, 44), (1.5, 1.7)
    model = constant_field_model([1.0, -0.5])
    source, target, _ = pair_volumes(shape, spacing)
    frames = frames_of(generate_ddm(source, target, frames=3, model=model))
    last = frames[-1].field[:, 12:-12, 12:-12]  # away from the model grid's edge
    assert np.allclose(last[0], 2.0 / 1.5, atol=1e-3) and np.allclose(last[1], -1.0 / 1.7, atol=1e-3)
    # the displacement in mm is the same on both grids: (1 * 2, -0.5 * 2) mm
    assert np.allclose(last[0] * 1.5, 2.0, atol=1e-3) and np.allclose(last[1] * 1.7, -1.0, atol=1e-3)
    # the frame is the source moved by that displacement (pull: out(x) = in(x + u))
    moved = frames[-1].image[12:-12, 12:-12]
    assert np.allclose(moved, np.asarray(source.data)[12 + 1:-12 + 1, 12:-12], atol=0.3)


def test_loop_reuses_mirrored_fields():
    source, target, _ = pair_volumes()
    frames = frames_of(generate_ddm(source, target, frames=6, loop=True, model=tiny_model(2)))
    assert [f.info["gamma"] for f in frames] == pytest.approx([0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3])
    assert np.array_equal(frames[1].field, frames[5].field) and np.array_equal(frames[2].image, frames[4].image)


def test_adaptation_is_deterministic_improves_the_pair_and_leaves_the_model_unchanged():
    source, target, _ = pair_volumes(shift=(4.5, -3.0))
    model = tiny_model(2, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run(adapt):
        return frames_of(generate_ddm(source, target, frames=3, model=model, adapt=adapt))

    a, b = run(25), run(25)
    assert all(np.array_equal(x.image, y.image) and np.array_equal(x.field, y.field) for x, y in zip(a, b))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    plain = run(0)
    err = lambda fs: float(np.mean((fs[-1].image - target.data) ** 2))  # noqa: E731
    assert err(a) < 0.2 * err(plain)


def test_the_model_grid_input_is_normalized_to_minus_one_one():
    source, _, _ = pair_volumes()
    grid = GridMap(source.spatial_shape, source.geometry.spacing, (32, 32), (2.0, 2.0))
    t = to_model(source.data * 500 + 40, grid)
    assert float(t.min()) == pytest.approx(-1.0, abs=1e-6) and float(t.max()) <= 1.0


@pytest.mark.parametrize("case, message", [
    ("shape", "different shapes"),
    ("dims", "the source is 2D but the target is 3D"),
    ("geometry", "different geometry"),
    ("labels", "labels are not integers"),
    ("nan", "NaN or infinite"),
    ("constant", "constant"),
    ("model", "the model is 2D but the images are 3D"),
])
def test_bad_input_is_refused_with_a_specific_message(case, message):
    source, target, labels = pair_volumes()
    g3 = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    model = tiny_model(2)
    kw = {}
    if case == "shape":
        target = Volume(target.data[:-2], target.geometry)
    elif case == "dims":
        target = Volume(np.zeros((4, 40, 44), np.float32), g3)
    elif case == "geometry":
        target = Volume(target.data, Geometry((1.5, 1.7), (0.0, 5.0), np.eye(2)))
    elif case == "labels":
        labels = Volume(labels.data.astype(np.float32) + 0.5, labels.geometry, True)
        kw["labels"] = labels
    elif case == "nan":
        data = source.data.copy()
        data[3, 3] = np.nan
        source = Volume(data, source.geometry)
    elif case == "constant":
        source = Volume(np.ones_like(source.data), source.geometry)
    elif case == "model":
        source = Volume(np.random.rand(8, 40, 44).astype(np.float32), g3)
        target = Volume(np.random.rand(8, 40, 44).astype(np.float32), g3)
    before = source.data.copy()
    with pytest.raises(InputError, match=message):
        list(generate_ddm(source, target, frames=3, model=model, **kw))
    assert np.array_equal(source.data, before, equal_nan=True)


def test_nan_weights_are_reported():
    source, target, _ = pair_volumes()
    model = tiny_model(2)
    with torch.no_grad():
        model.field_fn.outconv.block.bias.fill_(float("nan"))
    with pytest.raises(InputError, match="NaN or infinite values in the deformation field"):
        list(generate_ddm(source, target, frames=3, model=model))


def test_progress_events_name_the_steps():
    source, target, _ = pair_volumes()
    events = list(generate_ddm(source, target, frames=2, model=tiny_model(2), adapt=3))
    messages = [e.message for e in events if isinstance(e, Progress)]
    assert messages[0] == "loading weights"
    assert [m.split(":")[0] for m in messages[1:4]] == [f"adapting level 1/3, step {k}" for k in (1, 2, 3)]


# --- the fast path (oneDNN copy, batched frames, fields interpolated between anchor gammas) ---

def lively_model(ndims=3, seed=3):
    """A tiny DDM with weights large enough that its fields move several voxels and bend with gamma."""
    model = tiny_model(ndims, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model


def plain_loop_fields(model, source, target, gammas):
    """The authors' loop on the unmodified model, one deformation-module call per gamma, brought
    back to the input grid: (len(gammas), ndims, *input_shape)."""
    cfg = model.config
    grid = GridMap(source.spatial_shape, source.geometry.spacing, cfg.grid, cfg.spacing)
    s, t = to_model(source.data, grid), to_model(target.data, grid)
    with torch.no_grad():
        code = model.code(s, t)
        return torch.cat([grid.field_to_input(model.field(s, float(g) * code)) for g in gammas])


def pair_3d(on_model_grid=False):
    shape, spacing = ((16, 32, 32), (2.0, 2.0, 2.0)) if on_model_grid else ((14, 30, 34), (2.5, 1.5, 1.4))
    return pair_volumes(shape, spacing, shift=(2.0, 3.0, -2.0))


@pytest.mark.parametrize("on_model_grid", [False, True])  # True: no resampling to and from the model grid
def test_every_frame_path_equals_the_plain_loop_frame_by_frame(on_model_grid):
    source, target, labels = pair_3d(on_model_grid)
    model = lively_model()
    frames = frames_of(generate_ddm(source, target, fold_free=False, frames=6, labels=labels, model=model, anchors=0))
    plain = plain_loop_fields(model, source, target, gamma_schedule(6))
    assert float(plain[-1].abs().max()) > 2.0  # the fields really move the image
    s_in = torch.from_numpy(source.data)[None, None]
    for f, ddf in zip(frames, plain):
        assert np.allclose(f.field, ddf.numpy(), atol=1e-5 * float(plain.abs().max()))
        image = spatial.warp(s_in, ddf[None], padding_mode="border")[0, 0].numpy()
        assert np.abs(f.image - image).max() < 1e-4


def test_anchored_fields_are_the_cubic_through_the_anchor_fields():
    from scipy.interpolate import BarycentricInterpolator

    source, target, _ = pair_3d()
    model = lively_model()
    gammas = gamma_schedule(9)
    frames = frames_of(generate_ddm(source, target, fold_free=False, frames=9, model=model, anchors=4))
    nodes = np.linspace(0, 1, 4)
    at_nodes = plain_loop_fields(model, source, target, nodes).numpy()
    expected = BarycentricInterpolator(nodes, at_nodes.reshape(4, -1))(gammas).reshape(9, *at_nodes.shape[1:])
    exact = plain_loop_fields(model, source, target, gammas).numpy()
    scale = float(np.abs(exact).max())
    for f, e, x, g in zip(frames, expected, exact, gammas):
        assert np.allclose(f.field, e, atol=1e-5 * scale)
        if np.isclose(nodes, g).any():  # frames at an anchor are exact
            assert np.allclose(f.field, x, atol=1e-5 * scale)
    # this model's fields bend with gamma, so the in-between frames really are interpolated
    assert max(np.abs(f.field - x).max() for f, x in zip(frames, exact)) > 1e-4 * scale


def test_the_deformation_module_runs_once_per_anchor_on_the_cpu():
    source, target, _ = pair_3d()
    model = lively_model()
    rows = []
    model.field_fn.outconv.register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    list(generate_ddm(source, target, frames=16, model=model))
    assert sum(rows) == 4  # gamma 0 first, then 1/3, 2/3, 1 in one batch
    rows.clear()
    list(generate_ddm(source, target, frames=16, model=model, anchors=0))
    assert sum(rows) == 16
    with pytest.raises(InputError, match="anchors must be 0"):
        list(generate_ddm(source, target, frames=16, model=model, anchors=1))


@pytest.mark.parametrize("loop", [False, True])
def test_bundled_weights_anchored_frames_stay_within_half_a_db_of_every_frame(loop):
    from napari_deformdiff.core.ddm.weights import load_ddm
    from napari_deformdiff.core.image_metrics import psnr
    from napari_deformdiff.core.phantom import cardiac_phantom
    from napari_deformdiff.core.phantom.dataset import centred_geometry

    model, _ = load_ddm(None, ndims=2)
    case = cardiac_phantom(9001, two_d=True, frames=20)
    geometry = centred_geometry(case.images.shape[1:], case.spacing)
    source, target = Volume(case.images[0], geometry), Volume(case.images[case.es_index], geometry)
    rng = float(np.ptp(case.images[0]))
    n = 16 if loop else case.es_index + 1
    fast = frames_of(generate_ddm(source, target, fold_free=False, frames=n, loop=loop, model=model))
    every = frames_of(generate_ddm(source, target, fold_free=False, frames=n, loop=loop, model=model, anchors=0))
    truth = list(case.images[: n]) if not loop else [case.images[case.es_index]] * n
    for a, b, ref in zip(fast, every, truth):
        assert psnr(a.image, b.image, rng) > 40.0
        assert abs(psnr(a.image, ref, rng) - psnr(b.image, ref, rng)) <= 0.5


def _det(u):
    """det(I + grad u) by numpy's central differences, independently of spatial.jacobian_determinant."""
    n = u.shape[0]
    grads = np.stack([np.gradient(u[i], axis=j) for i in range(n) for j in range(n)]).reshape(n, n, *u.shape[1:])
    m = grads + np.eye(n).reshape(n, n, *([1] * n))
    return np.linalg.det(np.moveaxis(m, (0, 1), (-2, -1)))


def test_frames_are_fold_free_by_default_and_the_off_switch_gives_the_networks_fields():
    """A model whose fields fold a lot: by default no frame's field folds and its image is the source
    warped with that field; fold_free=False gives the networks' folding fields."""
    source, target, labels = pair_3d()
    model = lively_model()
    plain = frames_of(generate_ddm(source, target, frames=5, labels=labels, model=model, fold_free=False))
    fixed = frames_of(generate_ddm(source, target, frames=5, labels=labels, model=model))
    assert max((_det(f.field) <= 0).mean() for f in plain) > 0.001
    for f in fixed:
        assert (_det(f.field) <= 0).mean() == 0.0
        image = spatial.warp(torch.from_numpy(source.data)[None, None], torch.from_numpy(f.field)[None],
                             padding_mode="border")[0, 0].numpy()
        np.testing.assert_allclose(f.image, image, atol=1e-5)
        assert set(np.unique(f.labels)) <= set(np.unique(labels.data))


def test_the_repair_barely_changes_the_bundled_weights_cycle_of_the_sample():
    """The sample case with the bundled 3D weights: the networks' last frames fold on a few tenths of a
    percent of the voxels; repaired, none folds, the mean displacement moves by under 1 % and the
    frames stay within 35 dB of the networks' frames."""
    from pathlib import Path

    from napari_deformdiff.core.image_metrics import psnr
    from napari_deformdiff.core.io.pairs import find_pairs

    pair = find_pairs(Path(__file__).resolve().parents[1] / "sample_data" / "patient001")[0]
    plain = frames_of(generate_ddm(pair.source, pair.target, frames=6, fold_free=False))
    fixed = frames_of(generate_ddm(pair.source, pair.target, frames=6))
    assert (_det(plain[-1].field) <= 0).mean() > 0.001
    data_range = float(np.ptp(pair.source.data))
    for p, f in zip(plain, fixed):
        assert (_det(f.field) <= 0).mean() == 0.0
        norm = lambda u: float(np.linalg.norm(u, axis=0).mean())  # noqa: E731
        assert norm(f.field) == pytest.approx(norm(p.field), rel=0.01)
        assert np.array_equal(f.image, p.image) or psnr(f.image, p.image, data_range) > 35


def test_the_repair_leaves_a_strong_valid_contraction_alone():
    """A field with a strong contraction that does not fold (det 0.02 inside a disc) and one fold far
    from it: the repaired field folds nowhere and differs only near the fold."""
    from napari_deformdiff.core.ddm.generate import _fold_free

    n = 96
    y, x = np.mgrid[:n, :n].astype(np.float32)
    r = np.hypot(y - 30, x - 30)
    fade = np.exp(-0.5 * (r / 12) ** 4)  # radial map r(1 - k fade) is monotone: no fold
    k = 1 - np.sqrt(0.02)
    field = np.stack([-k * (y - 30) * fade, -k * (x - 30) * fade]).astype(np.float32)
    bump = np.exp(-((y - 70) ** 2 + (x - 70) ** 2) / (2 * 1.5 ** 2))
    field[1] += 5.0 * bump  # d u_x / d x down to about -2: det < 0 around (70, 70)
    det = _det(field)
    assert (det[r < 6] < 0.05).all() and (det[r < 40] > 0).all() and (det <= 0).sum() > 0
    source = Volume(np.random.default_rng(0).random((n, n), dtype=np.float32), Geometry.identity(2), False, "s")
    (out,) = _fold_free(iter([Frame(1, 2, source.data, field, None, {})]), source, None)
    assert (_det(out.field) <= 0).sum() == 0
    far = np.hypot(y - 70, x - 70) > 12
    np.testing.assert_array_equal(out.field[:, far], field[:, far])
