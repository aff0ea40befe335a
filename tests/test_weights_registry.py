"""Weights registry: download into the cache with a sha256 check, cache hits, clear offline errors.

A local http.server stands in for GitHub; nothing here needs the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import threading
from functools import partial

import pytest

from napari_deformdiff.cli import main
from napari_deformdiff.core.errors import InputError
from napari_deformdiff.core.weights import registry as wr

from .shared_data import MISSING_OFFICIAL
from .shared_data import OFFICIAL_DRDM as OFFICIAL

PAYLOAD = bytes(range(256)) * 40 + b"weights"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []
    drop_first = 0  # this many first requests get their connection closed without an answer

    def do_GET(self):  # noqa: N802 - http.server's naming
        type(self).hits.append(self.path)
        if len(type(self).hits) <= type(self).drop_first:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "w.bin").write_bytes(PAYLOAD)
    _QuietHandler.hits = []
    _QuietHandler.drop_first = 0
    httpd = _Server(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _QuietHandler.hits
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(wr.CACHE_ENV, str(folder))
    monkeypatch.setattr(wr, "RETRIES", 1)  # one retry: pooch waits 1 s before it
    monkeypatch.setattr(wr, "_progress_factory", None)  # tqdm, even after a GUI test installed napari's
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return folder


def _register(monkeypatch, url: str, sha: str | None = None) -> wr.WeightsEntry:
    e = wr.WeightsEntry(name="test-w", url=url, sha256=sha or hashlib.sha256(PAYLOAD).hexdigest(),
                        filename="test_w.bin", size=len(PAYLOAD), licence="CC0-test",
                        citation="A. Author, Test weights, 2026.", description="a test file")
    monkeypatch.setitem(wr.REGISTRY, e.name, e)
    return e


def test_download_then_cache_hit(server, cache, monkeypatch):
    base, hits = server
    _register(monkeypatch, f"{base}/w.bin")
    reports = []
    path = wr.fetch("test-w", report=reports.append)
    assert path == cache / "test_w.bin"
    assert path.read_bytes() == PAYLOAD
    assert len(hits) == 1
    assert "CC0-test" in reports[0] and "A. Author, Test weights" in reports[0]
    assert sorted(p.name for p in cache.iterdir()) == ["test_w.bin"]  # no temporary left
    assert wr.is_cached("test-w")

    reports.clear()
    assert wr.fetch("test-w", report=reports.append) == path
    assert len(hits) == 1 and reports == []  # second call: from the cache, no request, no notice


def test_sha_mismatch_keeps_nothing(server, cache, monkeypatch):
    base, hits = server
    _register(monkeypatch, f"{base}/w.bin", sha="0" * 64)
    with pytest.raises(InputError, match="expected 0000") as info:
        wr.fetch("test-w")
    assert "test_w.bin" in str(info.value) and str(cache) in str(info.value)
    assert f"have sha256 {hashlib.sha256(PAYLOAD).hexdigest()}" in str(info.value) and "2 tries" in str(info.value)
    assert len(hits) == 2  # retried once
    assert list(cache.iterdir()) == []


def test_a_dropped_connection_is_retried(server, cache, monkeypatch):
    base, hits = server
    _QuietHandler.drop_first = 1
    _register(monkeypatch, f"{base}/w.bin")
    assert wr.fetch("test-w").read_bytes() == PAYLOAD
    assert len(hits) == 2 and sorted(p.name for p in cache.iterdir()) == ["test_w.bin"]


def test_a_connection_that_keeps_failing_is_the_offline_message(server, cache, monkeypatch):
    base, hits = server
    _QuietHandler.drop_first = 5
    e = _register(monkeypatch, f"{base}/w.bin")
    with pytest.raises(InputError, match="could not download the test-w weights") as info:
        wr.fetch("test-w")
    assert "2 tries" in str(info.value) and e.sha256 in str(info.value)
    assert len(hits) == 2 and list(cache.iterdir()) == []


class RecordingBar:
    """A progress bar with tqdm's API, recording what the download reports."""

    def __init__(self, desc):
        self.desc, self.total, self.n, self.updates, self.closed = desc, None, 0, [], False

    def update(self, k):
        self.updates.append(k)
        self.n += k

    def reset(self):
        self.n = 0

    def close(self):
        self.closed = True


def test_the_download_reports_its_progress_to_the_installed_bar(server, cache, monkeypatch):
    base, _ = server
    _register(monkeypatch, f"{base}/w.bin")
    bars = []
    monkeypatch.setattr(wr, "_progress_factory", lambda desc: bars.append(RecordingBar(desc)) or bars[-1])
    wr.fetch("test-w")
    (bar,) = bars
    assert bar.desc == "downloading test-w weights" and bar.total == len(PAYLOAD)
    assert bar.n == len(PAYLOAD) and len(bar.updates) >= 2 and bar.closed


