"""DRDM Table 1 evaluation and the TorchIO / MONAI elastic baselines.

Numbers are recomputed here with numpy from the fields (own norms, own np.gradient Jacobian), the
folding ratio is checked against fields whose determinant is known in closed form, the baselines'
read-out fields must reproduce the libraries' own outputs, and tuned baselines must reach the
target mean displacement.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_deformdiff.core import spatial
from napari_deformdiff.core.drdm.elastic_baselines import (
    MagnitudeTuner,
    MonaiElastic,
    TorchIOElastic,
    mean_displacement_pct,
)
from napari_deformdiff.core.drdm.evaluate import (
    FORWARD,
    PAPER_TABLE1,
    FOLD_FREE,
    RECOVERED,
    Row,
    evaluate_drdm,
    field_stats,
    format_table,
    phantom_images,
    summarize,
    write_csv,
)
from napari_deformdiff.core.events import Frame


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_compare = pytest.mark.skipif(not (_has("torchio") and _has("monai")),
                                   reason="the 'compare' extra (torchio, monai) is not installed")


def np_stats(field: np.ndarray) -> tuple[float, float, float]:
    """max %, mean %, per mille det(I + grad u) <= 0, from scratch with numpy."""
    n = field.shape[0]
    sizes = np.array(field.shape[1:], float)
    pct = np.sqrt(sum((100.0 * field[k] / sizes[k]) ** 2 for k in range(n)))
    J = np.empty((n, n, *field.shape[1:]))
    for i in range(n):
        grads = np.gradient(field[i].astype(np.float64))
        for j in range(n):
            J[i, j] = grads[j] + (i == j)
    det = np.linalg.det(np.moveaxis(J, (0, 1), (-2, -1)))
    return float(pct.max()), float(pct.mean()), 1000.0 * float((det <= 0).mean())


# ----------------------------------------------------------------------------- folding, analytic


def test_folding_ratio_of_a_sinusoid_matches_the_closed_form():
    # u_0(y, x) = A sin(w y): central differences give exactly A sin(w) cos(w y) inside, so
    # det = 1 + A sin(w) cos(w y) on rows 1..N-2; the one-sided border rows do not fold here.
    N, k = 64, 2
    w = 2 * math.pi * k / N
    A = 1.6 / math.sin(w)
    y = np.arange(N)
    u0 = np.repeat((A * np.sin(w * y))[:, None], N, axis=1)
    field = np.stack([u0, np.zeros_like(u0)]).astype(np.float32)
    rows = [r for r in range(1, N - 1) if 1 + A * math.sin(w) * math.cos(w * r) <= 0]
    assert 0 < len(rows) < N // 2
    max_pct, mean_pct, fold = field_stats(field)
    assert fold == pytest.approx(1000.0 * len(rows) / N, abs=1e-6)
    assert max_pct == pytest.approx(100 * A * np.abs(np.sin(w * y)).max() / N, rel=1e-5)
    assert mean_pct == pytest.approx(100 * A * np.abs(np.sin(w * y)).mean() / N, rel=1e-5)


@pytest.mark.parametrize(("a", "b", "expected"), [(-1.5, 0.5, 1000.0), (0.5, -0.2, 0.0), (-1.5, -1.5, 0.0)])
def test_folding_ratio_of_linear_fields(a, b, expected):
    # u = (a y, b x): det(I + grad u) = (1 + a)(1 + b) everywhere (both negative: orientation kept)
    yy, xx = np.meshgrid(np.arange(16.0), np.arange(24.0), indexing="ij")
    field = np.stack([a * yy, b * xx]).astype(np.float32)
    assert field_stats(field)[2] == pytest.approx(expected)


# ----------------------------------------------------------------------------- baselines


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = phantom_images(len(shape), shape, 1, seed=seed)[0]
    return (img + 0.05 * rng.random(shape)).astype(np.float32)


def _inside(field, margin=1.0):
    """Voxels whose sample position x + u(x) lies inside the image (with a margin)."""
    ok = np.ones(field.shape[1:], bool)
    for k, s in enumerate(field.shape[1:]):
        pos = np.indices(field.shape[1:])[k] + field[k]
        ok &= (pos >= margin) & (pos <= s - 1 - margin)
    return ok


@needs_compare
@pytest.mark.parametrize("ndims", [2, 3])
def test_torchio_field_reproduces_its_output(ndims):
    shape = (48, 48) if ndims == 2 else (24, 32, 32)
    img = _image(shape)
    draw = TorchIOElastic(ndims).draw(img, 4.0, seed=3)
    assert draw.field.shape == (ndims, *shape)
    assert np.abs(draw.field).max() > 1.0
    ours = spatial.warp(torch.from_numpy(img)[None, None], torch.from_numpy(draw.field)[None])[0, 0].numpy()
    inside = _inside(draw.field)
    assert inside.mean() > 0.5
    assert np.abs(ours - draw.output)[inside].max() < 1e-4
    assert np.abs(img - draw.output)[inside].max() > 0.1  # it did deform
    # sign or axis order wrong would not reproduce it
    swapped = spatial.warp(torch.from_numpy(img)[None, None], torch.from_numpy(-draw.field)[None])[0, 0].numpy()
    assert np.abs(swapped - draw.output)[inside].max() > 0.1


@needs_compare
@pytest.mark.parametrize("ndims", [2, 3])
def test_monai_field_reproduces_its_output(ndims):
    shape = (48, 48) if ndims == 2 else (24, 32, 32)
    img = _image(shape, 1)
    draw = MonaiElastic(ndims).draw(img, 3.0 if ndims == 2 else 30.0, seed=5)
    assert np.abs(draw.field).max() > 1.0
    ours = spatial.warp(torch.from_numpy(img)[None, None], torch.from_numpy(draw.field)[None],
                        padding_mode="border")[0, 0].numpy()
    assert np.abs(ours - draw.output).max() < 1e-4
    assert np.abs(img - draw.output).max() > 0.1


@needs_compare
@pytest.mark.parametrize("baseline", [TorchIOElastic(2), MonaiElastic(2)], ids=["torchio", "monai"])
def test_tuned_baselines_reach_the_target_mean_displacement(baseline):
    images = [_image((48, 48), s) for s in (0, 1, 2)]
    seeds = [10, 11, 12]
    target = 3.0
    magnitude = MagnitudeTuner(baseline, images, seeds).tune(target)
    fresh = type(baseline)(2)  # new draws from scratch, not the tuner's cache
    reached = np.mean([mean_displacement_pct(fresh.draw(img, magnitude, s).field) for img, s in zip(images, seeds)])
    assert reached == pytest.approx(target, rel=0.01)
    assert mean_displacement_pct(fresh.draw(images[0], 2 * magnitude, 10).field) > 1.5 * target / 3


# ----------------------------------------------------------------------------- Table 1 on a tiny model


@pytest.fixture(scope="module")
def tiny():
    from napari_deformdiff.core.drdm.nets import RecResACNet
    from napari_deformdiff.core.drdm.weights import DRDMMeta

    torch.manual_seed(0)
    model = RecResACNet(ndims=2).eval()
    with torch.no_grad():  # keep the untrained recovery small, as a trained one is
        model.conv_out.weight.mul_(0.05)
        model.conv_out.bias.zero_()
    meta = DRDMMeta(ndims=2, grid=(32, 32), steps=80, name="tiny", source="test")
    images = phantom_images(2, (32, 32), 2)
    return model, meta, images


def test_table_numbers_recomputed_independently(tiny):
    from napari_deformdiff.core.drdm.generate import deform_instance, fold_free_field

    model, meta, images = tiny
    levels, samples = (3, 6), 3
    results = list(evaluate_drdm(images, model=model, meta=meta, levels=levels, samples=samples, seed=7))
    rows = [r for r in results if not hasattr(r, "total")]
    assert len(rows) == len(levels) * samples * 3  # forward, recovered, fold-free
    for level in levels:
        for i in range(samples):
            frames = [e for e in deform_instance(images[i % 2], level, model=model, meta=meta, seed=7 + i,
                                                 fold_free=False) if isinstance(e, Frame)]
            fwd = np_stats(frames[0].field)
            rec = np_stats(frames[-1].field)
            fixed = np_stats(fold_free_field(torch.from_numpy(frames[-1].field)[None])[0].numpy())
            got_x = next(r for r in rows if (r.level, r.method, r.sample) == (level, FOLD_FREE, i))
            assert (got_x.max_pct, got_x.mean_pct, got_x.folding_permille) == pytest.approx(fixed, rel=1e-4, abs=1e-6)
            got_f = next(r for r in rows if (r.level, r.method, r.sample) == (level, FORWARD, i))
            got_r = next(r for r in rows if (r.level, r.method, r.sample) == (level, RECOVERED, i))
            assert (got_f.max_pct, got_f.mean_pct, got_f.folding_permille) == pytest.approx(fwd, rel=1e-4, abs=1e-6)
            assert (got_r.max_pct, got_r.mean_pct, got_r.folding_permille) == pytest.approx(rec, rel=1e-4, abs=1e-6)
            assert got_r.seconds > 0
    fwd_means = {lv: np.mean([r.mean_pct for r in rows if r.level == lv and r.method == FORWARD]) for lv in levels}
    assert fwd_means[6] > fwd_means[3] > 0

    table = summarize(rows)
    for row in table:
        values = [r.mean_pct for r in rows if (r.level, r.method) == (row.level, row.method)]
        assert row.samples == samples
        assert row.mean_pct[0] == pytest.approx(np.mean(values))
        assert row.mean_pct[1] == pytest.approx(np.std(values, ddof=1))
    text = format_table(table)
    assert RECOVERED in text and "paper Table 1" not in text  # levels 3 and 6 are not in the paper
    assert "paper Table 1" in format_table([Row(30, FORWARD, 1, (1, 0), (1, 0), (0, 0), (1, 0))])
    assert PAPER_TABLE1[30] == (7.8, 2.4, 0.7)


@needs_compare
def test_compare_tunes_each_baseline_to_drdm(tiny, tmp_path):
    model, meta, images = tiny
    results = [r for r in evaluate_drdm(images, model=model, meta=meta, levels=(4,), samples=2, seed=1, compare=True)
               if not hasattr(r, "total")]
    table = {r.method: r for r in summarize(results)}
    assert set(table) == {FORWARD, RECOVERED, FOLD_FREE, "TorchIO RandomElasticDeformation", "MONAI Rand2DElastic"}
    target = table[FOLD_FREE].mean_pct[0]  # the baselines match what exports write
    for name in ("TorchIO RandomElasticDeformation", "MONAI Rand2DElastic"):
        assert table[name].mean_pct[0] == pytest.approx(target, rel=0.01)
        assert table[name].magnitude > 0 and table[name].seconds[0] > 0
    out = write_csv(results, tmp_path / "t.csv")
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + len(results) and lines[0].startswith("level,method,sample")


def test_folder_images_take_slices_of_acdc_volumes(tmp_path):
    from napari_deformdiff.core.drdm.evaluate import folder_images
    from napari_deformdiff.core.phantom.dataset import write_phantom_dataset

    list(write_phantom_dataset(tmp_path / "d", cases=1, seed=4, frames=3, shape=(16, 40, 40), fields=False))
    images = folder_images(tmp_path / "d", 2, (32, 32))
    assert len(images) >= 2  # ED and ES (and the cine's first frame)
    for img in images:
        assert img.shape == (32, 32) and img.min() == 0.0 and img.max() == 1.0
    assert len(folder_images(tmp_path / "d", 3, (16, 16, 16))) == len(images)
    with pytest.raises(Exception, match="no 2D"):
        (tmp_path / "empty").mkdir()
        folder_images(tmp_path / "empty", 2, (32, 32))


def test_cli_prints_the_table_and_writes_the_csv(tiny, tmp_path, capsys):
    from napari_deformdiff.cli import main
    from napari_deformdiff.core.drdm.weights import save_drdm

    model, meta, _ = tiny
    weights = save_drdm(model, tmp_path / "tiny.safetensors", meta=meta)
    csv_path = tmp_path / "t1.csv"
    argv = ["evaluate", "drdm", "--weights", str(weights), "--levels", "3,30", "--samples", "2", "--csv", str(csv_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert RECOVERED in out and "paper Table 1" in out  # level 30 has the paper's row
    assert FOLD_FREE in out and len(csv_path.read_text().splitlines()) == 1 + 2 * 2 * 3
    assert main(argv) == 2  # the csv exists: not overwritten
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--allow-folding", "--overwrite"]) == 0
    assert FOLD_FREE not in capsys.readouterr().out and len(csv_path.read_text().splitlines()) == 1 + 2 * 2 * 2
    assert main(["evaluate", "drdm", "--weights", str(weights), "--levels", "3,x"]) == 2


def test_missing_compare_libraries_say_how_to_install_them(monkeypatch):
    from napari_deformdiff.core.errors import InputError

    for module, baseline in (("torchio", TorchIOElastic(2)), ("monai", MonaiElastic(2))):
        monkeypatch.setitem(__import__("sys").modules, module, None)  # import -> ImportError
        with pytest.raises(InputError, match=r"napari-deformdiff\[compare\]"):
            baseline.draw(np.zeros((16, 16), np.float32), 1.0, seed=0)
