"""Fold-free DRDM fields (issue 17): the repair itself, instances, exports, evaluation, the off switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_deformdiff.cli import main
from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm import generate as recover
from napari_deformdiff.core.drdm.augment import ExportSettings, export_drdm, read_manifest, warp_array
from napari_deformdiff.core.drdm.evaluate import FOLD_FREE, RECOVERED, evaluate_drdm
from napari_deformdiff.core.drdm.forward import ForwardSample
from napari_deformdiff.core.drdm.generate import deform_instance, fold_free_field, instance_field
from napari_deformdiff.core.events import Frame

from .drdm_export_helpers import case_2d, case_3d, heart_like, tiny_drdm

FULL = {2: np.ones((3, 3)), 3: np.ones((3, 3, 3))}  # 8 / 26 connectivity


def bump(shape, amp=8.0, sigma=3.0):
    """A Gaussian push along the last axis; with amp 8, sigma 3 it folds near the centre."""
    g = spatial.identity_grid(shape)
    centre = torch.tensor([s / 2 for s in shape]).view(-1, *[1] * len(shape))
    u = torch.zeros(1, len(shape), *shape)
    u[0, -1] = amp * torch.exp(-((g - centre) ** 2).sum(0) / (2 * sigma**2))
    return u


def folding(field) -> float:
    u = field if isinstance(field, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(field))[None]
    return float(spatial.folding_ratio(u)[0])


def det_numpy(field) -> np.ndarray:
    """det(I + grad u) of a voxel field (n, *S) with numpy's own central differences (not spatial.py)."""
    n = field.shape[0]
    J = np.empty((*field.shape[1:], n, n))
    for i in range(n):
        grads = np.gradient(np.asarray(field[i], np.float64))
        for j in range(n):
            J[..., i, j] = grads[j] + (i == j)
    return np.linalg.det(J)


def mean_norm(field) -> float:
    return float(np.sqrt((np.asarray(field, np.float64) ** 2).sum(0)).mean())


def psnr(a, b, mask, data_range):
    return 10 * np.log10(data_range**2 / float(((a - b)[mask] ** 2).mean()))


def components(labels, ndims):
    return [ndi.label(labels == v, structure=FULL[ndims])[1] for v in np.unique(labels) if v != 0]


@pytest.fixture
def folding_forward(monkeypatch):
    """The forward field of every instance becomes a folding bump (so a tiny model's fields fold)."""
    monkeypatch.setattr(recover, "sample_forward", lambda shape, level, **kw: ForwardSample(bump(tuple(shape))))


# --------------------------------------------------------------------------- the repair


@pytest.mark.parametrize("shape", [(64, 64), (24, 32, 32)])
def test_repair_removes_the_fold_and_keeps_the_rest(shape):
    u = bump(shape)
    v = spatial.repair_folding(u, min_det=0.05)
    assert folding(u) > 0.002
    assert folding(v) == 0.0 and float(spatial.jacobian_determinant(v).min()) > 0.05
    far = (spatial.identity_grid(shape) - torch.tensor([s / 2 for s in shape]).view(-1, *[1] * len(shape))
           ).abs().amax(0) > 14
    assert torch.equal(u[0][:, far], v[0][:, far])
    assert torch.equal(spatial.repair_folding(u), spatial.repair_folding(u))


def whole_field_repair(ddf, min_det, max_iterations, grow_every=25):
    """repair_folding's rule run on the whole field every iteration, written out here."""
    import torch.nn.functional as F

    n = ddf.ndim - 2
    u = ddf
    for k in range(max_iterations):
        bad = (torch.from_numpy(np.stack([det_numpy(f) for f in u.double().numpy()])) <= min_det)[:, None]
        if not bool(bad.any()):
            break
        r = 1 + k // grow_every
        near = bad.double()
        for axis in range(n):
            near = torch.from_numpy(ndi.maximum_filter1d(near.numpy(), 2 * r + 1, axis=axis + 2, mode="constant"))
        mean = F.pad(u, (1, 1) * n, mode="replicate")
        mean = (F.avg_pool2d if n == 2 else F.avg_pool3d)(mean, 3, stride=1)
        u = torch.where(near > 0, mean, u)
    return u


