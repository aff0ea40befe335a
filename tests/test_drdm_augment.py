"""DRDM export (Algorithms 3 and 4): files, geometry, labels, manifest, determinism, cancel, full disk."""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm.augment import (
    COLUMNS,
    Case,
    ExportSettings,
    derive_seed,
    export_drdm,
    find_cases,
    parse_levels,
    plan_export,
    read_manifest,
)
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.events import Frame
from napari_deformdiff.core.image_metrics import psnr
from napari_deformdiff.core.io import Volume, read_volume, write_volume

from .drdm_export_helpers import case_2d, case_3d, tiny_drdm


@pytest.fixture(scope="module")
def tiny2d():
    return tiny_drdm(2, seed=1)


def run(cases, out, model_meta, **kw):
    model, meta = model_meta
    options = {k: kw.pop(k) for k in ("overwrite", "resume") if k in kw}
    settings = ExportSettings(**{"levels": "4:8:4", "samples": 2, "seed": 5, **kw})
    return list(export_drdm(cases, out, settings, model=model, meta=meta, **options))


def visible_files(folder):
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def listed_files(rows, mode="augment"):
    names = []
    for row in rows:
        names += [row[c] for c in COLUMNS[mode] if c in ("image", "labels", "field", "moving", "fixed",
                                                          "moving_labels", "fixed_labels") and row[c]]
    return sorted(names)


def itk_geometry(path, ndim):
    """(spacing, origin, direction) of a file as SimpleITK reads it, ITK order; a 2D image stored as a
    single-slice 3D NIfTI gives its in-plane part (the slice axis must be the trivial one)."""
    img = sitk.ReadImage(str(path))
    dim = img.GetDimension()
    direction = np.array(img.GetDirection()).reshape(dim, dim)
    if dim == ndim + 1:
        assert img.GetSize()[-1] == 1 and img.GetOrigin()[-1] == 0 and direction[-1, -1] == 1
        assert np.allclose(direction[:ndim, -1], 0) and np.allclose(direction[-1, :ndim], 0)
    return img.GetSpacing()[:ndim], img.GetOrigin()[:ndim], direction[:ndim, :ndim].ravel()


def field_from_file(path):
    """(voxel field (n, *S) in array-axis order, vectors in mm (n, *S) array-axis order) from an ITK file,
    computed here with numpy from the header (independent of core.field_io)."""
    img = sitk.ReadImage(str(path))
    n = img.GetDimension()
    d_itk = sitk.GetArrayFromImage(img).astype(np.float64)  # (*S, n), components x, y[, z]
    direction = np.array(img.GetDirection()).reshape(n, n)
    linear = direction @ np.diag(img.GetSpacing())  # index (x,y,z) -> mm (x,y,z)
    u_itk = np.einsum("ij,...j->...i", np.linalg.inv(linear), d_itk)
    u = np.moveaxis(u_itk[..., ::-1], -1, 0)  # array-axis order
    d = np.moveaxis(d_itk[..., ::-1], -1, 0)
    return np.ascontiguousarray(u), np.ascontiguousarray(d)


def numpy_folding_pct(u):
    n = u.shape[0]
    grads = [np.gradient(u[i], axis=tuple(range(n))) for i in range(n)]
    J = np.empty(u.shape[1:] + (n, n))
    for i in range(n):
        for j in range(n):
            J[..., i, j] = grads[i][j] + (1.0 if i == j else 0.0)
    return 100.0 * float(np.mean(np.linalg.det(J) <= 0))


# --------------------------------------------------------------------------- plan


def test_levels_parse_ranges_lists_and_single_values():
    assert parse_levels("40:64:8") == (40, 48, 56, 64)
    assert parse_levels("40:63:8") == (40, 48, 56)
    assert parse_levels("78:80") == (78, 79, 80)
    assert parse_levels("30, 45,60") == (30, 45, 60)
    assert parse_levels(48) == (48,) and parse_levels("48") == (48,)
    for bad in ("0", "81", "64:40", "40:64:0", "a:b", "", "1:2:3:4"):
        with pytest.raises(InputError, match="level"):
            parse_levels(bad)


