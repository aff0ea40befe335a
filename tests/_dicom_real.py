"""A real multi-frame echo for the DICOM tests, from the pydicom-data 1.0.0 wheel (PyPI).

Cached under ~/.cache/napari-deformdiff/real-data/pydicom-data-1.0.0; fetch it once with
`python -m tests._dicom_real` (needs the network); tests skip while it is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "pydicom-data==1.0.0"
MEMBER = "data_store/data/color3d_jpeg_baseline.dcm"


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return root / "napari-deformdiff" / "real-data" / "pydicom-data-1.0.0"


def echo_path() -> Path | None:
    """The cached apical 4-chamber echo (120 YBR JPEG frames), or None."""
    path = cache_dir() / Path(MEMBER).name
    return path if path.is_file() else None


def fetch() -> Path:
    """Download the wheel with pip and keep only the echo file."""
    target = cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", tmp],
                       check=True)
        (wheel,) = Path(tmp).glob("pydicom_data-*.whl")
        with zipfile.ZipFile(wheel) as zf:
            (target / Path(MEMBER).name).write_bytes(zf.read(MEMBER))
    return target / Path(MEMBER).name


if __name__ == "__main__":
    print(fetch())