@pytest.mark.parametrize("case", ["2d, folds near the border", "3d, two items", "3d, spreading folds"])
def test_the_repair_in_a_box_equals_the_repair_of_the_whole_field(case):
    """The box that repair_folding works in changes nothing: the same field as the rule applied to
    the whole field, bit for bit where the determinants agree (float32 here vs float64 there)."""
    if case.startswith("2d"):
        u = bump((48, 64), amp=8.0) + bump((48, 64), amp=-7.0).roll((20, 29), dims=(2, 3))
        min_det, rounds = 0.05, 120
    elif case == "3d, two items":
        u = torch.cat([bump((20, 28, 30)), bump((20, 28, 30), amp=6.0, sigma=2.0).roll(9, dims=4)])
        min_det, rounds = 1e-5, 80
    else:
        u = bump((20, 40, 40), amp=14.0, sigma=4.0)
        min_det, rounds = 0.05, 200
    ours = spatial.repair_folding(u, min_det=min_det, max_iterations=rounds)
    theirs = whole_field_repair(u.double(), min_det, rounds).float()
    assert folding(u) > 0
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)
    assert not torch.equal(ours, u)


def test_a_field_without_folds_is_returned_unchanged():
    u = bump((40, 40), amp=2.0)
    assert float(spatial.jacobian_determinant(u).min()) > 0.5
    assert spatial.repair_folding(u) is u


def test_a_fold_tears_a_label_and_the_repaired_field_does_not():
    u = bump((64, 64))
    lab = np.zeros((64, 64), np.uint8)
    lab[:, 40:43] = 1  # a stripe crossing the folded region
    plain = warp_array(lab, u[0].numpy(), labels=True)
    fixed = warp_array(lab, spatial.repair_folding(u)[0].numpy(), labels=True)
    assert components(lab, 2) == [1]
    assert components(plain, 2) == [2]
    assert components(fixed, 2) == [1]


# --------------------------------------------------------------------------- instances (tiny model)


@pytest.mark.parametrize("ndims", [2, 3])
def test_instances_are_fold_free_and_the_off_switch_gives_the_plain_recovery(ndims, folding_forward):
    case = case_2d(shape=(48, 44)) if ndims == 2 else case_3d()
    model, meta = tiny_drdm(ndims)
    image, labels = case.image, case.labels
    plain = [e for e in deform_instance(image, 2, model=model, meta=meta, labels=labels, seed=5, fold_free=False)
             if isinstance(e, Frame)]
    fixed = [e for e in deform_instance(image, 2, model=model, meta=meta, labels=labels, seed=5)
             if isinstance(e, Frame)]
    assert folding(plain[-1].field) > 0.002 and folding(fixed[-1].field) <= 0.0005
    # off: the plain recovery bit for bit (recovery on the model grid brought to the input grid)
    data, _, m, mt, grid, times, dev = recover._prepare(image, 2, model, meta, None, "paper", "cpu", None, None,
                                                        "float32")
    phi = list(recover._recover(data, 2, m, mt, grid, times, dev, 5))[-1][1]
    reference = recover._field_to_input(grid)(phi)[0].numpy()
    assert np.array_equal(plain[-1].field, reference)
    assert np.array_equal(instance_field(image, 2, model=model, meta=meta, seed=5, fold_free=False), reference)
    # on: only the last frame changes, by exactly the repair; its image and labels follow it
    for a, b in zip(plain[:-1], fixed[:-1]):
        assert np.array_equal(a.field, b.field) and np.array_equal(a.image, b.image)
    repaired = fold_free_field(torch.from_numpy(reference)[None])[0].numpy()
    assert np.array_equal(fixed[-1].field, repaired)
    assert fixed[-1].info["fold_free"] and not plain[-1].info["fold_free"]
    assert np.array_equal(fixed[-1].labels, warp_array(labels.data, repaired, labels=True))
    assert components(fixed[-1].labels, ndims) == components(labels.data, ndims)
    # deterministic
    again = instance_field(image, 2, model=model, meta=meta, seed=5)
    assert np.array_equal(again, fixed[-1].field)


@pytest.mark.parametrize("mode", ["augment", "pairs"])
def test_exports_write_fold_free_fields_and_record_it(tmp_path, folding_forward, mode):
    model, meta = tiny_drdm(2)
    case = case_2d(shape=(48, 44))
    folds = {}
    for fold_free in (True, False):
        settings = ExportSettings(levels=(2,), samples=1, mode=mode, fold_free=fold_free)
        out = tmp_path / f"{mode}_{fold_free}"
        list(export_drdm([case], out, settings, model=model, meta=meta))
        (row,) = read_manifest(out / "manifest.csv")
        assert row["fold_free"] == int(fold_free)
        folds[fold_free] = row["folding_pct"]
    assert folds[True] <= 0.05 and folds[False] > 0.2


