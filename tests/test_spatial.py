"""Tests of napari_deformdiff.core.spatial against analytic fields (2D and 3D, small grids)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_deformdiff.core.spatial import (
    compose,
    displacement_stats,
    field_to_vectors,
    folding_ratio,
    identity_grid,
    integrate_velocity,
    jacobian_determinant,
    normalized_to_voxel,
    resize_field,
    voxel_to_normalized,
    warp,
)

SHAPES = {2: (20, 23), 3: (12, 13, 11)}
DIMS = pytest.mark.parametrize("n", [2, 3])


def _smooth_field(shape, amplitude, seed, batch=1, dtype=torch.float32):
    """Smooth random field (B, n, *shape): per component, 3 plane waves of at most one cycle per
    image with random direction and phase, scaled so that max |u_k| == amplitude (voxels)."""
    n = len(shape)
    g = torch.Generator().manual_seed(seed)
    x = identity_grid(shape, dtype=torch.float64)
    u = torch.zeros(batch, n, *shape, dtype=torch.float64)
    for b in range(batch):
        for k in range(n):
            for _ in range(3):
                f = torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1  # cycles per image
                phase = float(torch.rand(1, generator=g, dtype=torch.float64)) * 2 * math.pi
                u[b, k] += torch.sin(sum(2 * math.pi * f[j] * x[j] / shape[j] for j in range(n)) + phase)
    return (amplitude * u / u.abs().amax()).to(dtype)


def _smooth_image(shape, dtype=torch.float32):
    """Smooth analytic image (1, 1, *shape): a product of cosines of period 2*S_k."""
    x = identity_grid(shape, dtype=torch.float64)
    img = torch.ones(shape, dtype=torch.float64)
    for k, s in enumerate(shape):
        img = img * torch.cos(2 * math.pi * x[k] / (2 * s) + 0.3 * k + 0.2)
    return img[None, None].to(dtype)


def _linear_field(shape, A, b, dtype=torch.float64):
    """u(x) = A x + b in voxels, (1, n, *shape)."""
    x = identity_grid(shape, dtype=dtype)
    A = torch.as_tensor(A, dtype=dtype)
    b = torch.as_tensor(b, dtype=dtype)
    return (torch.einsum("ij,j...->i...", A, x) + b.view(-1, *([1] * len(shape))))[None]


# --------------------------------------------------------------------------- grids and units


def test_identity_grid_values():
    g = identity_grid((3, 4), dtype=torch.float64)
    assert g.shape == (2, 3, 4) and g.dtype == torch.float64
    assert torch.equal(g[0], torch.arange(3.0, dtype=torch.float64)[:, None].expand(3, 4))
    assert torch.equal(g[1], torch.arange(4.0, dtype=torch.float64)[None, :].expand(3, 4))
    g3 = identity_grid((2, 3, 5))
    assert g3.shape == (3, 2, 3, 5)
    assert g3[0, 1, 2, 4] == 1 and g3[1, 1, 2, 4] == 2 and g3[2, 1, 2, 4] == 4


@DIMS
def test_voxel_normalized_round_trip_and_values(n):
    shape = SHAPES[n]
    u = _smooth_field(shape, 3.0, seed=1, batch=2, dtype=torch.float64)
    norm = voxel_to_normalized(u)
    for k, s in enumerate(shape):
        assert torch.allclose(norm[:, k], u[:, k] * 2 / (s - 1))
    assert torch.allclose(normalized_to_voxel(norm), u, atol=1e-12)
    # size-1 axis: factor 0, no division by zero
    v = torch.ones(1, 2, 1, 5)
    out = voxel_to_normalized(v)
    assert torch.equal(out[:, 0], torch.zeros(1, 1, 5))
    assert torch.allclose(out[:, 1], torch.full((1, 1, 5), 0.5))


# --------------------------------------------------------------------------- warping


@DIMS
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_zero_field_is_identity(n, padding_mode):
    shape = SHAPES[n]
    # float32, smooth image: grid rounding (~1e-6 voxel) times a small gradient stays < 1e-6
    img = _smooth_image(shape).expand(2, 3, *shape)
    out = warp(img, torch.zeros(2, n, *shape), padding_mode=padding_mode)
    assert out.shape == img.shape and out.dtype == torch.float32
    assert (out - img).abs().max() < 1e-6
    # float64, random image: identity to rounding
    rnd = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out64 = warp(rnd, torch.zeros(2, n, *shape, dtype=torch.float64), padding_mode=padding_mode)
    assert out64.dtype == torch.float64
    assert (out64 - rnd).abs().max() < 1e-12


@DIMS
def test_integer_translation_exact_and_unit_det(n):
    shape = SHAPES[n]
    shift = (2, -3, 1)[:n]
    img = torch.rand(1, 2, *shape, generator=torch.Generator().manual_seed(3))
    u = torch.zeros(1, n, *shape)
    for k in range(n):
        u[:, k] = shift[k]
    out = warp(img, u)
    # out[x] = img[x + t] where x + t is inside
    dst = tuple(slice(max(0, -t), s - max(0, t)) for t, s in zip(shift, shape))
    src = tuple(slice(max(0, t), s - max(0, -t)) for t, s in zip(shift, shape))
    assert (out[(..., *dst)] - img[(..., *src)]).abs().max() < 1e-5
    # outside the valid region, zeros padding gives 0 (check the first row/plane along axis 0)
    assert out[:, :, -2:].abs().max() == 0
    det = jacobian_determinant(u)
    assert det.shape == (1, *shape)
    assert torch.equal(det, torch.ones_like(det))
    assert folding_ratio(u).item() == 0.0


@DIMS
def test_fractional_translation_of_ramp(n):
    shape = SHAPES[n]
    a = torch.tensor((0.7, -1.3, 0.4)[:n], dtype=torch.float64)
    t = torch.tensor((1.25, -0.6, 2.4)[:n], dtype=torch.float64)
    x = identity_grid(shape, dtype=torch.float64)
    ramp = (torch.einsum("k,k...->...", a, x) + 5.0)[None, None]
    u = t.view(1, n, *([1] * n)).expand(1, n, *shape).contiguous()
    out = warp(ramp, u)
    assert out.dtype == torch.float64
    expected = ramp + float(a @ t)
    inside = torch.ones(shape, dtype=torch.bool)
    for k in range(n):
        inside &= (x[k] + t[k] >= 0) & (x[k] + t[k] <= shape[k] - 1)
    assert inside.sum() > 0.5 * inside.numel()
    assert (out[0, 0][inside] - expected[0, 0][inside]).abs().max() < 1e-9
    # float32 path: same result within float32 precision
    out32 = warp(ramp.float(), u.float())
    assert out32.dtype == torch.float32
    assert (out32[0, 0][inside].double() - expected[0, 0][inside]).abs().max() < 1e-4


def test_warp_axis_order_single_voxel_shift():
    """Channel k moves along tensor axis k: a pull by +1 along W reads the right neighbour."""
    img = torch.arange(4 * 5 * 6, dtype=torch.float32).view(1, 1, 4, 5, 6)
    for k, step in enumerate((30, 6, 1)):
        u = torch.zeros(1, 3, 4, 5, 6)
        u[:, k] = 1.0
        out = warp(img, u, padding_mode="border")
        inner = [slice(None)] * 3
        inner[k] = slice(0, -1)
        assert torch.allclose(out[(0, 0, *inner)], img[(0, 0, *inner)] + step)


def test_warp_broadcasts_batch_of_one():
    img = torch.rand(1, 1, 9, 10, generator=torch.Generator().manual_seed(5))
    u = _smooth_field((9, 10), 1.5, seed=2, batch=3)
    out = warp(img, u)
    assert out.shape == (3, 1, 9, 10)
    for b in range(3):
        assert torch.allclose(out[b : b + 1], warp(img, u[b : b + 1]))
    # one field for a batch of images
    imgs = torch.rand(3, 2, 9, 10, generator=torch.Generator().manual_seed(6))
    out = warp(imgs, u[1:2])
    assert out.shape == (3, 2, 9, 10)
    for b in range(3):
        assert torch.allclose(out[b : b + 1], warp(imgs[b : b + 1], u[1:2]))


def test_warp_size_one_axis_matches_2d():
    """A 2D slice stored as 3D (D = 1): the z displacement is ignored, y/x act as in 2D."""
    img = _smooth_image((9, 10))
    u2 = _smooth_field((9, 10), 1.5, seed=4)
    u3 = torch.cat([torch.full((1, 1, 9, 10), 0.7), u2], dim=1)[:, :, None]  # (1, 3, 1, 9, 10)
    out3 = warp(img[:, :, None], u3)
    assert torch.isfinite(out3).all()
    assert torch.allclose(out3[:, :, 0], warp(img, u2), atol=1e-6)


@DIMS
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32])
def test_nearest_labels_keep_dtype_and_values(n, dtype):
    shape = SHAPES[n]
    g = torch.Generator().manual_seed(7)
    labels = torch.randint(1, 6, (1, 1, *shape), generator=g).to(dtype) * 3  # values 3..15, no 0
    u = _smooth_field(shape, 3.7, seed=4)
    for padding_mode in ("border", "reflection"):
        out = warp(labels, u, mode="nearest", padding_mode=padding_mode)
        assert out.dtype == dtype and out.shape == labels.shape
        assert set(out.unique().tolist()) <= set(labels.unique().tolist())
        assert not torch.equal(out, labels)
    # zeros padding may only add the background value 0
    out = warp(labels, u, mode="nearest", padding_mode="zeros")
    assert set(out.unique().tolist()) <= set(labels.unique().tolist()) | {0}


def test_nearest_large_int64_labels_exact():
    """Labels above 2**24 are not representable in float32: they must survive exactly."""
    base = 2**40 + 1
    labels = base + torch.arange(12 * 11, dtype=torch.int64).view(1, 1, 12, 11)
    u = torch.zeros(1, 2, 12, 11)
    u[:, 1] = 1.0
    out = warp(labels, u, mode="nearest", padding_mode="border")
    assert out.dtype == torch.int64
    assert torch.equal(out[..., :-1], labels[..., 1:])
    assert set(out.unique().tolist()) <= set(labels.unique().tolist())


# --------------------------------------------------------------------------- Jacobian determinant


@DIMS
@pytest.mark.parametrize("s", [0.8, 1.3])
def test_uniform_scaling_det(n, s):
    shape = SHAPES[n]
    x = identity_grid(shape, dtype=torch.float64)
    c = torch.tensor([(k - 1) / 2 for k in shape], dtype=torch.float64).view(n, *([1] * n))
    u = ((s - 1) * (x - c))[None]
    det = jacobian_determinant(u)
    assert (det - s**n).abs().max() < 1e-5
    # voxel units: spacing does not change the determinant
    spacing = (0.5, 1.5, 2.5)[:n]
    assert (jacobian_determinant(u, spacing=spacing, units="voxel") - s**n).abs().max() < 1e-5
    # mm units: the same physical scaling expressed in mm
    sp = torch.tensor(spacing, dtype=torch.float64).view(1, n, *([1] * n))
    u_mm = u * sp
    det_mm = jacobian_determinant(u_mm, spacing=spacing, units="mm")
    assert (det_mm - s**n).abs().max() < 1e-5
    # ... while treating the mm field as voxels gives a different (wrong) answer
    assert (jacobian_determinant(u_mm) - s**n).abs().max() > 1e-2
    # float32 input works too
    assert (jacobian_determinant(u.float()) - s**n).abs().max() < 1e-5


@DIMS
def test_det_of_general_linear_field_matches_numpy(n):
    rng = np.random.default_rng(11)
    A = rng.normal(scale=0.6, size=(n, n))
    u = _linear_field(SHAPES[n], A, rng.normal(size=n))
    det = jacobian_determinant(u)
    expected = np.linalg.det(np.eye(n) + A)
    assert abs(expected) > 0.05
    assert (det - expected).abs().max() < 1e-10


@DIMS
def test_det_mm_units_general_linear_field(n):
    """u in mm: u(p) = A p + b of the physical position p = spacing * x; det = det(I + A)."""
    shape = SHAPES[n]
    spacing = (0.5, 2.0, 1.25)[:n]
    rng = np.random.default_rng(8)
    A = rng.normal(scale=0.5, size=(n, n))
    u_mm = _linear_field(shape, A * np.array(spacing)[None, :], rng.normal(size=n))
    expected = np.linalg.det(np.eye(n) + A)
    det = jacobian_determinant(u_mm, spacing=spacing, units="mm")
    assert (det - expected).abs().max() < 1e-10


@DIMS
def test_collapse_has_zero_det_and_counts_as_folded(n):
    """u_0 = -x_0 maps every voxel onto the plane x_0 = 0: det == 0 exactly, all folded."""
    shape = SHAPES[n]
    u = torch.zeros(1, n, *shape, dtype=torch.float64)
    u[0, 0] = -identity_grid(shape, dtype=torch.float64)[0]
    assert torch.equal(jacobian_determinant(u), torch.zeros(1, *shape, dtype=torch.float64))
    assert folding_ratio(u).item() == 1.0
    # half collapse: u_0 = -x_0 / 2 -> det = 1/2, nothing folded
    assert folding_ratio(u / 2).item() == 0.0


@DIMS
def test_det_matches_numpy_gradient_on_random_field(n):
    shape = SHAPES[n]
    u = _smooth_field(shape, 2.0, seed=9, dtype=torch.float64)[0].numpy() + np.random.default_rng(0).normal(
        scale=0.3, size=(n, *shape)
    )
    J = np.empty(shape + (n, n))
    for i in range(n):
        grads = np.gradient(u[i], edge_order=1)
        for j in range(n):
            J[..., i, j] = grads[j] + (i == j)
    expected = np.linalg.det(J)
    det = jacobian_determinant(torch.from_numpy(u)[None])[0].numpy()
    assert np.abs(det - expected).max() < 1e-10


@pytest.mark.parametrize(
    "shape, axis", [((9, 32), 1), ((32, 9), 0), ((32, 5, 6), 0), ((4, 5, 32), 2)]
)
def test_constructed_fold(shape, axis):
    """u_axis = A sin(2 pi x / 16) with A*2pi/16 = 2: analytic det = 1 + 2 cos(2 pi x / 16).

    Folds (det < 0) where cos < -1/2, i.e. x mod 16 in (16/3, 32/3): x in {6..10, 22..26}.
    A shear in another component that also depends on x_axis leaves the determinant unchanged.
    """
    n = len(shape)
    P = 16
    A = 2 * P / (2 * math.pi)
    x = identity_grid(shape, dtype=torch.float64)[axis]
    u = torch.zeros(1, n, *shape, dtype=torch.float64)
    u[0, axis] = A * torch.sin(2 * math.pi * x / P)
    other = (axis + 1) % n
    u[0, other] = 0.4 * x
    det = jacobian_determinant(u)[0]
    analytic = 1 + 2 * torch.cos(2 * math.pi * x / P)
    interior = (x >= 1) & (x <= shape[axis] - 2)
    assert torch.equal((det < 0)[interior], (analytic < 0)[interior])
    assert ((det <= 0) == (analytic <= 0)).all()  # borders agree here too
    folded_idx = {6, 7, 8, 9, 10, 22, 23, 24, 25, 26}
    assert set(torch.unique(x[det < 0]).long().tolist()) == folded_idx
    ratio = folding_ratio(u)
    assert ratio.shape == (1,)
    assert ratio.item() == pytest.approx(len(folded_idx) / 32, abs=1e-12)
    # batched: second item unfolded
    both = torch.cat([u, torch.zeros_like(u)])
    assert folding_ratio(both).tolist() == pytest.approx([10 / 32, 0.0])


# --------------------------------------------------------------------------- composition and integration


@DIMS
def test_compose_matches_warping_twice(n):
    """Smooth fields (max 2 voxels) and a smooth image (values in [-1, 1]), float64.

    The two sides differ only by linear-interpolation error of the image: max abs diff
    < 4e-3 (2D, 32^2) / 1e-2 (3D, 16^3) inside a 6-voxel margin; composing in the wrong order
    is off by several times more.
    """
    shape, tol = ((32, 32), 4e-3) if n == 2 else ((16, 16, 16), 1e-2)
    a = _smooth_field(shape, 2.0, seed=1, dtype=torch.float64)
    b = _smooth_field(shape, 2.0, seed=2, dtype=torch.float64)
    img = _smooth_image(shape, dtype=torch.float64)
    twice = warp(warp(img, a), b)
    inner = (..., *([slice(6, -6)] * n))
    diff = (twice - warp(img, compose(a, b)))[inner].abs().max().item()
    assert diff < tol
    assert (twice - warp(img, compose(b, a)))[inner].abs().max().item() > 3 * tol
    # a linear ramp is interpolated exactly, so the two sides agree to rounding
    x = identity_grid(shape, dtype=torch.float64)
    ramp = sum((0.5 + k) * x[k] for k in range(n))[None, None]
    diff_ramp = (warp(warp(ramp, a), b) - warp(ramp, compose(a, b)))[inner].abs().max().item()
    assert diff_ramp < 1e-9
    assert (warp(warp(ramp, a), b) - warp(ramp, compose(b, a)))[inner].abs().max().item() > 0.1
    # composing with zero is the identity on fields
    z = torch.zeros_like(a)
    assert torch.allclose(compose(a, z), a) and torch.allclose(compose(z, b), b)


@DIMS
def test_compose_linear_fields_analytic(n):
    """a = A x + p, b = B x + q: phi(x) = b(x) + a(x + b(x)) exactly (linear interpolation)."""
    shape = SHAPES[n]
    rng = np.random.default_rng(2)
    A, B = rng.normal(scale=0.05, size=(2, n, n))
    p, q = rng.normal(scale=0.5, size=(2, n))
    b = _linear_field(shape, B, q)
    phi = compose(_linear_field(shape, A, p), b)
    expected = _linear_field(shape, B + A @ (np.eye(n) + B), q + A @ q + p)
    # where x + b(x) lies inside the image (elsewhere border padding applies)
    y = identity_grid(shape, dtype=torch.float64) + b[0]
    inside = torch.stack([(y[k] >= 0) & (y[k] <= shape[k] - 1) for k in range(n)]).all(0)
    assert inside.float().mean() > 0.5
    assert (phi - expected)[0][:, inside].abs().max() < 1e-10


def test_compose_of_translations_adds():
    a = torch.zeros(1, 2, 10, 12)
    b = torch.zeros(1, 2, 10, 12)
    a[:, 0], a[:, 1] = 1.5, -0.5
    b[:, 0], b[:, 1] = -2.0, 0.25
    assert torch.allclose(compose(a, b), a + b)


@DIMS
def test_integrate_velocity_inverse(n):
    """exp(v) composed with exp(-v) is the identity up to discretisation: inside a 4-voxel margin
    mean |residual| < 0.02 voxel and max < 0.05 voxel, for max |v| = 2 voxels."""
    shape = (32, 32) if n == 2 else (16, 16, 16)
    v = _smooth_field(shape, 2.0, seed=3)
    phi = integrate_velocity(v)
    phi_inv = integrate_velocity(-v)
    assert phi.abs().max() > 1.0  # non-trivial deformation
    inner = (..., *([slice(4, -4)] * n))
    residual = compose(phi, phi_inv)[inner].abs()
    assert residual.mean().item() < 0.02
    assert residual.max().item() < 0.05
    assert compose(phi, phi)[inner].abs().mean().item() > 0.5  # not an identity by construction
    assert folding_ratio(phi).item() == 0.0  # diffeomorphic


@DIMS
def test_integrate_linear_velocity_analytic(n):
    """For v = A (x - c), scaling and squaring gives ((I + A/2^s)^(2^s) - I)(x - c) inside.

    Border clamping spoils one more ring of voxels per squaring step, so compare `steps` voxels in.
    """
    shape = (21, 21) if n == 2 else (17, 17, 17)
    rng = np.random.default_rng(5)
    A = rng.normal(scale=0.12, size=(n, n))
    c = np.array([(s - 1) / 2 for s in shape])
    v = _linear_field(shape, A, -A @ c)
    steps = 5
    M = np.linalg.matrix_power(np.eye(n) + A / 2**steps, 2**steps) - np.eye(n)
    expected = _linear_field(shape, M, -M @ c)
    phi = integrate_velocity(v, steps=steps)
    inner = (..., *([slice(steps, -steps)] * n))
    assert (phi - expected)[inner].abs().max() < 1e-9
    # and it approximates the matrix exponential
    E = torch.linalg.matrix_exp(torch.as_tensor(A)).numpy() - np.eye(n)
    assert np.abs(M - E).max() < 0.01


def test_integrate_velocity_special_cases():
    v = _smooth_field((12, 14), 1.0, seed=3)
    assert integrate_velocity(v, steps=0) is v
    c = torch.zeros(1, 2, 12, 14)
    c[:, 0], c[:, 1] = 0.75, -1.5
    assert torch.allclose(integrate_velocity(c, steps=5), c, atol=1e-6)
    with pytest.raises(ValueError, match="steps"):
        integrate_velocity(v, steps=-1)


# --------------------------------------------------------------------------- resize


@pytest.mark.parametrize(
    "old, new", [((10, 13), (19, 7)), ((9, 7, 11), (5, 13, 6))]
)
def test_resize_linear_field(old, new):
    n = len(old)
    rng = np.random.default_rng(4)
    A = rng.normal(scale=0.2, size=(n, n))
    b = rng.normal(size=n)
    u = _linear_field(old, A, b)
    out = resize_field(u, new)
    assert out.shape == (1, n, *new)
    # new voxel x' <-> old voxel x = x' * r, r_k = (old_k-1)/(new_k-1); u_new = D u_old(x), D = 1/r
    r = torch.tensor([(o - 1) / (s - 1) for o, s in zip(old, new)], dtype=torch.float64)
    xn = identity_grid(new, dtype=torch.float64) * r.view(n, *([1] * n))
    u_old_at = torch.einsum("ij,j...->i...", torch.as_tensor(A), xn) + torch.as_tensor(b).view(n, *([1] * n))
    expected = u_old_at / r.view(n, *([1] * n))
    assert (out[0] - expected).abs().max() < 1e-10


def test_resize_size_one_axis_and_identity():
    u = torch.ones(1, 3, 1, 4, 5)
    out = resize_field(u, (3, 7, 9))
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 0], torch.zeros(1, 3, 7, 9))
    assert torch.allclose(out[:, 1], torch.full((1, 3, 7, 9), 2.0))
    assert torch.allclose(out[:, 2], torch.full((1, 3, 7, 9), 2.0))
    v = _smooth_field((6, 7), 1.0, seed=0)
    assert torch.equal(resize_field(v, (6, 7)), v)


# --------------------------------------------------------------------------- stats


def test_displacement_stats_constant_and_half_fields():
    shape = (10, 20)
    u = torch.zeros(2, 2, *shape, dtype=torch.float64)
    u[0, 0], u[0, 1] = 3.0, 4.0
    u[1, 0, :5], u[1, 1, :5] = 3.0, 4.0  # half the image moves
    stats = displacement_stats(u, spacing=(2.0, 0.5))
    assert len(stats) == 2
    s0, s1 = stats
    assert s0["max_vox"] == pytest.approx(5.0) and s0["mean_vox"] == pytest.approx(5.0)
    mm = math.hypot(6.0, 2.0)
    assert s0["max_mm"] == pytest.approx(mm) and s0["mean_mm"] == pytest.approx(mm)
    pct = math.hypot(30.0, 20.0)  # 100*3/10, 100*4/20
    assert s0["max_pct"] == pytest.approx(pct) and s0["mean_pct"] == pytest.approx(pct)
    assert s1["max_vox"] == pytest.approx(5.0) and s1["mean_vox"] == pytest.approx(2.5)
    assert s1["mean_mm"] == pytest.approx(mm / 2) and s1["mean_pct"] == pytest.approx(pct / 2)
    assert all(isinstance(v, float) for v in s0.values())
    assert set(s0) == {"max_vox", "mean_vox", "max_mm", "mean_mm", "max_pct", "mean_pct"}
    # default spacing 1: mm == vox
    d = displacement_stats(u)[0]
    assert d["max_mm"] == pytest.approx(5.0)


def test_displacement_stats_3d():
    u = torch.zeros(1, 3, 4, 5, 8)
    u[:, 0], u[:, 1], u[:, 2] = 1.0, 2.0, 2.0
    s = displacement_stats(u, spacing=(3.0, 1.0, 0.5))[0]
    assert s["max_vox"] == pytest.approx(3.0)
    assert s["mean_mm"] == pytest.approx(math.sqrt(9 + 4 + 1))
    assert s["max_pct"] == pytest.approx(math.sqrt(25**2 + 40**2 + 25**2))


# --------------------------------------------------------------------------- napari vectors


def _vector_field_2d():
    shape = (10, 13)
    x = identity_grid(shape, dtype=torch.float64)
    return torch.stack([0.1 * x[0] + 1.0, -0.2 * x[1]]), shape


def test_field_to_vectors_positions_and_projections():
    u, shape = _vector_field_2d()
    vec = field_to_vectors(u, stride=4)
    assert vec.dtype == np.float32 and vec.shape == (2 * 3, 2, 2)  # rows 2,6; cols 2,6,10
    starts = vec[:, 0].astype(np.float64)
    expected_starts = np.array([[r, c] for r in (2, 6) for c in (2, 6, 10)], dtype=float)
    assert np.array_equal(starts, expected_starts)
    expected_proj = np.stack([0.1 * starts[:, 0] + 1.0, -0.2 * starts[:, 1]], axis=1)
    assert np.allclose(vec[:, 1], expected_proj, atol=1e-6)
    # tuple stride, numpy input
    vec2 = field_to_vectors(u.numpy(), stride=(3, 5))
    assert vec2.shape == (3 * 3, 2, 2)  # rows 1,4,7; cols 2,7,12
    assert np.array_equal(np.unique(vec2[:, 0, 0]), [1, 4, 7])
    assert np.array_equal(np.unique(vec2[:, 0, 1]), [2, 7, 12])
    # min_length drops short vectors: |u| at (r, c) = |(0.1 r + 1, -0.2 c)|
    lengths = np.linalg.norm(expected_proj, axis=1)
    thr = float(np.median(lengths))
    vec3 = field_to_vectors(u, stride=4, min_length=thr)
    assert len(vec3) == int((lengths >= thr).sum()) and 0 < len(vec3) < len(vec)
    assert (np.linalg.norm(vec3[:, 1], axis=1) >= thr - 1e-5).all()


def test_field_to_vectors_affine_scale_translate_and_rotation():
    u, _ = _vector_field_2d()
    plain = field_to_vectors(u, stride=4).astype(np.float64)
    st = np.array([[2.0, 0.0, 5.0], [0.0, 3.0, -1.0], [0.0, 0.0, 1.0]])
    v = field_to_vectors(u, stride=4, affine=st)
    assert np.allclose(v[:, 0], plain[:, 0] * [2, 3] + [5, -1], atol=1e-5)
    assert np.allclose(v[:, 1], plain[:, 1] * [2, 3], atol=1e-5)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees
    r = field_to_vectors(u, stride=4, affine=rot)
    assert np.allclose(r[:, 0], np.stack([-plain[:, 0, 1], plain[:, 0, 0]], axis=1), atol=1e-5)
    assert np.allclose(r[:, 1], np.stack([-plain[:, 1, 1], plain[:, 1, 0]], axis=1), atol=1e-5)
    with pytest.raises(ValueError, match="affine"):
        field_to_vectors(u, affine=np.eye(4))


def test_field_to_vectors_3d_with_affine():
    shape = (6, 7, 9)
    x = identity_grid(shape, dtype=torch.float64)
    u = torch.stack([x[2] * 0.1, torch.full(shape, 0.5, dtype=torch.float64), -x[0]])
    aff = np.diag([2.5, 1.0, 0.5, 1.0])
    aff[:3, 3] = [10.0, 20.0, 30.0]
    v = field_to_vectors(u, stride=3, affine=aff)
    assert v.shape == (2 * 2 * 3, 2, 3)  # 1,4 / 1,4 / 1,4,7
    p = (v[:, 0].astype(np.float64) - [10, 20, 30]) / [2.5, 1.0, 0.5]  # back to voxels
    assert np.allclose(p, np.round(p), atol=1e-4)
    expected = np.stack([p[:, 2] * 0.1 * 2.5, np.full(len(p), 0.5), -p[:, 0] * 0.5], axis=1)
    assert np.allclose(v[:, 1], expected, atol=1e-5)


def test_field_to_vectors_time_series():
    u, _ = _vector_field_2d()
    series = torch.stack([u, 2 * u, 3 * u])  # (T=3, 2, H, W)
    v = field_to_vectors(series, stride=4)
    assert v.shape == (3 * 6, 2, 3)
    assert np.array_equal(v[:, 0, 0], np.repeat([0.0, 1.0, 2.0], 6))
    assert np.array_equal(v[:, 1, 0], np.zeros(18))
    single = field_to_vectors(u, stride=4)
    for t in range(3):
        assert np.allclose(v[6 * t : 6 * (t + 1), 0, 1:], single[:, 0])
        assert np.allclose(v[6 * t : 6 * (t + 1), 1, 1:], (t + 1) * single[:, 1], atol=1e-5)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    vr = field_to_vectors(series, stride=4, affine=rot)
    assert np.array_equal(vr[:, 0, 0], v[:, 0, 0])
    assert np.allclose(vr[:, 1, 1], -v[:, 1, 2]) and np.allclose(vr[:, 1, 2], v[:, 1, 1])
    # an (n+2)x(n+2) affine whose first axis is time scales time too
    full = np.eye(4)
    full[0, 0], full[0, 3], full[1, 1], full[2, 2] = 0.5, 10.0, 2.0, 3.0
    vf = field_to_vectors(series, stride=4, affine=full)
    assert np.allclose(vf[:, 0, 0], 10.0 + 0.5 * v[:, 0, 0]) and np.array_equal(vf[:, 1, 0], np.zeros(18))
    assert np.allclose(vf[:, 0, 1:], v[:, 0, 1:] * [2.0, 3.0])
    assert np.allclose(vf[:, 1, 1:], v[:, 1, 1:] * [2.0, 3.0], atol=1e-5)


# --------------------------------------------------------------------------- errors and devices


def test_warp_errors_mention_shapes():
    img = torch.zeros(1, 1, 8, 9)
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 9\).*\(1, 2, 8, 10\)"):
        warp(img, torch.zeros(1, 2, 8, 10))
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 9\).*\(3, 2, 8, 9\)"):
        warp(torch.zeros(2, 1, 8, 9), torch.zeros(3, 2, 8, 9))
    with pytest.raises(ValueError, match="channels"):
        warp(img, torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\(1, 1, 8, 9\)"):
        warp(img, torch.zeros(1, 3, 4, 8, 9))
    with pytest.raises(ValueError, match="nearest"):
        warp(torch.zeros(1, 1, 8, 9, dtype=torch.int32), torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="mode"):
        warp(img, torch.zeros(1, 2, 8, 9), mode="cubic")
    with pytest.raises(ValueError, match="padding_mode"):
        warp(img, torch.zeros(1, 2, 8, 9), padding_mode="wrap")


def test_other_validation_errors():
    with pytest.raises(ValueError, match="ndim"):
        jacobian_determinant(torch.zeros(2, 8, 9))
    with pytest.raises(ValueError, match="spacing"):
        jacobian_determinant(torch.zeros(1, 2, 8, 9), units="mm")
    with pytest.raises(ValueError, match="spacing"):
        jacobian_determinant(torch.zeros(1, 2, 8, 9), spacing=(1.0, 1.0, 1.0), units="mm")
    with pytest.raises(ValueError, match="units"):
        folding_ratio(torch.zeros(1, 2, 8, 9), units="cm")
    with pytest.raises(ValueError, match="floating"):
        compose(torch.zeros(1, 2, 8, 9, dtype=torch.int64), torch.zeros(1, 2, 8, 9))
    with pytest.raises(ValueError, match="same shape"):
        compose(torch.zeros(1, 2, 8, 9), torch.zeros(1, 2, 8, 10))
    with pytest.raises(ValueError, match="shape"):
        resize_field(torch.zeros(1, 2, 8, 9), (4, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        field_to_vectors(torch.zeros(4, 8, 9))
    with pytest.raises(ValueError, match="stride"):
        field_to_vectors(torch.zeros(2, 8, 9), stride=0)


def test_warp_is_differentiable_wrt_field():
    img = _smooth_image((12, 12))
    u = torch.zeros(1, 2, 12, 12, requires_grad=True)
    warp(img, u).sum().backward()
    assert u.grad is not None and u.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    shape = (12, 13, 11)
    img = _smooth_image(shape)
    a = _smooth_field(shape, 2.0, seed=1)
    b = _smooth_field(shape, 2.0, seed=2)
    cpu = warp(img, compose(a, integrate_velocity(b)))
    dev = warp(img.cuda(), compose(a.cuda(), integrate_velocity(b.cuda())))
    assert dev.device.type == "cuda"
    assert (dev.cpu() - cpu).abs().max() < 1e-4
    det = jacobian_determinant(a.cuda())
    assert det.device.type == "cuda"
    assert torch.allclose(det.cpu(), jacobian_determinant(a), atol=1e-5)
    labels = torch.randint(0, 4, (1, 1, *shape), dtype=torch.uint8).cuda()
    out = warp(labels, a.cuda(), mode="nearest")
    assert out.dtype == torch.uint8 and out.device.type == "cuda"


@pytest.mark.parametrize("shape", [(2, 3, 6, 7, 8), (2, 2, 9, 10)])
def test_jacobian_determinant_is_differentiable(shape):
    """Training losses penalise folding through this function: its gradient must be exact."""
    u = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    spacing = (1.5,) * (len(shape) - 2)
    assert torch.autograd.gradcheck(
        lambda x: jacobian_determinant(x, spacing=spacing, units="mm"), (u,)
    )