def test_seeds_depend_only_on_case_level_sample_and_base_seed():
    a, b = case_2d("a"), case_2d("b")
    forward = plan_export([a, b], ExportSettings(levels="10:30:10", samples=3, seed=7))
    backward = plan_export([b, a], ExportSettings(levels="30,20,10", samples=3, seed=7))
    key = lambda u: (u.case, u.level, u.sample)  # noqa: E731
    assert {key(u): u.seed for u in forward} == {key(u): u.seed for u in backward}
    assert len({u.seed for u in forward}) == len(forward) == 18  # all different
    assert derive_seed(7, "a", 10, 0) != derive_seed(8, "a", 10, 0)
    pairs = plan_export([a], ExportSettings(levels=10, samples=2, seed=7, mode="pairs", syn_level=20))
    assert [u.seed for u in pairs] == [u.seed for u in forward[:2]]  # moving image = augmented image
    assert all(u.syn_level == 20 and u.syn_seed not in (None, u.seed) for u in pairs)
    assert [u.id for u in pairs] == ["a_L10_s000", "a_L10_s001"]


# --------------------------------------------------------------------------- augment


def test_augment_writes_images_labels_fields_with_the_input_geometry(tmp_path, tiny2d):
    case = case_2d()
    out = tmp_path / "aug"
    events = run([case], out, tiny2d)
    frames = [e for e in events if isinstance(e, Frame)]
    assert len(frames) == 4
    rows = read_manifest(out / "manifest.csv")
    assert [r["id"] for r in rows] == ["heart_L04_s000", "heart_L04_s001", "heart_L08_s000", "heart_L08_s001"]
    assert visible_files(out) == sorted(listed_files(rows) + ["manifest.csv"])
    spacing, origin, direction = case.image.geometry.to_itk()
    input_labels = set(np.unique(case.labels.data).tolist())
    for row, frame in zip(rows, frames):
        assert row["source"] == "/data/heart.nii.gz" and row["seed"] == derive_seed(5, "heart", row["level"],
                                                                                      row["sample"])
        for col in ("image", "labels", "field"):
            s, o, d = itk_geometry(out / row[col], 2)
            np.testing.assert_allclose(s, spacing, rtol=1e-6)
            np.testing.assert_allclose(o, origin, atol=1e-5)
            np.testing.assert_allclose(d, direction, atol=1e-6)
        image = read_volume(out / row["image"])
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / row["labels"])))
        assert image.data.shape == case.image.data.shape and labels.dtype == np.uint8
        assert set(np.unique(labels).tolist()) <= input_labels
        assert len(set(np.unique(labels).tolist())) >= 3  # the structures survive
        u, d_mm = field_from_file(out / row["field"])
        np.testing.assert_allclose(u, frame.field, atol=1e-4)
        # the written image and labels are the input resampled through the written field
        src = torch.from_numpy(case.image.data)[None, None]
        expected = spatial.warp(src, torch.from_numpy(u).float()[None], padding_mode="border")[0, 0].numpy()
        np.testing.assert_allclose(image.data, expected, atol=1e-3)
        lab_src = torch.from_numpy(case.labels.data.astype(np.int64))[None, None]
        lab_expected = spatial.warp(lab_src, torch.from_numpy(u).float()[None], mode="nearest",
                                    padding_mode="border")[0, 0].numpy()
        assert np.mean(labels != lab_expected) < 0.002  # ties at half voxels may round either way
        # manifest numbers from the written field, recomputed here with numpy
        mag_mm = np.sqrt((d_mm**2).sum(0))
        pct = np.sqrt(sum((100.0 * u[k] / u.shape[k + 1]) ** 2 for k in range(2)))
        assert row["max_mm"] == pytest.approx(mag_mm.max(), rel=1e-4)
        assert row["mean_mm"] == pytest.approx(mag_mm.mean(), rel=1e-4)
        assert row["max_pct"] == pytest.approx(pct.max(), rel=1e-4)
        assert row["mean_pct"] == pytest.approx(pct.mean(), rel=1e-4)
        assert row["folding_pct"] == pytest.approx(numpy_folding_pct(u), abs=1e-3)
        assert row["max_mm"] > 0.5  # a visible deformation
    # more deformation at the higher level (forward field dominates the small random recovery)
    by_level = {lvl: np.mean([r["mean_mm"] for r in rows if r["level"] == lvl]) for lvl in (4, 8)}
    assert by_level[8] > by_level[4]


