"""Streaming: how predict reads its input, and that memory stays bounded.

Two kinds of source (see geoseg.sources): *windowed* ones, where dask pushes
a slice down into the read (a lazily opened COG, an in-memory array), and
*chunked* ones, computed chunk by chunk (odc-stac loads). Both must give the
same result, and on the local scheduler the reads must not run ahead of
inference: the most input (and tile pieces) alive at once does not grow
with the scene's height.
"""

from __future__ import annotations

import pickle
import time

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from dask.callbacks import Callback

from geoseg.inference import Runner, _stitched, predict
from geoseg.models import Model
from geoseg.sources import StackReader, fill, lookahead
from geoseg.tiling import TileLayout
from tests.helpers import Recording, make_card, make_stack
from tests.test_predict_seams import FakeConvNet, random_scene, whole_image


def chunked(values: np.ndarray, rows: int, cols: int) -> dsa.Array:
    """``values`` as a dask array whose chunks are opaque tasks (no slice push-down), like odc-stac's."""
    blocks = []
    for y in range(0, values.shape[-2], rows):
        blocks.append([dsa.from_delayed(dask.delayed(np.array)(values[..., y:y + rows, x:x + cols]),
                                        shape=values[..., y:y + rows, x:x + cols].shape, dtype=values.dtype)
                       for x in range(0, values.shape[-1], cols)])
    return dsa.block(blocks)


class LiveBytes(Callback):
    """Largest total size of results alive at once, by kind of task (the key's prefix)."""

    def __init__(self):
        super().__init__()
        self.peak: dict[str, int] = {}

    def _posttask(self, key, result, dsk, state, worker_id):
        sizes: dict[str, int] = {}
        for k, v in state["cache"].items():
            kind = (k[0] if isinstance(k, tuple) else k).rsplit("-", 1)[0]
            sizes[kind] = sizes.get(kind, 0) + sum(getattr(a, "nbytes", 0) for a in (v if isinstance(v, tuple) else (v,)))
        for kind, n in sizes.items():
            self.peak[kind] = max(self.peak.get(kind, 0), n)

    def of(self, prefix: str) -> int:
        return sum(n for kind, n in self.peak.items() if kind.startswith(prefix))


def test_windowed_sources_are_recognized():
    values = random_scene((64, 64))
    assert StackReader(dsa.from_array(values, chunks=(2, 16, 16))).windowed
    assert not StackReader(chunked(values, 16, 16)).windowed


def _scale(block, factor):
    return block.astype("float32") * np.float32(factor)


def _scale_elementwise(block, factor):
    return _scale(block, factor)


_scale_elementwise.elementwise = True


def _dn(values: np.ndarray) -> np.ndarray:
    return np.round(np.nan_to_num(values, nan=0.0) * 1000).astype("uint16")


@pytest.mark.parametrize("ops", ["scale_dn", "arithmetic", "marked map_blocks"])
def test_elementwise_operations_are_replayed_on_windows_read_at_the_source(ops):
    from geoseg.fetch import scale_dn

    values = random_scene((96, 120))
    source = Recording(_dn(values))
    dn = dsa.from_array(source, chunks=(2, 64, 64))
    if ops == "scale_dn":
        data = scale_dn(xr.DataArray(dn, dims=("band", "y", "x")), 1e-3, 0.0, 0).data
    elif ops == "arithmetic":
        data = dsa.where(dn > 0, dn.astype("float32") * np.float32(1e-3) + 1, np.nan)
    else:
        data = dsa.map_blocks(_scale_elementwise, dn, 1e-3, dtype="float32")
    reader = StackReader(data.astype("float32"))
    assert reader._replay is not None
    full = data.compute()
    (piece,) = reader.pieces(10, 42, 30, 70)
    source.reads.clear()
    np.testing.assert_array_equal(piece.read(), full[:, 10:42, 30:70])
    assert source.pixels_read() == 2 * 32 * 40  # the window only: dask would read four 64 x 64 chunks
    pickle.loads(pickle.dumps(piece.read))()  # a distributed worker gets the read by pickle


