"""Named third-party weights: where to download them, their sha256, licence and citation.

fetch(name) returns the path of a verified copy in the cache folder ($DEFORMDIFF_CACHE, else the
platform's user cache folder, e.g. ~/.cache/napari-deformdiff on Linux), downloading it first when
needed. pooch downloads it into a temporary file in the cache folder, checks its sha256, retries a
failed or corrupted download RETRIES times, and moves it into place only once it matched, so an
interrupted or corrupted download never leaves a file behind. The download shows a progress bar:
tqdm on stderr, or what `set_download_progress` installs (napari's activity dock in the GUI).
Without network, copy the file by hand into the cache folder under its expected name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

log = logging.getLogger(__name__)

CACHE_ENV = "DEFORMDIFF_CACHE"
APP_NAME = "napari-deformdiff"
TIMEOUT_S = 60.0
RETRIES = 2  # after a failed connection or a wrong sha256; pooch waits 1 s, then 2 s, between tries
_CHUNK = 1 << 20

# factory(description) -> a progress bar with total/update/reset/close (tqdm's API), or None: tqdm
_progress_factory: Callable[[str], object] | None = None


def set_download_progress(factory: Callable[[str], object] | None) -> None:
    """Show downloads with bars made by `factory` (the GUI installs napari's); None: tqdm on stderr."""
    global _progress_factory
    _progress_factory = factory


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
    """Download with pooch into `folder` (sha256 checked, RETRIES retries); InputError when it fails."""
    import pooch
    import requests

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the weights cache folder {folder}: {exc.strerror or exc}; "
                         f"set {CACHE_ENV} to a writable folder.") from None
    pooch.get_logger().setLevel(logging.WARNING)  # its "Downloading ..." lines: the bar says it
    bar = True if _progress_factory is None else _Clamped(_progress_factory(f"downloading {e.name} weights"))
    downloader = pooch.HTTPDownloader(progressbar=bar, timeout=timeout, chunk_size=_CHUNK,
                                      headers={"User-Agent": APP_NAME})
    store = pooch.create(path=folder, base_url="", registry={e.filename: f"sha256:{e.sha256}"},
                         urls={e.filename: e.url}, retry_if_failed=RETRIES)
    tries = f"{RETRIES + 1} {'try' if RETRIES == 0 else 'tries'}"
    try:
        return Path(store.fetch(e.filename, downloader=downloader))
    except requests.exceptions.RequestException as exc:
        raise InputError(f"could not download the {e.name} weights from {e.url} ({_reason(exc)}; {tries}). "
                         f"To install them by hand, {_manual_hint(e, folder)}") from None
    except ValueError as exc:  # pooch: the sha256 did not match
        got = re.search(r"got ([0-9a-f]{64})", str(exc))
        have = f"have sha256 {got.group(1)}" if got else "have another sha256"
        raise InputError(f"the downloaded {e.name} weights {have}, expected {e.sha256} ({tries}); nothing "
                         f"was kept. Try again later, or {_manual_hint(e, folder)}") from None
    finally:
        if bar is not True:
            bar.close()


class _Clamped:
    """pooch counts whole chunks (the last one past the file's end); the bar it feeds never passes its total."""

    def __init__(self, bar) -> None:
        self.bar = bar

    @property
    def total(self):
        return self.bar.total

    @total.setter
    def total(self, value) -> None:
        self.bar.total = value

    def update(self, k: int) -> None:
        self.bar.update(min(k, self.bar.total - self.bar.n) if self.bar.total else k)

    def reset(self) -> None:
        self.bar.reset()

    def close(self) -> None:
        self.bar.close()


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests error, in a few words."""
    inner = exc
    while inner.__context__ is not None and not isinstance(inner, ConnectionRefusedError):
        inner = inner.__context__
    text = str(inner).split(": ", 1)[-1] if isinstance(inner, OSError) else str(exc)
    return text.strip() or type(exc).__name__


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
