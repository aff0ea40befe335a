"""Mo-Diff training: stages, measured scales, resume, ablation initialisation, data, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.modiff.data import (
    draw_clip,
    find_sequences,
    model_sequences,
    resample_indices,
)
from napari_deformdiff.core.modiff.train import lr_factor, train_modiff
from napari_deformdiff.core.modiff.weights import load_modiff, stage_steps
from napari_deformdiff.core.weights.files import read_state
from napari_deformdiff.core.events import Progress

from .modiff_helpers import phantom_sequences, tiny_config


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    return find_sequences([phantom_sequences(tmp_path_factory.mktemp("mo") / "ds", cases=3)])


def train(sequences, out, **kw):
    kw.setdefault("config", tiny_config())
    kw.setdefault("steps", {"vae": 4, "tddm": 4, "video": 4})
    kw.setdefault("batch", {"vae": 2, "tddm": 2, "video": 2})
    return [e.message for e in train_modiff(sequences, out, **kw) if isinstance(e, Progress)]


def test_sequences_are_ed_to_es_scaled_by_the_first_frame(sequences):
    assert len(sequences) == 3 and sequences[0].frames.data.shape == (5, 48, 48)
    assert sequences[0].labels is not None and sequences[0].labels.data.shape == (5, 48, 48)
    seq = model_sequences(sequences[:1], tiny_config())[0]
    assert seq.shape == (5, 32, 32)
    assert float(seq[0].min()) >= -1.0 - 1e-5 and float(seq[0].max()) <= 1.0 + 1e-5
    assert float(seq[0].max()) > 0.9  # the first frame spans [-1, 1] where the grid covers its extremes


def test_resampled_clips_keep_first_and_last_frames():
    np.testing.assert_array_equal(resample_indices(12, 4), [0, 4, 7, 11])
    seq = torch.arange(12.0)[:, None, None].expand(12, 4, 4)
    clip = draw_clip(seq, 4, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(clip[:, 0, 0].numpy(), [0, 4, 7, 11])


def test_warm_up_then_cosine_decay():
    assert lr_factor(0, 1000) == pytest.approx(1 / 100)
    assert lr_factor(99, 1000) == pytest.approx(1.0)
    assert lr_factor(999, 1000) == pytest.approx(0.1, abs=1e-3)
    assert lr_factor(550, 1000) == pytest.approx(0.55, abs=0.01)


def test_three_stages_train_and_record_scales(sequences, tmp_path):
    out = tmp_path / "m.safetensors"
    messages = train(sequences, out, save_every=2)
    assert [m.split()[0] for m in messages] == ["vae"] * 4 + ["tddm"] * 4 + ["video"] * 4
    model, meta = load_modiff(out)
    assert stage_steps(meta) == {"vae": 4, "tddm": 4, "video": 4}
    # the field scale is 1 / std of the differential fields of the training data
    data = model_sequences(sequences, model.config)
    unit = dataclasses.replace(model.config, field_scale=1.0)
    model_unit = type(model)(unit)
    d = torch.cat([model_unit.fields_of(s[None])[0, 1:].flatten() for s in data])
    assert model.config.field_scale == pytest.approx(1.0 / float(d.std()), rel=1e-5)
    assert model.config.latent_scale != 1.0
    assert set(json.loads(meta["last_loss"])) == {"vae", "tddm", "video"}


def test_resume_continues_the_same_run(sequences, tmp_path):
    steps = {"vae": 4, "tddm": 0, "video": 0}
    whole = tmp_path / "whole.safetensors"
    train(sequences, whole, steps=steps, stages=["vae"], save_every=2)
    part = tmp_path / "part.safetensors"
    train(sequences, part, steps={"vae": 2}, stages=["vae"], save_every=2)
    train(sequences, part, steps=steps, stages=["vae"], resume=part, save_every=2)
    a, b = read_state(whole)[0], read_state(part)[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_vae_learns_to_reconstruct(sequences, tmp_path):
    out = tmp_path / "vae.safetensors"
    messages = train(sequences, out, steps={"vae": 60}, stages=["vae"], lr={"vae": 2e-3}, save_every=60)
    losses = [float(m.rsplit(" ", 1)[1]) for m in messages]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])


def test_ablation_reuses_the_parts_it_does_not_change(sequences, tmp_path):
    full = tmp_path / "full.safetensors"
    train(sequences, full)
    ablated = tmp_path / "nofc.safetensors"
    messages = train(sequences, ablated, config=tiny_config(frame_count=False), init=full, stages=["tddm"])
    assert len(messages) == 4 and all(m.startswith("tddm") for m in messages)
    a, meta = load_modiff(ablated)
    f, _ = load_modiff(full)
    assert a.tddm.count is None and a.config.ablation() == "no-frame-count"
    for part in ("vae", "video"):
        for k, v in getattr(f, part).state_dict().items():
            torch.testing.assert_close(getattr(a, part).state_dict()[k], v)
    assert a.config.latent_scale == f.config.latent_scale
    assert stage_steps(meta) == {"vae": 4, "tddm": 4, "video": 4}


def test_training_errors(sequences, tmp_path):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"")
    with pytest.raises(InputError, match="exists"):
        train(sequences, out)
    with pytest.raises(InputError, match="needs a trained VAE"):
        train(sequences, tmp_path / "y.safetensors", stages=["video"])
    with pytest.raises(InputError, match="fewer than the model's minimum"):
        train(sequences, tmp_path / "z.safetensors", config=tiny_config(min_frames=6, max_frames=8))
    with pytest.raises(InputError, match="no sequences"):
        find_sequences([tmp_path])


def test_finetuning_reads_4d_nifti_sequences_keeps_scales_and_resumes_exactly(sequences, tmp_path):
    from napari_deformdiff.core.io import Volume, write_volume

    mine = tmp_path / "mine"  # a user's own sequences: one 4D NIfTI file each, first frame to last
    mine.mkdir()
    for i, s in enumerate(sequences[:2]):
        write_volume(Volume(s.frames.data, s.frames.geometry, False, f"seq{i}"), mine / f"seq{i}.nii.gz")
    found = find_sequences([mine])
    assert [f.name for f in found] == ["seq0.nii.gz", "seq1.nii.gz"]
    np.testing.assert_allclose(found[1].frames.data, sequences[1].frames.data, rtol=1e-6)
    assert found[1].frames.geometry.almost_equal(sequences[1].frames.geometry)
    base = tmp_path / "base.safetensors"
    train(sequences, base)
    steps, stages = {"tddm": 4, "video": 4}, ["tddm", "video"]
    whole = tmp_path / "whole.safetensors"
    train(found, whole, init=base, stages=stages, steps=steps, save_every=2)
    part = tmp_path / "part.safetensors"
    for event in train_modiff(found, part, init=base, stages=stages, steps=steps, save_every=2,
                              config=tiny_config(), batch={"tddm": 2, "video": 2}):
        if isinstance(event, Progress) and event.message.startswith("video 2/4"):
            break  # interrupted after the checkpoint of video step 2
    messages = train(found, part, resume=part, stages=stages, steps=steps, save_every=2)
    assert [m.split(":")[0] for m in messages] == ["video 3/4", "video 4/4"]
    a, b = read_state(whole)[0], read_state(part)[0]
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    tuned, meta = load_modiff(whole)
    start, _ = load_modiff(base)
    assert stage_steps(meta) == {"vae": 4, "tddm": 4, "video": 4} and json.loads(meta["finetuned"]) == stages
    assert tuned.config.field_scale == start.config.field_scale  # the pretrained scales are kept
    assert tuned.config.latent_scale == start.config.latent_scale
    for part_name, changed in (("vae", False), ("tddm", True), ("video", True)):
        diffs = [float((v - getattr(start, part_name).state_dict()[k]).abs().max())
                 for k, v in getattr(tuned, part_name).state_dict().items() if v.is_floating_point()]
        assert (max(diffs) > 0) == changed, part_name