def test_operations_on_in_memory_arrays_are_replayed():
    values = _dn(random_scene((96, 120)))
    reader = StackReader(dsa.from_array(values, chunks=(2, 64, 64)).astype("float32") * np.float32(1e-3))
    assert reader._replay is not None
    (piece,) = reader.pieces(10, 42, 30, 70)
    np.testing.assert_array_equal(piece.read(), values[:, 10:42, 30:70].astype("float32") * np.float32(1e-3))


def test_other_operations_are_not_replayed_and_give_the_same_result():
    """Functions not declared elementwise, or that depend on the block's position, compute whole chunks."""
    values = random_scene((96, 120))
    dn = dsa.from_array(Recording(_dn(values)), chunks=(2, 64, 64))

    def offset_by_block(block, block_info=None):
        return block.astype("float32") + block_info[0]["chunk-location"][1]

    for data in (dsa.map_blocks(_scale, dn, 1e-3, dtype="float32"), dsa.map_blocks(offset_by_block, dn, dtype="float32"),
                 dsa.map_overlap(_scale_elementwise, dn, depth=(0, 1, 1), factor=1e-3, dtype="float32")):
        reader = StackReader(data)
        assert reader._replay is None
        full = data.compute()
        window = np.zeros((2, 32, 40), "float32")
        fill(window, 10, 30, [(p.band, p.row, p.col, p.read()) for p in reader.pieces(10, 42, 30, 70)])
        np.testing.assert_array_equal(window, full[:, 10:42, 30:70])


def test_replayed_source_gives_the_same_prediction():
    from geoseg.fetch import scale_dn

    card = make_card(tile_size=32, halo=8)
    model = Model(card=card, network=FakeConvNet(2, 2).eval())
    values = random_scene((101, 77), holes=True)
    dn = _dn(values)
    stack = make_stack(values, ["red", "nir"], chunks=29)
    lazy = stack.copy(data=scale_dn(xr.DataArray(dsa.from_array(Recording(dn), chunks=(2, 40, 40)), dims=stack.dims), 1e-3, 0.0, 0).data)
    eager = stack.copy(data=np.where(dn == 0, np.nan, dn.astype("float32") * np.float32(1e-3)))
    np.testing.assert_array_equal(predict(lazy, model, device="cpu").values, predict(eager, model, device="cpu").values)


@pytest.mark.parametrize("rows,cols", [(29, 31), (64, 200), (7, 13)])
def test_chunked_and_windowed_sources_give_the_same_prediction(rows, cols):
    card = make_card(tile_size=32, halo=8)
    model = Model(card=card, network=FakeConvNet(2, 2).eval())
    values = random_scene((101, 77), holes=True)
    windowed = make_stack(values, ["red", "nir"], chunks=29)
    opaque = windowed.copy(data=chunked(values, rows, cols))
    a = predict(windowed, model, device="cpu").values
    b = predict(opaque, model, device="cpu").values
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, whole_image(values, model), atol=2e-6, equal_nan=True)


def test_chunks_are_read_once_and_shared():
    values = random_scene((100, 100))
    reader = StackReader(chunked(values, 25, 25))
    names = [p.name for p in reader.pieces(-8, 24, -8, 60)] + [p.name for p in reader.pieces(8, 40, -8, 60)]
    assert len(set(names)) < len(names)  # the second window reuses chunks of the first
    for p in reader.pieces(10, 40, 30, 70):
        np.testing.assert_array_equal(p.read(), values[:, p.row:p.row + 25, p.col:p.col + 25])


def test_rows_shared_with_the_tile_row_above_are_read_once():
    """On the local scheduler a tile row gets the 2 * halo rows it shares with the row above from
    that row, already normalized: with one tile group per row, every pixel is read exactly once."""
    card = make_card(tile_size=32, halo=8)
    model = Model(card=card, network=FakeConvNet(2, 2).eval())
    values = random_scene((101, 60), holes=True)  # a hole and a nodata stripe in shared rows
    layout = TileLayout(101, 60, 32, 8)
    assert len(layout.tile_groups(999)) == 1 and len(layout.y.starts) > 3
    assert layout.y.starts[-1] + 2 * 8 >= 101  # the last row has no row of its own to read
    source = Recording(values)
    stack = make_stack(values, ["red", "nir"], chunks=None)
    lazy = stack.copy(data=dsa.from_array(source, chunks=(2, 40, 40)))
    out = predict(lazy, model, device="cpu", check=False).values
    times = np.zeros(values.shape, dtype=int)
    for key in source.reads:
        times[key] += 1
    assert (times == 1).all(), np.unique(times, return_counts=True)
    np.testing.assert_allclose(out, whole_image(values, model), atol=2e-6, equal_nan=True)


