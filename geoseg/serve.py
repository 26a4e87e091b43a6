"""Serve a static catalog for real, on loopback: a STAC API and a file server.

* The STAC API is ``rustac serve`` (a Rust STAC API server from PyPI, in-memory
  backend) loaded with the catalog's collections and items.
* The assets are served by uvicorn + Starlette ``StaticFiles``, which honours
  HTTP ``Range`` requests, so GDAL reads COG windows exactly as it would from
  object storage.

The items handed to the API have their asset hrefs rewritten to the file
server's URLs, as a production catalog points at its bucket. Use
:class:`LoopbackServers` as a context manager; ``geoseg serve`` runs it in the
foreground.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pystac
import requests

from geoseg.errors import CatalogUnavailableError, InputError


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: have the kernel send SIGTERM to the server when the process
    that started it dies, even by SIGKILL (no orphaned STAC API)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rustac_executable() -> str:
    """Path of the ``rustac`` CLI (installed with the ``rustac`` wheel)."""
    beside = Path(sys.executable).with_name("rustac")
    found = str(beside) if beside.exists() else shutil.which("rustac")
    if not found:
        raise CatalogUnavailableError("the rustac command is not installed", fix="pip install rustac")
    return found


def catalog_root(path: str | Path) -> Path:
    """The root JSON of a static catalog given as a directory or a file."""
    path = Path(path)
    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).exists():
                return path / name
    if not path.is_file():
        raise InputError(f"no static catalog at {str(path)!r}", fix="give a directory holding catalog.json, or the JSON file itself")
    return path


def published_json(root: Path, files_url: str) -> tuple[list[dict], list[dict]]:
    """Collections and items of a static catalog, with asset hrefs rewritten
    to ``files_url`` + their path relative to the catalog's directory, and
    links dropped (the API makes its own).

    The JSON is published as written on disk, not re-serialized by pystac,
    which would migrate fields (``proj:epsg`` to ``proj:code``) that some
    clients (stackstac) still need.
    """
    base = root.parent.resolve()
    cat = pystac.read_file(str(root))
    collections = [cat] if isinstance(cat, pystac.Collection) else list(cat.get_all_collections())
    out_cols, out_items = [], []
    for col in collections:
        d = json.loads(Path(col.get_self_href()).read_text())
        d["links"] = []
        out_cols.append(d)
        for item in col.get_items(recursive=True):
            item_path = Path(item.get_self_href())
            it = json.loads(item_path.read_text())
            it["links"] = []
            it["collection"] = col.id
            for key, asset in it["assets"].items():
                path = (item_path.parent / asset["href"]).resolve()
                asset["href"] = f"{files_url}/{path.relative_to(base).as_posix()}"
            out_items.append(it)
    return out_cols, out_items


class _FileServer:
    """uvicorn + Starlette StaticFiles in a daemon thread."""

    def __init__(self, directory: Path, host: str, port: int):
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount
        from starlette.staticfiles import StaticFiles

        app = Starlette(routes=[Mount("/", app=StaticFiles(directory=str(directory)), name="files")])
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="geoseg-files", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _wait_until_up(url: str, *, process: subprocess.Popen | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise CatalogUnavailableError(f"server for {url} exited with code {process.returncode}: {err.strip()[:500]}", fix="see the message above")
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise CatalogUnavailableError(f"server at {url} did not come up within {timeout:.0f} s", fix="check that the port is free")


@dataclass
class LoopbackServers:
    """A STAC API and a Range-capable file server for one static catalog.

    >>> with LoopbackServers("catalogs/demo") as srv:   # doctest: +SKIP
    ...     items = geoseg.search(srv.stac_url, bbox=...)
    """

    catalog: str | Path
    host: str = "127.0.0.1"
    stac_port: int = 0
    files_port: int = 0
    startup_timeout: float = 30.0
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _files: _FileServer | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def stac_url(self) -> str:
        return f"http://{self.host}:{self.stac_port}"

    @property
    def files_url(self) -> str:
        return f"http://{self.host}:{self.files_port}"

    def start(self) -> "LoopbackServers":
        root = catalog_root(self.catalog)
        self.stac_port = self.stac_port or free_port(self.host)
        self.files_port = self.files_port or free_port(self.host)
        self._files = _FileServer(root.parent.resolve(), self.host, self.files_port)
        self._files.start()

        collections, items = published_json(root, self.files_url)
        self._tmp = tempfile.TemporaryDirectory(prefix="geoseg-serve-")
        tmp = Path(self._tmp.name)
        hrefs = []
        for col in collections:
            p = tmp / f"collection-{col['id']}.json"
            p.write_text(json.dumps(col))
            hrefs.append(str(p))
        (tmp / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
        hrefs.append(str(tmp / "items.json"))
        self._proc = subprocess.Popen(
            [rustac_executable(), "serve", "--addr", f"{self.host}:{self.stac_port}", *hrefs],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            _wait_until_up(self.stac_url + "/", process=self._proc, timeout=self.startup_timeout)
            _wait_until_up(self.files_url + "/" + urlparse(items[0]["assets"][next(iter(items[0]["assets"]))]["href"]).path.lstrip("/") if items else self.files_url, process=None, timeout=self.startup_timeout)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        if self._files is not None:
            self._files.stop()
            self._files = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "LoopbackServers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
