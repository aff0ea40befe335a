"""The built wheel, installed in a fresh virtual environment, registers the plugin with napari."""

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*cmd, **kwargs):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, encoding="utf-8", errors="replace", **kwargs)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_npe2_validate():
    assert "valid" in run(Path(sys.executable).parent / "npe2", "validate", ROOT / "napari.yaml")


def test_wheel_in_a_clean_venv_lists_the_plugin_and_its_contributions(tmp_path):
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", tmp_path / "dist", ROOT, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("napari_deformdiff-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_deformdiff/napari.yaml" in names
    for ndims in (2, 3):  # the bundled weights travel with the package
        assert f"napari_deformdiff/weights/ddm_phantom_{ndims}d.safetensors" in names
        assert f"napari_deformdiff/weights/drdm_phantom_{ndims}d.safetensors" in names
        assert f"napari_deformdiff/weights/modiff_phantom_{ndims}d.safetensors" in names
    assert not any(n.startswith("tests/") for n in names)

    env_dir = tmp_path / "clean"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", ROOT / ".ci" / "constraints.txt"]
    run(*pip, "torch", timeout=600)  # pinned first, as the set-up does
    run(*pip, wheel, timeout=900)
    listing = json.loads(run(env_dir / "bin" / "npe2", "list", "--format", "json",
                             "--fields", "name,version,contributions", timeout=300))
    (ours,) = [p for p in listing if p["name"] == "napari-deformdiff"]
    assert ours["version"] == "0.1.0"
    contributions = ours["contributions"]
    assert {"readers", "writers", "sample_data", "widgets", "commands"} <= set(contributions)
    code = (
        "from napari.plugins import _initialize_plugins; _initialize_plugins();"
        "from npe2 import PluginManager; import napari_deformdiff, json;"
        "m = PluginManager.instance().get_manifest('napari-deformdiff');"
        "print(json.dumps({'file': napari_deformdiff.__file__, "
        "'widgets': [w.display_name for w in m.contributions.widgets], "
        "'samples': [s.key for s in m.contributions.sample_data]}));"
        "from napari_deformdiff.core.ddm.weights import load_ddm; from napari_deformdiff.core.weights.resolve import default_weights;"
        "print(json.dumps({'weights': str(default_weights('ddm', 2)), 'step': load_ddm(None, ndims=2)[1]['step']}))"
    )
    lines = run(py, "-c", code, timeout=300).strip().splitlines()
    info, weights = json.loads(lines[-2]), json.loads(lines[-1])
    assert str(env_dir) in weights["weights"] and int(weights["step"]) > 0
    assert str(env_dir) in info["file"]  # the wheel's copy, not the source tree
    assert info["widgets"] == ["Phantom generator", "Open volume", "Inspect deformation", "Generate cycle (DDM)",
                               "Augment (DRDM)", "Forecast (Mo-Diff)", "Export"]
    assert info["samples"] == ["cardiac", "cardiac_2d", "lung"]