class SlowNet(FakeConvNet):
    """Inference much slower than reading, as with a real network: what makes an ungated scheduler read ahead."""

    def forward(self, x):
        time.sleep(0.004)
        return super().forward(x)


def _peaks(height: int, source) -> LiveBytes:
    card = make_card(tile_size=32, halo=8)
    model = Model(card=card, network=SlowNet(2, 2).eval())
    values = random_scene((height, 96))
    stack = make_stack(values, ["red", "nir"], chunks=32)
    if source == "chunked":
        stack = stack.copy(data=chunked(values, 32, 48))
    live = LiveBytes()
    with live, dask.config.set(scheduler="threads", num_workers=2):
        predict(stack, model, device="cpu").data.compute()
    return live


@pytest.mark.parametrize("source", ["windowed", "chunked"])
def test_memory_does_not_grow_with_scene_height(source):
    short, tall = _peaks(480, source), _peaks(1920, source)  # 4x the rows, same width
    for kind in ("geoseg-read", "geoseg-piece"):  # (thread timing moves each by a group or two)
        assert 0 < tall.of(kind) <= 2 * short.of(kind), (kind, short.peak, tall.peak)


def test_prepared_windows_are_not_held_for_the_next_tile_row(monkeypatch):
    """The next tile row gets a copy of the rows it shares with a group, not the group's window:
    the windows alive at once stay a few groups' worth, however many groups a row has."""
    import geoseg.inference

    monkeypatch.setattr(geoseg.inference, "GROUP_PIXELS", 64)  # groups of 4 tiles: 32 groups per row
    card = make_card(tile_size=32, halo=8)
    model = Model(card=card, network=SlowNet(2, 2).eval())
    stack = make_stack(random_scene((160, 2048)), ["red", "nir"], chunks=64)
    live = LiveBytes()
    with live, dask.config.set(scheduler="threads", num_workers=2):
        ahead = lookahead()
        predict(stack, model, device="cpu").data.compute()
    window = 2 * 32 * 80 * 4 + 32 * 80  # one group's window: (band, T, 4 tiles + 2 halos) float32, and its mask
    assert 0 < live.of("geoseg-prep") <= (ahead + 4) * window, live.of("geoseg-prep") / window  # a row: 32
    # what does wait for the next row: its 2 * halo rows of each group, half a window here
    assert 0 < live.of("geoseg-shared") <= (32 + ahead) * window // 2


@pytest.mark.parametrize("source", ["windowed", "chunked"])
def test_reads_wait_for_the_group_ahead_of_them(source):
    card = make_card(tile_size=32, halo=8)
    runner = Runner(card=card, device="cpu", batch_size=2, model=Model(card=card, network=FakeConvNet(2, 2).eval()))
    values = random_scene((400, 96))
    data = dsa.from_array(values, chunks=(2, 32, 48)) if source == "windowed" else chunked(values, 32, 48)
    layout = TileLayout(400, 96, 32, 8)
    graph = dict(_stitched(data, layout, runner).__dask_graph__())
    ahead = lookahead()
    reads = {k: t for k, t in graph.items() if k[0].startswith("geoseg-read-")}
    gated = {d for t in reads.values() for d in t.dependencies if d[0].startswith("geoseg-gate-")}
    gates = sorted(k[1] for k in graph if k[0].startswith("geoseg-gate-"))
    assert len(gates) == len(layout.y.starts)  # one group per tile row here
    waited_on = sorted(g[1] for g in gated)
    if source == "windowed":  # every group reads its own window, after the group `ahead` before it
        assert waited_on == gates[:len(gates) - ahead]
    else:  # a chunk row serves two tile rows: every other group reads new chunks
        assert set(waited_on) <= set(gates[:len(gates) - ahead]) and len(waited_on) >= (len(gates) - ahead) // 2
    ungated = [k for k, t in reads.items() if not t.dependencies]
    assert 0 < len(ungated) <= ahead * 4  # only the first groups' reads start at once
    for g in gated:  # a gate waits for its group and the output blocks that group completed
        deps = graph[g].dependencies
        assert any(d[0].startswith("geoseg-group-") for d in deps)
    assert sum(any(d[0].startswith("geoseg-blend-") for d in graph[g].dependencies) for g in gated) >= len(gated) - 2