@pytest.mark.parametrize("mode, ndims", [("pairs", 2), ("pairs", 3), ("augment", 3)])
def test_written_pairs_and_3d_fields_are_fold_free_and_close_to_the_plain_ones(tmp_path, folding_forward, mode,
                                                                                ndims):
    """Read back from the files: folding <= 0.05 % (numpy's determinant), mean displacement within 5 % and
    image PSNR (against the input, where the plain field does not fold) within 1 dB of the plain export,
    and every label keeps its number of connected components (8- / 26-connectivity)."""
    from napari_deformdiff.core.io import read_path
    from napari_deformdiff.core.io.fields import read_displacement

    model, meta = tiny_drdm(ndims)
    case = case_2d(shape=(48, 44)) if ndims == 2 else case_3d(shape=(16, 32, 36))
    image_role, labels_role = ("image", "labels") if mode == "augment" else ("fixed", "fixed_labels")
    written = {}
    for fold_free in (True, False):
        out = tmp_path / str(fold_free)
        list(export_drdm([case], out, ExportSettings(levels=(2,), samples=1, mode=mode, fold_free=fold_free),
                         model=model, meta=meta))
        (row,) = read_manifest(out / "manifest.csv")
        field, geometry = read_displacement(out / row["field"])
        assert geometry.almost_equal(case.image.geometry)
        written[fold_free] = (field, read_path(out / row[image_role])[0].data,
                              read_path(out / row[labels_role])[0].data, row)
    (field, image, labels, row), (plain, plain_image, _, plain_row) = written[True], written[False]
    det, plain_det = det_numpy(field), det_numpy(plain)
    assert (det <= 0).mean() <= 0.0005 < 0.002 < (plain_det <= 0).mean()
    assert row["folding_pct"] == pytest.approx(100 * (det <= 0).mean(), abs=1e-3)
    assert plain_row["folding_pct"] == pytest.approx(100 * (plain_det <= 0).mean(), abs=1e-3)
    assert abs(mean_norm(field) / mean_norm(plain) - 1) <= 0.05
    source = case.image.data.astype(np.float64)
    unfolded, rng = plain_det > 0, float(source.max() - source.min())
    assert abs(psnr(image, source, unfolded, rng) - psnr(plain_image, source, unfolded, rng)) <= 1.0
    assert components(labels, ndims) == components(case.labels.data, ndims)


def test_fixed_labels_of_a_small_3d_pair_keep_their_components(tmp_path, monkeypatch):
    from napari_deformdiff.core.io import read_path

    monkeypatch.setattr(recover, "sample_forward",
                        lambda shape, level, **kw: ForwardSample(bump(tuple(shape), amp=7.0)))
    model, meta = tiny_drdm(3)
    case = case_3d()  # 10 x 24 x 28: the background label is thin near the borders
    list(export_drdm([case], tmp_path, ExportSettings(levels=(2,), samples=1, mode="pairs"), model=model, meta=meta))
    (row,) = read_manifest(tmp_path / "manifest.csv")
    assert row["folding_pct"] == 0.0
    fixed = read_path(tmp_path / row["fixed_labels"])[0].data
    assert components(fixed, 3) == components(case.labels.data, 3)


