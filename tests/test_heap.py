"""The C heap during inference (geoseg.heap): memory a thread frees and allocates
again is reused, not faulted back in page by page. Each case runs in a fresh
interpreter: the setting is process-wide and cannot be undone."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from geoseg.inference import Runner
from geoseg.models import Model
from tests.helpers import make_card

ROOT = Path(__file__).resolve().parent.parent
glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")

# a forward's pattern: several blocks of 8-30 MiB alive at once, all freed, again and again, in a
# worker thread (its own arena, as a dask thread's). Prints whether the setting is on and the
# thread's page faults over 20 rounds after a warm-up round.
SCRIPT = textwrap.dedent("""
    import json, resource, sys, threading
    import numpy as np
    from geoseg.heap import keep_heap

    applied = keep_heap() if sys.argv[1] == "tune" else None
    def rounds(n):
        for _ in range(n):
            live = [np.ones(m << 20, dtype=np.uint8) for m in (8, 16, 24, 12, 30)]
            del live
    out = []
    def run():
        rounds(1)
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        rounds(20)
        out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    t = threading.Thread(target=run)
    t.start(); t.join()
    print(json.dumps({"applied": applied, "faults": out[0]}))
""")


def clean_env(**env) -> dict:
    """This process's environment without any malloc setting, plus ``env``, with the project importable."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "GEOSEG_HEAP"))}
    return {**environ, **env, "PYTHONPATH": str(ROOT)}


def run_script(mode: str, **env) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, env=clean_env(**env), timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@glibc
def test_a_tuned_heap_serves_a_threads_reallocations_without_page_faults():
    tuned, default = run_script("tune"), run_script("default")
    pages = 20 * (8 + 16 + 24 + 12 + 30) * 2**20 // 4096
    assert tuned["applied"] is True
    # without the setting, glibc 2.36 faulted ~10 000 of these 460 000 pages back in; with it, none
    assert tuned["faults"] < pages // 1000, (tuned, default)


@glibc
@pytest.mark.parametrize("env", [{"GEOSEG_HEAP_TUNING": "0"}, {"MALLOC_TOP_PAD_": "131072"}, {"MALLOC_MMAP_THRESHOLD_": "1048576"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=65536"}], ids=lambda e: next(iter(e)))
def test_the_environments_malloc_settings_are_left_alone(env):
    assert run_script("tune", **env)["applied"] is False


@glibc
def test_predicting_applies_it():
    code = ("import numpy as np, geoseg.heap as h; from tests.test_heap import tiny_runner; "
            "assert not h._state; tiny_runner()(np.zeros((1, 2, 32, 32), 'float32')); print(h._state)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[True]"


@glibc
def test_training_applies_it(tmp_path):
    # applied first thing, so even a training that stops at once (no such config) has it
    code = ("import geoseg.heap as h, geoseg.train as t\nassert not h._state\ntry:\n    t.train('missing.yaml', out_dir='.')\n"
            "except Exception as err:\n    print(type(err).__name__)\nprint(h._state)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env=clean_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[True]", r.stdout


def tiny_runner() -> Runner:
    card = make_card(tile_size=32, halo=8)
    net = torch.nn.Conv2d(len(card.bands), len(card.classes), 1).eval()
    return Runner(card=card, device="cpu", batch_size=1, model=Model(card=card, network=net))
