"""A new NVML field is added in the model and the collector only: the replay round trip, the
fixture generator, the selftest's canary data and the test fake carry it without a change.

The test adds `fan_speed_pct` to a copy of model.Gpu (a subclass made with
dataclasses.make_dataclass) and puts it where model.Gpu was, which is what editing the
class does; then it drives the unchanged code. What a real field would still need: its
reader in the collector (here one PlainRead row), its check, that check's test and doc.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field, make_dataclass, replace

import pytest
from helpers import NVML_FIXTURES
from test_gpu_adapter import FakeNvml

from nodecheck.probes import nvml
from nodecheck.probes.nvml import handmade, model, real
from nodecheck.probes.nvml.model import Snapshot
from nodecheck.selftest import nvml_data

pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")

NEW = "fan_speed_pct"


@pytest.fixture
def extended_gpu(monkeypatch):
    """model.Gpu with one more field, in model.Gpu's place (and real.py's name for it)."""
    extended = make_dataclass(
        "Gpu", [(NEW, int | None, field(default=None))], bases=(model.Gpu,), frozen=True
    )
    monkeypatch.setattr(model, "Gpu", extended)
    monkeypatch.setattr(real, "Gpu", extended)
    # The model resolves its annotations once per class; the class behind a name changed.
    model.field_readers.cache_clear()
    yield extended
    monkeypatch.undo()
    model.field_readers.cache_clear()


def _make_fixtures():
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", NVML_FIXTURES / "make_fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _replay(tmp_path, data, indices=None) -> Snapshot:
    path = tmp_path / "node.json"
    path.write_text(handmade.dump(data), encoding="utf-8")
    return nvml.get_snapshot(f"replay:{path}", indices)


def test_replay_round_trip_carries_a_new_field(extended_gpu, tmp_path):
    data = _make_fixtures().healthy()
    data["gpus"][1][NEW] = 55  # the value a scenario needs, and nothing else
    snap = _replay(tmp_path, data)
    assert isinstance(snap.gpus[1], extended_gpu)
    assert [getattr(g, NEW) for g in snap.gpus] == [None, 55, None, None, None, None, None, None]
    assert Snapshot.from_json(snap.to_json()) == snap
    assert json.loads(snap.to_json())["gpus"][1][NEW] == 55
    assert getattr(_replay(tmp_path, data, [1]).gpus[0], NEW) == 55  # selection keeps it


def test_a_misspelt_new_field_is_still_refused(extended_gpu):
    data = _make_fixtures().healthy()
    data["gpus"][0]["fan_sped_pct"] = 55
    with pytest.raises(ValueError, match="fan_sped_pct"):
        handmade.complete(data)


def test_every_generated_fixture_carries_a_new_field(extended_gpu):
    """make_fixtures.py, unchanged, writes the new field (its default) into every GPU of
    every fixture; running it again is all a fixture needs."""
    built = _make_fixtures().build()
    assert len(built) == len(list(NVML_FIXTURES.glob("*.json")))
    for name, data in built.items():
        for gpu in handmade.complete(data)["gpus"]:
            assert NEW in gpu and gpu[NEW] is None, name
    # and the committed fixtures, written before the field existed, still load
    for path in NVML_FIXTURES.glob("*.json"):
        assert all(getattr(g, NEW) is None for g in Snapshot.load(path).gpus)


def test_the_selftest_canaries_carry_a_new_field(extended_gpu, tmp_path):
    for fault in (None, *nvml_data.FAULTS):
        assert all(NEW in gpu for gpu in nvml_data.snapshot(fault)["gpus"]), fault
    snap = nvml.get_snapshot(nvml_data.write(tmp_path, "dbe"))
    assert all(getattr(g, NEW) is None for g in snap.gpus)
    assert snap.gpus[5].ecc_uncorrected_volatile == 2


def test_the_collector_and_the_fake_carry_a_new_field_with_one_reader_row(
    extended_gpu, tmp_path, monkeypatch
):
    """The collector's reader (one PlainRead) is the one change outside the model: the fake
    pynvml answers it from the snapshot by itself."""
    monkeypatch.setattr(
        real,
        "PLAIN_READS",
        (*real.PLAIN_READS, real.PlainRead(NEW, ("nvmlDeviceGetFanSpeed",))),
    )
    data = _make_fixtures().healthy()
    for gpu in data["gpus"]:
        gpu[NEW] = 30 + gpu["index"]
    recorded = _replay(tmp_path, data)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml(recorded))
    got = real.collect()
    assert [getattr(g, NEW) for g in got.gpus] == list(range(30, 38))
    strip = lambda s: replace(s, source="", collected_at=0.0, collect_s=0.0)  # noqa: E731
    assert strip(got) == strip(recorded)


def test_nested_records_derive_too(monkeypatch):
    """A field added to a nested record (here FabricInfo) round-trips the same way."""

    @dataclass(frozen=True)
    class Fabric(model.FabricInfo):
        bandwidth_gbps: int | None = None

    monkeypatch.setattr(model, "FabricInfo", Fabric)
    model.field_readers.cache_clear()
    try:
        data = _make_fixtures().healthy()
        data["gpus"][0]["fabric"]["bandwidth_gbps"] = 900
        snap = Snapshot.from_dict(handmade.complete(data))
        assert snap.gpus[0].fabric.bandwidth_gbps == 900
        assert snap.gpus[1].fabric.bandwidth_gbps is None
        assert Snapshot.from_json(snap.to_json()) == snap
    finally:
        monkeypatch.undo()
        model.field_readers.cache_clear()
