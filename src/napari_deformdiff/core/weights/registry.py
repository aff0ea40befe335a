"""Named third-party weights: where to download them, their sha256, licence and citation.

fetch(name) returns the path of a verified copy in the cache folder ($DEFORMDIFF_CACHE, else the
platform's user cache folder, e.g. ~/.cache/napari-deformdiff on Linux), downloading it first when
needed. A download goes to a hidden temporary file in the cache folder and is renamed into place
only after its sha256 matched, so an interrupted or corrupted download never leaves a file behind.
Without network, copy the file by hand into the cache folder under its expected name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

CACHE_ENV = "DEFORMDIFF_CACHE"
APP_NAME = "napari-deformdiff"
TIMEOUT_S = 60.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    url: str
    sha256: str
    filename: str
    size: int  # bytes
    licence: str
    citation: str
    description: str
    source: str = ""  # human-readable origin (repository, path, commit)
    method: str = ""  # the model it loads into: ddm, drdm or modiff
    ndims: int = 0

    def notice(self) -> str:
        """Licence and citation, shown when the file is first downloaded."""
        lines = [f"{self.name}: {self.description}", f"  source:   {self.source or self.url}",
                 f"  licence:  {self.licence}", f"  citation: {self.citation}"]
        return "\n".join(lines)


_DRDM_COMMIT = "1c70370"
REGISTRY: dict[str, WeightsEntry] = {
    "drdm-cmr-2d": WeightsEntry(
        name="drdm-cmr-2d",
        url=("https://github.com/jianqingzheng/def_diff_rec/raw/"
             f"{_DRDM_COMMIT}/models/cmr_recresacnet/000000_cmr_recresacnet.pth"),
        sha256="c9e93ccbd99ad288bb1c961f980141d2c8c91115e8a5986d7a20a98f64ae8e93",
        filename="drdm_cmr2d_official.pth",
        size=1_835_135,
        licence="Apache-2.0 (https://www.apache.org/licenses/LICENSE-2.0), copyright the DRDM authors",
        citation=("Zheng J-Q, Mo Y, Sun Y, Li J, Wu F, Wang Z, Vincent T, Papiez BW. Deformation-Recovery "
                  "Diffusion Model (DRDM): Instance Deformation for Image Manipulation and Synthesis. "
                  "Medical Image Analysis, 2026. arXiv:2407.07295"),
        description=("the DRDM authors' trained recovery network (RecResACNet, 2D, 256x256 cardiac MRI "
                     "slices, 80 steps)"),
        source=(f"github.com/jianqingzheng/def_diff_rec, models/cmr_recresacnet/000000_cmr_recresacnet.pth "
                f"at commit {_DRDM_COMMIT}"),
        method="drdm",
        ndims=2,
    ),
}


def cache_dir() -> Path:
    """$DEFORMDIFF_CACHE, else the platform's user cache folder for napari-deformdiff (not created)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / APP_NAME
    return Path(user_cache_dir(APP_NAME, appauthor=False))


def entry(name: str) -> WeightsEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none"
        raise InputError(f"no weights named {name!r}; known names: {known}.") from None


def cached_path(name: str) -> Path:
    return cache_dir() / entry(name).filename


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_cached(name: str) -> bool:
    """True when the cache holds the file with the expected sha256."""
    path = cached_path(name)
    return path.is_file() and sha256_of(path) == entry(name).sha256


def _manual_hint(e: WeightsEntry, folder: Path) -> str:
    return (f"download {e.url} on a machine with internet access and copy it into {folder} as "
            f"{e.filename} (sha256 {e.sha256}); or set {CACHE_ENV} to a folder that holds it.")


def _download(e: WeightsEntry, folder: Path, timeout: float) -> Path:
    """Download into a temporary file in `folder`, check sha256, rename into place."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the weights cache folder {folder}: {exc.strerror or exc}; "
                         f"set {CACHE_ENV} to a writable folder.") from None
    target = folder / e.filename
    tmp = folder / f".{e.filename}.{uuid.uuid4().hex[:8]}.partial"
    digest = hashlib.sha256()
    try:
        try:
            request = urllib.request.Request(e.url, headers={"User-Agent": APP_NAME})
            with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as out:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise InputError(f"could not download the {e.name} weights from {e.url} ({reason}). "
                             f"To install them by hand, {_manual_hint(e, folder)}") from None
        got = digest.hexdigest()
        if got != e.sha256:
            raise InputError(f"the downloaded {e.name} weights have sha256 {got}, expected {e.sha256}; "
                             f"nothing was kept. Try again later, or {_manual_hint(e, folder)}")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def fetch(name: str, *, timeout: float = TIMEOUT_S, report: Callable[[str], None] | None = None) -> Path:
    """Path of the verified weights file `name`, downloading it into the cache folder if needed.

    On a download, the licence and citation are logged and passed to `report` (e.g. print).
    Offline or on a sha256 mismatch: InputError saying how to put the file in place by hand.
    A cached file with a wrong sha256 is replaced by a fresh download (kept if that fails).
    """
    e = entry(name)
    folder = cache_dir()
    target = folder / e.filename
    if target.is_file():
        if sha256_of(target) == e.sha256:
            return target
        log.warning("%s has an unexpected sha256; downloading it again", target)
    try:
        path = _download(e, folder, timeout)
    except InputError as exc:
        if target.is_file():
            raise InputError(f"{target} does not have the expected sha256 ({e.sha256}) and a fresh "
                             f"download failed: {exc}") from None
        raise
    message = f"downloaded {e.name} to {path}\n{e.notice()}"
    log.info(message)
    if report is not None:
        report(message)
    return path