def test_cli_evaluation_table_and_csv_report_folding_with_and_without_the_repair(tmp_path, folding_forward,
                                                                                  capsys):
    """`evaluate drdm`: both rows in the printed table and the CSV, folding equal to numpy's determinant of
    the same instance fields; --allow-folding keeps only the plain row, with the same numbers."""
    import csv

    from napari_deformdiff.core.drdm.evaluate import phantom_images
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(2)
    weights = save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)
    argv = ["evaluate", "drdm", "--weights", str(weights), "--levels", "2", "--samples", "2", "--device", "cpu"]
    assert main([*argv, "--csv", str(tmp_path / "t.csv")]) == 0
    table = capsys.readouterr().out.splitlines()
    with open(tmp_path / "t.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    images = phantom_images(2, meta.grid, 2, seed=0)  # what the command deforms: sample i, seed i
    expected = {}
    for i in range(2):
        for method, fold_free in ((RECOVERED, False), (FOLD_FREE, True)):
            det = det_numpy(instance_field(images[i], 2, model=model, meta=meta, seed=i, fold_free=fold_free))
            expected[method, i] = 1000.0 * float((det <= 0).mean())
            (got,) = [r for r in rows if (r["method"], r["sample"]) == (method, str(i))]
            assert float(got["neg_jacobian_permille"]) == pytest.approx(expected[method, i], abs=1e-3)
        assert expected[RECOVERED, i] > 2.0 and expected[FOLD_FREE, i] <= 0.5
    for method in (RECOVERED, FOLD_FREE):  # the table's mean +- std of the per-mille column
        (line,) = [ln for ln in table if "|" in ln and ln.split("|")[1].strip() == method]
        mean, std = (float(v) for v in line.split("|")[4].split("+-"))
        values = [expected[method, i] for i in range(2)]
        assert mean == pytest.approx(np.mean(values), abs=0.051)
        assert std == pytest.approx(np.std(values, ddof=1), abs=0.051)
    assert main([*argv, "--allow-folding", "--csv", str(tmp_path / "plain.csv")]) == 0
    assert FOLD_FREE not in capsys.readouterr().out
    with open(tmp_path / "plain.csv", newline="") as fh:
        plain = [r for r in csv.DictReader(fh) if r["method"] != "DRDM forward"]
    assert [r["method"] for r in plain] == [RECOVERED, RECOVERED]
    assert [float(r["neg_jacobian_permille"]) for r in plain] == pytest.approx(
        [expected[RECOVERED, 0], expected[RECOVERED, 1]], abs=1e-3)


def test_cli_allow_folding_and_resume_checks_the_setting(tmp_path, folding_forward, capsys):
    from napari_deformdiff.core.drdm.weights import save_drdm
    from napari_deformdiff.core.io import write_volume

    model, meta = tiny_drdm(2)
    weights = save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)
    write_volume(case_2d().image, tmp_path / "p1.nii.gz")
    args = ["generate", "drdm", "--image", str(tmp_path / "p1.nii.gz"), "--levels", "2", "--samples", "1",
            "--out-dir", str(tmp_path / "out"), "--weights", str(weights), "--device", "cpu"]
    assert main([*args, "--allow-folding"]) == 0
    (row,) = read_manifest(tmp_path / "out" / "manifest.csv")
    assert row["fold_free"] == 0 and row["folding_pct"] > 0.2
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2  # fold-free (the default) into a folder of plain fields
    assert "fold-free" in capsys.readouterr().err


def test_evaluation_reports_folding_with_and_without_the_repair(folding_forward):
    model, meta = tiny_drdm(2)
    image = heart_like((32, 32), (1.0, 1.0))[0]
    rows = [r for r in evaluate_drdm([image], model=model, meta=meta, levels=(2,), samples=2)
            if hasattr(r, "method")]
    plain = [r.folding_permille for r in rows if r.method == RECOVERED]
    fixed = [r.folding_permille for r in rows if r.method == FOLD_FREE]
    assert len(plain) == len(fixed) == 2
    assert min(plain) > 2.0 and max(fixed) <= 0.5
    off = [r.method for r in evaluate_drdm([image], model=model, meta=meta, levels=(2,), samples=1, fold_free=False)
           if hasattr(r, "method")]
    assert FOLD_FREE not in off and RECOVERED in off


# --------------------------------------------------------------------------- the authors' weights


def test_official_weights_fold_free_on_a_cardiac_slice(official_drdm_weights):
    from napari_deformdiff.core.drdm.weights import load_drdm
    from napari_deformdiff.core.phantom import cardiac_phantom

    torch.set_num_threads(1)
    model, meta = load_drdm(official_drdm_weights, ndims=2)
    case = cardiac_phantom(0, two_d=True, frames=2, shape=(256, 256))
    image, labels = case.images[0].astype(np.float32), case.labels[0]
    field = instance_field(image, 48, model=model, meta=meta, seed=0, fold_free=False)
    fixed = fold_free_field(torch.from_numpy(field)[None])[0].numpy()
    assert folding(field) > 0.01 and folding(fixed) <= 0.0005
    mean = [spatial.displacement_stats(torch.from_numpy(f)[None])[0]["mean_pct"] for f in (field, fixed)]
    assert abs(mean[1] / mean[0] - 1) <= 0.05
    unfolded = spatial.jacobian_determinant(torch.from_numpy(field)[None])[0].numpy() > 0
    rng = float(image.max() - image.min())
    a, b = warp_array(image, field, labels=False), warp_array(image, fixed, labels=False)
    assert psnr(b, a, unfolded, rng) >= 30.0
    assert abs(psnr(b, image, unfolded, rng) - psnr(a, image, unfolded, rng)) <= 1.0
    assert components(warp_array(labels, fixed, labels=True), 2) == components(labels, 2)