def test_3d_export_keeps_oblique_geometry_in_nifti_and_nrrd(tmp_path):
    case = case_3d()
    model_meta = tiny_drdm(3, seed=2)
    for fmt in ("nii.gz", "nrrd"):
        out = tmp_path / fmt
        run([case], out, model_meta, levels=2, samples=1, fmt=fmt, manifest="json")
        doc = json.loads((out / "manifest.json").read_text())
        assert doc["settings"]["levels"] == [2] and len(doc["samples"]) == 1
        row = doc["samples"][0]
        assert row["image"].endswith("." + fmt)
        for col in ("image", "labels"):
            vol = read_volume(out / row[col])
            assert vol.geometry.almost_equal(case.image.geometry, atol_mm=1e-4)
        assert read_volume(out / row["labels"]).data.dtype == np.int16
        if fmt == "nii.gz":
            import nibabel as nib

            np.testing.assert_allclose(nib.load(out / row["image"]).affine,
                                       case.image.geometry.to_nifti_affine(), atol=1e-4)
        u, _ = field_from_file(out / row["field"])
        assert u.shape == (3, *case.image.data.shape)


def test_same_seed_same_files_other_seed_other_files(tmp_path, tiny2d):
    case = case_2d()
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        run([case], tmp_path / name, tiny2d, levels=8, samples=1, seed=seed)
    read = lambda d: read_volume(next((tmp_path / d).glob("*_image.nii.gz"))).data  # noqa: E731
    np.testing.assert_array_equal(read("a"), read("b"))
    assert (tmp_path / "a" / "manifest.csv").read_text() == (tmp_path / "b" / "manifest.csv").read_text()
    assert np.abs(read("a") - read("c")).mean() > 0.5


def test_cancel_keeps_a_manifest_of_exactly_the_complete_samples_and_resume_finishes(tmp_path, tiny2d):
    case = case_2d()
    out = tmp_path / "cancelled"
    model, meta = tiny2d
    settings = ExportSettings(levels="4:8:4", samples=2, seed=5)
    events = export_drdm([case], out, settings, model=model, meta=meta)
    frames = 0
    for event in events:
        frames += isinstance(event, Frame)
        if frames == 2 and not isinstance(event, Frame) and "step 3/" in event.message:
            break  # in the middle of the third sample's recovery
    events.close()
    rows = read_manifest(out / "manifest.csv")
    assert [r["id"] for r in rows] == ["heart_L04_s000", "heart_L04_s001"]
    assert visible_files(out) == sorted(listed_files(rows) + ["manifest.csv"])
    assert not any(p.name.startswith(".") for p in out.iterdir())

    with pytest.raises(InputError, match="overwrite.*resume"):
        run([case], out, tiny2d)
    leftover = out / ".heart_L08_s000_image.1234abcd.partial.nii.gz"  # as a killed process leaves it
    leftover.write_bytes(b"\x1f\x8b")
    (out / ".keep").write_text("not ours")
    written = [e for e in run([case], out, tiny2d, resume=True) if isinstance(e, Frame)]
    assert [f.info["id"] for f in written] == ["heart_L08_s000", "heart_L08_s001"]  # only the missing ones
    assert not leftover.exists() and (out / ".keep").exists()
    run([case], tmp_path / "full", tiny2d)
    assert (out / "manifest.csv").read_text() == (tmp_path / "full" / "manifest.csv").read_text()
    for name in listed_files(read_manifest(out / "manifest.csv")):
        read = field_from_file if "field" in name else (lambda p: (read_volume(p).data,))
        np.testing.assert_array_equal(read(out / name)[0], read(tmp_path / "full" / name)[0])