def test_ctrl_c_during_a_download_leaves_no_file(server, cache, monkeypatch):
    base, _ = server
    _register(monkeypatch, f"{base}/w.bin")

    class Interrupting(RecordingBar):
        def update(self, k):
            raise KeyboardInterrupt

    monkeypatch.setattr(wr, "_progress_factory", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        wr.fetch("test-w")
    assert list(cache.iterdir()) == []


def test_corrupt_cached_file_is_replaced(server, cache, monkeypatch):
    base, hits = server
    _register(monkeypatch, f"{base}/w.bin")
    cache.mkdir()
    (cache / "test_w.bin").write_bytes(b"truncated")
    assert not wr.is_cached("test-w")
    assert wr.fetch("test-w").read_bytes() == PAYLOAD
    assert len(hits) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_error_says_what_to_do(cache, monkeypatch):
    e = _register(monkeypatch, f"http://127.0.0.1:{_closed_port()}/w.bin")
    with pytest.raises(InputError) as info:
        wr.fetch("test-w", timeout=5)
    msg = str(info.value)
    assert "could not download" in msg and e.url in msg
    assert e.filename in msg and e.sha256 in msg and str(cache) in msg
    assert not cache.exists() or list(cache.iterdir()) == []

    # the hint works: a hand-copied file is used without any network
    cache.mkdir(exist_ok=True)
    (cache / e.filename).write_bytes(PAYLOAD)
    assert wr.fetch("test-w", timeout=5) == cache / e.filename


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InputError, match="drdm-cmr-2d"):
        wr.fetch("no-such-weights")


def test_cache_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(wr.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert wr.cache_dir().name == "napari-deformdiff"
    monkeypatch.setenv(wr.CACHE_ENV, str(tmp_path / "mine"))
    assert wr.cache_dir() == tmp_path / "mine"


@pytest.mark.skipif(not OFFICIAL.is_file(), reason=MISSING_OFFICIAL)
def test_preseeded_official_file_needs_no_network(cache, monkeypatch):
    e = wr.REGISTRY["drdm-cmr-2d"]
    assert OFFICIAL.stat().st_size == e.size
    cache.mkdir()
    shutil.copyfile(OFFICIAL, cache / e.filename)

    def no_network(*args, **kwargs):
        raise AssertionError("fetch tried the network although the cache holds the file")

    import requests

    monkeypatch.setattr(requests, "get", no_network)
    assert wr.fetch("drdm-cmr-2d") == cache / e.filename
    assert wr.sha256_of(cache / e.filename) == e.sha256


def test_cli_lists_and_fetches(server, cache, monkeypatch, capsys):
    base, _ = server
    _register(monkeypatch, f"{base}/w.bin")
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "drdm-cmr-2d" in out and "Apache-2.0" in out and "test-w" in out and "not cached" in out
    assert main(["weights", "fetch", "test-w"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert str(cache / "test_w.bin") in out and "CC0-test" in out
    assert "100%" in captured.err and "10.2k" in captured.err  # tqdm's bar: all 10247 bytes
    assert main(["weights", "fetch", "nope"]) == 2
    assert "no weights named 'nope'" in capsys.readouterr().err


@pytest.mark.gui
def test_in_napari_a_download_is_a_progress_bar_of_the_activity_dock(server, cache, monkeypatch, make_napari_viewer,
                                                                     qtbot):
    from napari.qt.threading import create_worker
    from napari.utils import progress

    import napari_deformdiff._qt as qt_package  # importing the widgets installs napari's bars

    base, _ = server
    _register(monkeypatch, f"{base}/w.bin")
    make_napari_viewer()
    bars, seen = [], []

    def recording(desc):
        bar = qt_package._activity_dock_bar(desc)
        seen.append(bar in progress._all_instances)  # listed in the activity dock while it runs
        bars.append(bar)
        return bar

    monkeypatch.setattr(wr, "_progress_factory", recording)
    worker = create_worker(wr.fetch, "test-w")  # as the widgets do: in a worker thread
    results = []
    worker.returned.connect(results.append)
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        worker.start()
    assert results == [cache / "test_w.bin"] and (cache / "test_w.bin").read_bytes() == PAYLOAD
    (bar,) = bars
    assert isinstance(bar, progress) and bar.desc.startswith("downloading test-w weights")
    assert bar.total == len(PAYLOAD) and bar.n == len(PAYLOAD) and seen == [True]
    assert bar not in progress._all_instances  # closed: gone from the dock
