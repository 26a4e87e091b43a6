"""geoseg.hugepages: torch is asked for transparent huge pages where the kernel offers them,
never over the user's own setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoseg import hugepages

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode, offered", [("always [madvise] never\n", True), ("[always] madvise never\n", True),
                                           ("always madvise [never]\n", False)])
def test_the_kernels_mode_decides(tmp_path, mode, offered):
    sysfs = tmp_path / "enabled"
    sysfs.write_text(mode)
    environ: dict[str, str] = {}
    assert hugepages.enable(environ, sysfs) is offered
    assert environ == ({hugepages.VARIABLE: "1"} if offered else {})


def test_no_huge_pages_where_the_kernel_has_none(tmp_path):
    environ: dict[str, str] = {}
    assert hugepages.enable(environ, tmp_path / "missing") is False
    assert environ == {}


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_users_setting_is_kept(tmp_path, value):
    sysfs = tmp_path / "enabled"
    sysfs.write_text("always [madvise] never\n")
    environ = {hugepages.VARIABLE: value}
    assert hugepages.enable(environ, sysfs) is (value == "1")
    assert environ == {hugepages.VARIABLE: value}


def run(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != hugepages.VARIABLE}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**environ, **env, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(not hugepages.kernel_offers(), reason="the kernel offers no transparent huge pages")
def test_importing_geoseg_sets_it():
    # torch reads the variable once, at its first CPU allocation: importing torch first is fine
    assert run("import os, torch, geoseg; torch.ones(1); print(os.environ.get('THP_MEM_ALLOC_ENABLE'))") == "1"
    assert run("import os, geoseg; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))", THP_MEM_ALLOC_ENABLE="0") == "0"