def test_existing_files_are_never_replaced_unless_asked(tmp_path, tiny2d):
    case = case_2d()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="already holds 1 file"):
        run([case], out, tiny2d)
    assert visible_files(out) == ["notes.txt"]
    run([case], out, tiny2d, levels=8, samples=1, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    first = read_volume(out / "heart_L08_s000_image.nii.gz").data
    run([case], out, tiny2d, levels=8, samples=1, seed=99, overwrite=True)
    assert np.abs(read_volume(out / "heart_L08_s000_image.nii.gz").data - first).mean() > 0.5
    with pytest.raises(InputError, match="other settings"):  # resume with another seed
        run([case], out, tiny2d, levels=8, samples=1, seed=5, resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        run([case], tmp_path / "file", tiny2d)


def test_full_disk_leaves_only_complete_listed_samples_and_says_so(tmp_path, tiny2d, monkeypatch):
    import nibabel as nib

    case = case_2d()
    out = tmp_path / "full-disk"
    real_save = nib.save
    calls = []

    def save(img, filename):
        calls.append(str(filename))
        if len(calls) == 4:  # unit 2's labels (fields are written by SimpleITK, not nibabel)
            with open(filename, "wb") as fh:
                fh.write(b"\x1f\x8b partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real_save(img, filename)

    monkeypatch.setattr(nib, "save", save)
    with pytest.raises(InputError, match="no space left on device") as info:
        run([case], out, tiny2d)
    assert "1 complete sample" in str(info.value) and "resume" in str(info.value)
    rows = read_manifest(out / "manifest.csv")
    assert [r["id"] for r in rows] == ["heart_L04_s000"]
    assert visible_files(out) == sorted(listed_files(rows) + ["manifest.csv"])  # unit 2's image was removed
    assert not any(p.name.startswith(".") for p in out.iterdir())  # nor any partial temporary
    for name in listed_files(rows):
        sitk.ReadImage(str(out / name))  # every listed file is complete
    monkeypatch.setattr(nib, "save", real_save)
    run([case], out, tiny2d, resume=True)
    assert len(read_manifest(out / "manifest.csv")) == 4


# --------------------------------------------------------------------------- pairs


def test_pairs_moving_warped_by_the_written_field_is_the_fixed_image(tmp_path, tiny2d):
    case = case_2d()
    run([case], tmp_path / "pairs", tiny2d, levels=8, samples=1, mode="pairs", syn_level=6)
    run([case], tmp_path / "aug", tiny2d, levels=8, samples=1)
    (row,) = read_manifest(tmp_path / "pairs" / "manifest.csv")
    assert row["syn_level"] == 6 and row["syn_seed"] == derive_seed(5, "heart", 8, 0, 1)
    folder = tmp_path / "pairs"
    moving = read_volume(folder / row["moving"]).data
    fixed = read_volume(folder / row["fixed"]).data
    u, _ = field_from_file(folder / row["field"])
    ut = torch.from_numpy(u).float()[None]
    warped = spatial.warp(torch.from_numpy(moving)[None, None], ut, padding_mode="border")[0, 0].numpy()
    assert psnr(warped, fixed, data_range=float(fixed.max() - fixed.min())) > 50
    assert np.abs(moving - fixed).mean() > 0.5  # the pair differs
    # the moving image of a pair is the augmented image of the same unit (same seed)
    aug = read_volume(next((tmp_path / "aug").glob("*_image.nii.gz"))).data
    np.testing.assert_allclose(moving, aug, atol=1e-4)
    # fixed labels: the input labels resampled once (nearest) through phi_aug then the pair's field
    # (x -> x + u(x) + phi_aug(x + u(x))); the moving labels are the input labels through phi_aug
    phi_aug, _ = field_from_file(next((tmp_path / "aug").glob("*_field.nii.gz")))
    pa = torch.from_numpy(phi_aug).float()[None]
    through = ut + spatial.warp(pa, ut, padding_mode="border")
    labels = torch.from_numpy(case.labels.data.astype(np.int64))[None, None]
    expected_fx = spatial.warp(labels, through, mode="nearest", padding_mode="border")[0, 0].numpy()
    expected_mv = spatial.warp(labels, pa, mode="nearest", padding_mode="border")[0, 0].numpy()
    lab_mv = read_volume(folder / row["moving_labels"]).data
    lab_fx = read_volume(folder / row["fixed_labels"]).data
    assert np.mean(lab_mv != expected_mv) == 0
    assert np.mean(lab_fx != expected_fx) < 1e-3
    # and the moving labels moved by the field agree with them except near label borders
    lab_warped = spatial.warp(torch.from_numpy(lab_mv.astype(np.int64))[None, None], ut, mode="nearest",
                              padding_mode="border")[0, 0].numpy()
    assert np.mean(lab_warped != lab_fx) < 0.06


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_are_refused_with_clear_messages_and_nothing_written(tmp_path, tiny2d):
    good = case_2d()
    g = good.image.geometry
    bad_cases = {
        "non-integer": Case("x", good.image, Volume(good.labels.data + 0.5, g, False)),
        "shape": Case("x", good.image, Volume(good.labels.data[:-1], g, True)),
        "geometry": Case("x", good.image, Volume(good.labels.data, type(g)((1.5, 1.3), g.origin, g.direction),
                                                  True)),
        "time series": Case("x", Volume(np.stack([good.image.data] * 2), g, False)),
    }
    for message, case in bad_cases.items():
        with pytest.raises(InputError, match=message):
            run([case], tmp_path / "out", tiny2d)
    for bad_level in ({"levels": 81}, {"levels": "0:8"}, {"mode": "pairs", "syn_level": 90}):
        with pytest.raises(InputError, match="level"):
            run([good], tmp_path / "out", tiny2d, **bad_level)
    with pytest.raises(InputError, match="3D.*2D"):
        run([good], tmp_path / "out", tiny_drdm(3))
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_the_wrong_dimensionality_is_refused(tmp_path):
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta = tiny_drdm(3)
    path = save_drdm(model, tmp_path / "tiny3d.safetensors", meta=meta)
    settings = ExportSettings(levels=4, samples=1)
    with pytest.raises(InputError, match="3D|2D"):
        list(export_drdm([case_2d()], tmp_path / "out", settings, weights=path))
    assert not (tmp_path / "out").exists()


def test_find_cases_matches_labels_by_name(tmp_path):
    c = case_2d()
    folder = tmp_path / "in"
    (folder / "labels").mkdir(parents=True)
    write_volume(c.image, folder / "a.nii.gz")
    write_volume(c.labels, folder / "a_gt.nii.gz")
    write_volume(c.image, folder / "b.mha")
    write_volume(c.labels, folder / "labels" / "b.nrrd")
    write_volume(c.image, folder / "c.nrrd")
    write_volume(Volume(np.stack([c.image.data] * 3), c.image.geometry, False), folder / "d_4d.nii.gz")
    cases, notes = find_cases(folder)
    assert [x.name for x in cases] == ["a", "b", "c"]
    assert [x.labels is not None for x in cases] == [True, True, False]
    np.testing.assert_array_equal(cases[1].labels.data, c.labels.data)
    assert notes and "d_4d" in notes[0]
    (single,), _ = find_cases(folder / "c.nrrd", folder / "a_gt.nii.gz")
    assert single.name == "c" and single.labels is not None
    with pytest.raises(InputError, match="folder"):
        find_cases(folder, folder / "a_gt.nii.gz")


# --------------------------------------------------------------------------- manifest checksums, resume checks


def partial_export(case, out, model_meta, units=2, **kw):
    """Stop an export after `units` complete units, as Cancel does."""
    model, meta = model_meta
    settings = ExportSettings(**{"levels": "4:8:4", "samples": 2, "seed": 5, **kw})
    events = export_drdm([case], out, settings, model=model, meta=meta)
    frames = 0
    for event in events:
        frames += isinstance(event, Frame)
        if frames == units:
            break
    events.close()
    return read_manifest(out / settings.manifest_name)


def test_the_manifest_records_size_and_sha256_and_resume_redoes_a_truncated_or_missing_file(tmp_path, tiny2d):
    import hashlib

    from napari_deformdiff.core.drdm.augment import ExportWarning

    case = case_2d()
    out = tmp_path / "out"
    rows = partial_export(case, out, tiny2d, units=3)
    assert [r["id"] for r in rows] == ["heart_L04_s000", "heart_L04_s001", "heart_L08_s000"]
    for row in rows:
        for role in ("image", "labels", "field"):
            data = (out / row[role]).read_bytes()
            assert row[f"{role}_bytes"] == len(data) > 100
            assert row[f"{role}_sha256"] == hashlib.sha256(data).hexdigest()
    truncated = out / rows[0]["field"]
    truncated.write_bytes(truncated.read_bytes()[:-10])
    (out / rows[2]["labels"]).unlink()
    with pytest.warns(ExportWarning) as caught:
        written = [e.info["id"] for e in run([case], out, tiny2d, resume=True) if isinstance(e, Frame)]
    messages = " ".join(str(w.message) for w in caught)
    assert "heart_L04_s000" in messages and "truncated" in messages and "heart_L08_s000" in messages
    assert written == ["heart_L04_s000", "heart_L08_s000", "heart_L08_s001"]  # the damaged ones and the missing one
    run([case], tmp_path / "full", tiny2d)
    assert (out / "manifest.csv").read_text() == (tmp_path / "full" / "manifest.csv").read_text()


def test_resume_refuses_another_format_mode_or_manifest_format_and_changes_nothing(tmp_path, tiny2d):
    case = case_2d()
    out = tmp_path / "out"
    partial_export(case, out, tiny2d, units=1, fmt="nrrd")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(InputError, match="nrrd files, not nii.gz: resume with --format nrrd"):
        run([case], out, tiny2d, resume=True)
    with pytest.raises(InputError, match="manifest.csv.*--manifest csv"):
        run([case], out, tiny2d, resume=True, fmt="nrrd", manifest="json")
    with pytest.raises(InputError, match="augmentations; resume it in mode 'augment'"):
        run([case], out, tiny2d, resume=True, fmt="nrrd", mode="pairs")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    run([case], out, tiny2d, resume=True, fmt="nrrd")
    assert len(read_manifest(out / "manifest.csv")) == 4 and not any(out.glob("*.nii.gz"))


def test_a_rejected_input_leaves_no_folder_and_no_header_only_manifest(tmp_path, tiny2d):
    good = case_2d()
    data = good.image.data.copy()
    data[3, 3] = np.nan  # refused by the recovery, after the run has started
    bad = Case("nan", Volume(data, good.image.geometry, False, "nan"))
    with pytest.raises(InputError, match="NaN"):
        run([bad], tmp_path / "new", tiny2d)
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="NaN"):
        run([bad], tmp_path / "empty", tiny2d)
    assert list((tmp_path / "empty").iterdir()) == []


def test_shards_and_an_appended_json_manifest_read_back_in_any_order(tmp_path, tiny2d):
    from napari_deformdiff.core.drdm.manifest import append_row, write_manifest

    case = case_2d()
    out = tmp_path / "sharded"
    run([case], out, tiny2d, shard_size=3, manifest="json")
    doc = json.loads((out / "manifest.json").read_text())
    rows = doc["samples"]
    assert doc["settings"]["shard_size"] == 3
    assert [r["image"] for r in rows] == ["000/heart_L04_s000_image.nii.gz", "000/heart_L04_s001_image.nii.gz",
                                          "000/heart_L08_s000_image.nii.gz", "001/heart_L08_s001_image.nii.gz"]
    assert sorted(p.name for p in out.iterdir()) == ["000", "001", "manifest.json"]
    assert all((out / r[c]).is_file() for r in rows for c in ("image", "labels", "field"))
    # appending (units finish in any order on a cluster) and a torn last line
    settings = ExportSettings(levels="4:8:4", samples=2, seed=5, shard_size=3, manifest="json")
    typed = read_manifest(out / "manifest.json")
    write_manifest(tmp_path, [typed[2]], settings)
    append_row(tmp_path, typed[0], settings)
    append_row(tmp_path, typed[3], settings)
    assert read_manifest(tmp_path / "manifest.json") == [typed[2], typed[0], typed[3]]
    text = (tmp_path / "manifest.json").read_text()
    (tmp_path / "manifest.json").write_text(text[: len(text) - 40])  # killed while appending the third
    assert read_manifest(tmp_path / "manifest.json") == [typed[2], typed[0]]
    csv_settings = ExportSettings(levels="4:8:4", samples=2, seed=5)
    write_manifest(tmp_path, [typed[1]], csv_settings)
    append_row(tmp_path, typed[3], csv_settings)
    text = (tmp_path / "manifest.csv").read_text()
    (tmp_path / "manifest.csv").write_text(text[:-30])
    assert [r["id"] for r in read_manifest(tmp_path / "manifest.csv")] == [typed[1]["id"]]


def test_find_cases_reads_an_acdc_dataset_listing_each_folder_once(tmp_path, monkeypatch):
    from napari_deformdiff.core.drdm import augment
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    list(write_phantom_dataset(tmp_path / "ds" / "training", cases=2, seed=3, two_d=True, frames=4,
                               shape=(32, 28), fields=False))
    listed = []
    real = augment._readable_files
    monkeypatch.setattr(augment, "_readable_files", lambda folder: listed.append(folder) or real(folder))
    for root in (tmp_path / "ds", tmp_path / "ds" / "training"):
        listed.clear()
        cases, notes = find_cases(root)
        patients = sorted({c.name.split("_")[0] for c in cases})
        assert patients == ["patient001", "patient002"] and len(cases) == 4  # ED and ES of each
        assert all(c.labels is not None and c.labels.data.shape == c.image.data.shape for c in cases)
        assert all("_frame" in c.name and c.image.geometry.ndim == 2 for c in cases)
        assert len(notes) == 2 and all("time series" in n for n in notes)  # the 4D cines
        assert sorted(listed) == sorted(set(listed)) and len(listed) == 2  # each patient folder once
    files, _ = find_cases(tmp_path / "ds", keep_data=False)
    assert [f.name for f in files] == [c.name for c in cases] and {f.ndims for f in files} == {2}


def test_case_files_read_from_another_working_folder_keep_their_source(tmp_path, monkeypatch):
    c = case_2d()
    (tmp_path / "in").mkdir()
    write_volume(c.image, tmp_path / "in" / "p1.nii.gz")
    write_volume(c.labels, tmp_path / "in" / "p1_gt.nii.gz")
    monkeypatch.chdir(tmp_path)
    (files,), _ = find_cases("in", keep_data=False)
    assert (files.image, files.labels, files.ndims) == ("in/p1.nii.gz", "in/p1_gt.nii.gz", 2)
    moved = files.absolute()
    monkeypatch.chdir(tmp_path / "in")  # a worker elsewhere
    case = moved.load()
    assert case.source == "in/p1.nii.gz"  # the manifest's source column as an in-process run writes it
    np.testing.assert_array_equal(case.labels.data, c.labels.data)
    assert case.image.geometry.almost_equal(c.image.geometry)