@pytest.mark.parametrize("gpus", [1, 0])
def test_inference_tasks_ask_for_a_gpu_where_a_worker_has_one(gpus):
    """On a cluster whose workers declare a GPU, inference goes to them; on one without, a GPU
    restriction would wait forever, so there is none."""
    distributed = pytest.importorskip("distributed")
    card = make_card(tile_size=32, halo=8)
    runner = Runner(card=card, device="cuda", batch_size=2, model=Model(card=card, network=FakeConvNet(2, 2).eval()))
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None,
                            resources={"GPU": 1} if gpus else None):
        arr = _stitched(dsa.zeros((2, 70, 70), chunks=35), TileLayout(70, 70, 32, 8), runner)
    (layer,) = arr.__dask_graph__().layers.values()
    if not gpus:
        assert "resources" not in layer.annotations
        return
    wants = {k: layer.annotations["resources"](k) for k in layer}
    assert {k[0].split("-")[1] for k, v in wants.items() if v} == {"infer"}
    assert all(v in ({}, {"GPU": 1}) for v in wants.values())  # the scheduler asserts a dict


def test_no_gates_on_a_distributed_cluster_and_same_result(tmp_path):
    """A distributed cluster schedules reads itself (no gates); the result equals the gated local one."""
    distributed = pytest.importorskip("distributed")
    import torch

    from geoseg.models import build_network, save

    torch.manual_seed(0)
    card = make_card(tile_size=64, halo=16, divisor=32, encoder="resnet18")
    card_path = save(build_network(card).eval(), card, tmp_path)
    stack = make_stack(random_scene((90, 150), holes=True), ["red", "nir"], chunks=40)
    assert lookahead() is not None
    local = predict(stack, card_path, device="cpu").values
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None):
        assert lookahead() is None
        remote = predict(stack, card_path, device="cpu").values
    np.testing.assert_allclose(remote, local, atol=1e-6, equal_nan=True)


def test_blocks_finish_in_raster_order_on_a_cluster(tmp_path, monkeypatch):
    """On a cluster (no gates) task priorities keep inference in raster order: the block cache fills
    from the top, so a killed run's finished blocks free whole tile rows when it resumes."""
    distributed = pytest.importorskip("distributed")
    import torch

    from geoseg import blocks, inference
    from geoseg.models import build_network, save

    torch.manual_seed(0)
    card = make_card(tile_size=64, halo=16, divisor=32, encoder="resnet18")
    card_path = save(build_network(card).eval(), card, tmp_path)
    monkeypatch.setattr(inference, "GROUP_PIXELS", 64)  # two tiles per group: several column blocks
    stack = make_stack(random_scene((300, 200), holes=True), ["red", "nir"], chunks=100)
    saved = []
    real_save = blocks._save
    monkeypatch.setattr(blocks, "_save", lambda path, block: (saved.append(path.stem), real_save(path, block)))
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None):
        probs = predict(stack, card_path, device="cpu")
        (layer,) = probs.data.__dask_graph__().layers.values()
        assert all(isinstance(layer.annotations["priority"](k), int) for k in layer)
        blocks.materialize(probs.data, tmp_path / "cache")
    rows = [int(s.split("_")[1]) for s in saved]  # cache files are b0_{row}_{col}
    assert len(rows) == probs.data.npartitions > 20
    # top to bottom: never a block after one two rows below it (one group can complete blocks of
    # two rows, at the bottom edge, and those come in any order)
    assert all(r >= max(rows[:i]) - 1 for i, r in enumerate(rows) if i), rows
