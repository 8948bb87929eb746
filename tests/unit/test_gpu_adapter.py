"""The NVML adapter: snapshot model, JSON round trip, replay, and the real collector driven
through a fake pynvml that answers from a fixture (so it runs without a GPU)."""

import json
import os
import signal
import time
import types
import uuid
from dataclasses import replace
from pathlib import Path

import pynvml
import pytest
from helpers import NVML_FIXTURES

from nodecheck.core import progress
from nodecheck.probes import nvml
from nodecheck.probes.nvml import model, real
from nodecheck.probes.nvml.model import NvmlError, Snapshot

ALL_FIXTURES = sorted(NVML_FIXTURES.glob("*.json"))


pytestmark = pytest.mark.usefixtures("fresh_nvml_cache")


def test_error_table_matches_pynvml_codes():
    for code, (name, _message) in model.ERROR_CODES.items():
        assert getattr(pynvml, name) == code, name
    assert NvmlError(15).name == "NVML_ERROR_GPU_IS_LOST" and NvmlError(15).gpu_lost
    assert NvmlError(3).not_supported and NvmlError(13).not_supported
    assert str(NvmlError(12)) == "NVML Shared Library Not Found (NVML_ERROR_LIBRARY_NOT_FOUND)"
    assert NvmlError(12).absent and NvmlError(9).absent and not NvmlError(18).absent


def test_constants_match_pynvml():
    assert pynvml.nvmlClocksEventReasonHwSlowdown == model.CLOCK_EVENT_REASONS["hw_slowdown"]
    assert (
        pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
        == model.CLOCK_EVENT_REASONS["hw_thermal_slowdown"]
    )
    assert (
        pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
        == model.CLOCK_EVENT_REASONS["hw_power_brake_slowdown"]
    )
    assert pynvml.NVML_GPU_FABRIC_STATE_COMPLETED == model.FABRIC_STATE_COMPLETED
    assert pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS == 3
    assert model.COMPUTE_MODES[3] == "exclusive_process"
    assert [pynvml.NVML_NVLINK_ERROR_DL_REPLAY, pynvml.NVML_NVLINK_ERROR_DL_ECC_DATA] == [0, 4]


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.stem)
def test_fixture_round_trips(path):
    snap = Snapshot.load(path)
    assert Snapshot.from_json(snap.to_json()) == snap
    assert Snapshot.from_dict(json.loads(json.dumps(snap.to_dict()))) == snap


def test_healthy_fixture_has_real_nvml_shapes():
    snap = Snapshot.load(NVML_FIXTURES / "h100-healthy.json")
    assert snap.driver_version == "550.90.07" and snap.cuda_driver_version == 12040
    gpu = snap.gpus[3]
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.pci_bus_id == "00000000:5D:00.0"
    assert gpu.power_limit_mw == 700000  # milliwatts
    assert gpu.memory.total == 85520809984  # bytes
    assert len(gpu.nvlinks) == 18 and all(link.active for link in gpu.nvlinks)
    assert gpu.uuid.startswith("GPU-")


def test_unknown_keys_are_rejected():
    data = json.loads((NVML_FIXTURES / "h100-healthy.json").read_text())
    data["gpus"][0]["temprature_c"] = 40
    with pytest.raises(ValueError, match="temprature_c"):
        Snapshot.from_dict(data)
    with pytest.raises(ValueError, match="format"):
        Snapshot.from_dict({"format": "something-else/9"})


def test_replay_source_and_selection():
    source = f"replay:{NVML_FIXTURES / 'h100-healthy.json'}"
    snap = nvml.get_snapshot(source)
    assert snap.source == source and len(snap.gpus) == 8 and snap.selected is None
    assert nvml.get_snapshot(source) is snap  # cached per process
    some = nvml.get_snapshot(source, [5, 2])
    assert [g.index for g in some.gpus] == [2, 5] and some.selected == (2, 5)
    assert some.device_count == 8


def test_replay_cache_sees_a_rewritten_file(tmp_path):
    path = tmp_path / "snap.json"
    path.write_text((NVML_FIXTURES / "h100-healthy.json").read_text())
    first = nvml.get_snapshot(f"replay:{path}")
    path.write_text((NVML_FIXTURES / "h100-missing-gpu.json").read_text())
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert len(nvml.get_snapshot(f"replay:{path}").gpus) == len(first.gpus) - 1


def test_bad_source_is_an_error():
    with pytest.raises(ValueError, match="nvml source"):
        nvml.get_snapshot("mock")


def test_no_pynvml_import_until_a_real_snapshot(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, nodecheck.probes.nvml, nodecheck.probes.nvml.model;"
        "from nodecheck.probes.nvml import get_snapshot;"
        f"get_snapshot('replay:{NVML_FIXTURES / 'h100-healthy.json'}');"
        "print('pynvml' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert out.stdout.strip() == "False"


def _in_child(fn, timeout_s):
    """Run fn in a forked child that reports progress notes; kill it at the deadline."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            progress.set_sink(lambda text: os.write(write_fd, text.encode() + b"\n"))
            fn()
            os.write(write_fd, b"DONE\n")
        finally:
            os._exit(0)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    deadline = time.monotonic() + timeout_s
    data = b""
    hung = True
    while time.monotonic() < deadline:
        try:
            chunk = os.read(read_fd, 4096)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        if not chunk:
            hung = False
            break
        data += chunk
    if hung:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read_fd)
    return hung, data.decode().splitlines()


def test_replay_hang_blocks_with_a_note_naming_the_call():
    source = f"replay:{NVML_FIXTURES / 'h100-hang-remap.json'}"
    hung, notes = _in_child(lambda: nvml.get_snapshot(source), timeout_s=1.0)
    assert hung and notes[-1] == "nvmlDeviceGetRemappedRows gpu3"


def test_replay_hang_outside_the_selection_does_not_hang():
    source = f"replay:{NVML_FIXTURES / 'h100-hang-remap.json'}"
    hung, notes = _in_child(lambda: nvml.get_snapshot(source, [0, 1]), timeout_s=5.0)
    assert not hung and notes[-1] == "DONE"


# --- the real collector against a fake pynvml -----------------------------------------


class FakeNvml(types.SimpleNamespace):
    """Answers pynvml calls from a Snapshot, raising pynvml's own NVMLError subclasses."""

    NVMLError = pynvml.NVMLError
    NVML_NVLINK_MAX_LINKS = 36
    NVML_FI_DEV_GET_GPU_RECOVERY_ACTION = pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION
    c_nvmlGpuFabricInfo_t = pynvml.c_nvmlGpuFabricInfo_t
    c_nvmlGpuFabricInfo_v2_t = pynvml.c_nvmlGpuFabricInfo_v2_t
    c_nvmlGpuFabricInfo_v3_t = pynvml.c_nvmlGpuFabricInfo_v3_t

    def __init__(self, snap: Snapshot, fabric_v3: bool = True):
        super().__init__()
        self.snap = snap
        self.fabric_v3 = fabric_v3
        self.calls: list[str] = []
        self.shutdown = 0

    def __getattr__(self, name):
        """Every row of the collector's real.PLAIN_READS, answered from the snapshot under
        its oldest name (what every pynvml has; a subclass adds newer ones), so a field read
        that way needs nothing here."""
        read = next((r for r in real.PLAIN_READS if r.calls[-1] == name), None)
        if read is None:
            raise AttributeError(name)

        def answer(h, *args):
            assert args == read.args, (name, args)
            return self._field(h, read.field)

        return answer

    # helpers
    def _raise(self, err):
        raise pynvml.NVMLError(err.code)

    def _gpu(self, handle):
        return self.snap.gpus[handle]

    def _field(self, handle, key, *fields_):
        gpu = self._gpu(handle)
        if key in gpu.errors:
            self._raise(gpu.errors[key])
        values = [getattr(gpu, f) for f in fields_ or (key,)]
        return values[0] if len(values) == 1 else values

    # system
    def nvmlInit(self):
        self.calls.append("nvmlInit")
        if self.snap.init_error:
            self._raise(self.snap.init_error)

    def nvmlShutdown(self):
        self.shutdown += 1

    def nvmlSystemGetDriverVersion(self):
        return self.snap.driver_version

    def nvmlSystemGetCudaDriverVersion(self):
        return self.snap.cuda_driver_version

    def nvmlDeviceGetCount(self):
        return self.snap.device_count

    def nvmlDeviceGetHandleByIndex(self, index):
        self.calls.append(f"handle{index}")
        gpu = self.snap.gpus[index]
        if "handle" in gpu.errors:
            self._raise(gpu.errors["handle"])
        return index

    # device
    def nvmlDeviceGetMinorNumber(self, h):
        return self._field(h, "minor_number")

    def nvmlDeviceGetName(self, h):
        return self._field(h, "name")

    def nvmlDeviceGetUUID(self, h):
        return self._field(h, "uuid").encode()  # pynvml returns bytes here

    def nvmlDeviceGetPciInfo(self, h):
        return types.SimpleNamespace(busId=self._field(h, "pci_bus_id").encode())

    def nvmlDeviceGetEccMode(self, h):
        cur, pend = self._field(h, "ecc_mode", "ecc_mode_current", "ecc_mode_pending")
        return [int(cur), int(pend)]

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter_type):
        kind = {1: "uncorrected", 0: "corrected"}[error_type]
        counter = {0: "volatile", 1: "aggregate"}[counter_type]
        return self._field(h, f"ecc_{kind}_{counter}")

    def nvmlDeviceGetRemappedRows(self, h):
        rows = self._field(h, "remapped_rows")
        return (rows.corrRows, rows.uncRows, int(rows.isPending), int(rows.failureOccurred))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h):
        return int(self._field(h, "retired_pages_pending"))

    def nvmlDeviceGetRetiredPages(self, h, cause):
        count = self._field(h, "retired_pages_sbe" if cause == 0 else "retired_pages_dbe")
        return [0x1000 * (i + 1) for i in range(count)]

    def _link(self, h, link):
        gpu = self._gpu(h)
        for item in gpu.nvlinks:
            if item.link == link:
                return item
        self._raise(gpu.errors.get("nvlink") or NvmlError(2))

    def nvmlDeviceGetNvLinkState(self, h, link):
        item = self._link(h, link)
        if "state" in item.errors:
            self._raise(item.errors["state"])
        return int(item.active)

    def nvmlDeviceGetNvLinkErrorCounter(self, h, link, counter):
        item = self._link(h, link)
        name = model.NVLINK_COUNTERS[counter]
        if name in item.errors:
            self._raise(item.errors[name])
        if name not in item.counters or not self.legacy_counters:
            self._raise(NvmlError(3))  # Blackwell: no legacy counter at all
        return item.counters[name]

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self._field(h, "clocks_event_reasons")

    def nvmlDeviceGetViolationStatus(self, h, policy):
        """nvmlViolationTime_t of the policy's model field (None where the snapshot has none
        and no error: the collector then records None, as it read it)."""
        key = {0: "power_violation", 1: "thermal_violation"}[policy]
        value = self._field(h, key)
        if value is None:
            return None
        return pynvml.c_nvmlViolationTime_t(value.referenceTime, value.violationTime)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._field(h, "temperature_c")

    def nvmlDeviceGetPersistenceMode(self, h):
        return int(self._field(h, "persistence_mode"))

    def nvmlDeviceGetMigMode(self, h):
        cur, pend = self._field(h, "mig_mode", "mig_mode_current", "mig_mode_pending")
        return [int(cur), int(pend)]

    def nvmlDeviceGetGpuFabricInfoV(self, h, ref):
        info = ref._obj
        if isinstance(info, pynvml.c_nvmlGpuFabricInfo_v3_t) and not self.fabric_v3:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        fabric = self._field(h, "fabric")
        info.state, info.status = fabric.state, fabric.status
        info.healthMask = fabric.healthMask or 0
        if hasattr(info, "healthSummary"):
            info.healthSummary = fabric.healthSummary or 0
        if fabric.clusterUuid is not None:  # NVML's 16 bytes; all zero without a domain
            info.clusterUuid[:] = list(uuid.UUID(fabric.clusterUuid).bytes)
            info.cliqueId = fabric.cliqueId or 0

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h):
        return [
            types.SimpleNamespace(
                pid=p.pid,
                usedGpuMemory=p.usedGpuMemory,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
            for p in self._field(h, "processes")
        ]

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, h):
        return [
            types.SimpleNamespace(pid=p.pid, usedGpuMemory=p.usedGpuMemory)
            for p in self._field(h, "graphics_processes")
        ]

    # Answer the NVML_FI_DEV_NVLINK_LINK_COUNT field (91) with the fixture's link count.
    answers_link_count = False
    legacy_counters = True  # False: nvmlDeviceGetNvLinkErrorCounter NOT_SUPPORTED (Blackwell)

    def nvmlDeviceGetFieldValues(self, h, field_ids):
        """Real NVML fails one field in its own nvmlReturn, not the whole call. Fields: the
        recovery action, the NVLink count, and the per-link NVLink counters (scopeId = link)
        of model.NVLINK_COUNTER_SPECS, answered from each link's counters."""
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        gpu = self._gpu(h)
        by_field = {spec.field: spec.name for spec in model.NVLINK_COUNTER_SPECS if spec.field}
        by_ber = {number: name for name, number in model.NVLINK_BER_FIELDS.items()}
        for slot, request in zip(values, field_ids, strict=True):
            field_id, scope = request if isinstance(request, tuple) else (request, 0)
            slot.fieldId, slot.scopeId = field_id, scope
            slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
            if field_id == model.FI_GPU_RECOVERY_ACTION:
                if "recovery_action" in gpu.errors:
                    slot.nvmlReturn = gpu.errors["recovery_action"].code
                else:
                    slot.value.uiVal = gpu.recovery_action
            elif field_id == model.FI_NVLINK_LINK_COUNT and self.answers_link_count:
                slot.value.uiVal = len(gpu.nvlinks)
            elif field_id in (model.FI_C2C_LINK_COUNT, model.FI_C2C_LINK_STATUS):
                if gpu.c2c_links is None:  # a discrete GPU: no NVLink-C2C
                    slot.nvmlReturn = gpu.errors["c2c"].code
                elif field_id == model.FI_C2C_LINK_COUNT:
                    slot.value.uiVal = len(gpu.c2c_links)
                else:
                    slot.value.uiVal = gpu.c2c_links[scope]
            elif field_id in by_field:
                link = next((x for x in gpu.nvlinks if x.link == scope), None)
                name = by_field[field_id]
                if link is None or name not in link.counters:
                    err = link.errors.get(name) if link else None
                    slot.nvmlReturn = err.code if err else pynvml.NVML_ERROR_NOT_SUPPORTED
                else:
                    slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                    slot.value.ullVal = link.counters[name]
            elif field_id in by_ber:
                link = next((x for x in gpu.nvlinks if x.link == scope), None)
                if link is None or by_ber[field_id] not in link.ber:
                    slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                else:
                    slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                    slot.value.ullVal = link.ber[by_ber[field_id]]
            else:
                slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
        return values

    def nvmlDeviceGetMemoryInfo(self, h):
        mem = self._field(h, "memory")
        return types.SimpleNamespace(total=mem.total, free=mem.free, used=mem.used)


def _collect_with(monkeypatch, fake, indices=None):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake)
    return real.collect(indices)


def _comparable(snap: Snapshot) -> Snapshot:
    return replace(snap, source="", collected_at=0.0, collect_s=0.0)


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.stem)
def test_real_collector_reproduces_each_fixture(monkeypatch, path):
    recorded = Snapshot.load(path)
    fake = FakeNvml(recorded)
    got = _collect_with(monkeypatch, fake)
    assert _comparable(got) == _comparable(recorded)
    assert fake.shutdown == (0 if recorded.init_error else 1)


def test_real_collector_notes_each_call(monkeypatch):
    notes = []
    progress.set_sink(notes.append)
    try:
        _collect_with(monkeypatch, FakeNvml(Snapshot.load(NVML_FIXTURES / "h100-healthy.json")))
    finally:
        progress.set_sink(None)
    assert notes[0] == "nvmlInit"
    assert "nvmlDeviceGetRemappedRows gpu3" in notes
    assert "nvmlDeviceGetNvLinkErrorCounter gpu7 link17 ecc_data" in notes


def test_real_collector_selection_touches_only_those_gpus(monkeypatch):
    fake = FakeNvml(Snapshot.load(NVML_FIXTURES / "h100-lost-gpu.json"))
    got = _collect_with(monkeypatch, fake, [1, 2])
    assert [g.index for g in got.gpus] == [1, 2] and got.selected == (1, 2)
    assert "handle3" not in fake.calls


class OldDriverNvml(FakeNvml):
    """A driver whose libnvidia-ml lacks the newer names (NVML_ERROR_FUNCTION_NOT_FOUND)."""

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        self.calls.append("throttle")
        return self._field(h, "clocks_event_reasons")


def test_real_collector_falls_back_to_older_fabric_struct_and_throttle_name(monkeypatch):
    snap = Snapshot.load(NVML_FIXTURES / "h100-hw-slowdown.json")
    fake = OldDriverNvml(snap, fabric_v3=False)
    got = _collect_with(monkeypatch, fake)
    assert got.gpus[0].fabric == snap.gpus[0].fabric
    assert got.gpus[1].clocks_event_reasons == 0x9
    assert "throttle" in fake.calls


def test_real_collector_without_pynvml_reports_library_not_found(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    snap = real.collect()
    assert snap.init_error.code == 12 and "not installed" in snap.init_error.message


def test_real_nvml_here_is_data_not_a_crash():
    snap = nvml.get_snapshot("real")
    if snap.init_error is None:
        pytest.skip("this machine has a working NVML")
    assert snap.gpus == () and snap.init_error.code in model.ERROR_CODES


def test_record_tool_writes_a_replayable_snapshot(monkeypatch, tmp_path, capsys):
    import importlib.util

    tool = Path(__file__).resolve().parents[2] / "tools" / "record-nvml-snapshot.py"
    spec = importlib.util.spec_from_file_location("record_nvml_snapshot", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    recorded = Snapshot.load(NVML_FIXTURES / "h100-remap-pending.json")
    monkeypatch.setitem(__import__("sys").modules, "pynvml", FakeNvml(recorded))
    out = tmp_path / "node.json"
    assert module.main(["-o", str(out), "--comment", "test node"]) == 0
    assert "8 GPUs, driver 550.90.07" in capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["comment"] == "test node"
    snap = nvml.get_snapshot(f"replay:{out}")
    assert snap.gpus[3].remapped_rows.isPending
    assert snap.gpus[5].uuid == "GPU-00000000-0000-4000-8000-000000000005"
    strip = lambda s: _comparable(replace(s, gpus=tuple(replace(g, uuid="") for g in s.gpus)))  # noqa: E731
    assert strip(snap) == strip(recorded)


class NewDriverNvml(FakeNvml):
    """A driver with nvmlDeviceGetTemperatureV: the collector prefers it."""

    def nvmlDeviceGetTemperatureV(self, h, sensor):
        self.calls.append("temperatureV")
        return self._field(h, "temperature_c")

    def nvmlDeviceGetTemperature(self, h, sensor):
        raise AssertionError("deprecated call used although the V form exists")


def test_real_collector_prefers_newer_temperature_call(monkeypatch):
    snap = Snapshot.load(NVML_FIXTURES / "h100-hot-idle.json")
    fake = NewDriverNvml(snap)
    got = _collect_with(monkeypatch, fake)
    assert got.gpus[7].temperature_c == 88 and "temperatureV" in fake.calls


# --- pynvml releases and drivers of other branches ------------------------------------


class OldBindingsNvml(FakeNvml):
    """pynvml 12.550 to 12.575: the v2 fabric struct is named c_nvmlGpuFabricInfoV_t (no
    _v2_t, no _v3_t), and before 12.570 NVML_FI_DEV_GET_GPU_RECOVERY_ACTION has no name."""

    c_nvmlGpuFabricInfoV_t = pynvml.c_nvmlGpuFabricInfo_v2_t
    c_nvmlGpuFabricInfo_v2_t = None
    c_nvmlGpuFabricInfo_v3_t = None
    NVML_FI_DEV_GET_GPU_RECOVERY_ACTION = None


def test_older_bindings_keep_fabric_health_and_the_recovery_action(monkeypatch):
    snap = Snapshot.load(NVML_FIXTURES / "h100-recovery-reboot.json")
    data = snap.to_dict()
    data["gpus"][1]["fabric"]["healthMask"] = 0x11  # DEGRADED_BW_TRUE | ROUTE_UNHEALTHY_TRUE
    snap = Snapshot.from_dict(data)
    got = _collect_with(monkeypatch, OldBindingsNvml(snap, fabric_v3=False))
    assert got.gpus[1].fabric.healthMask == 0x11  # not dropped by the unversioned fallback
    assert got.gpus[2].recovery_action == 2  # asked by field number, not by pynvml's name


def test_the_nvlink_count_field_bounds_the_links_asked(monkeypatch):
    snap = Snapshot.load(NVML_FIXTURES / "h100-healthy.json")
    fake = FakeNvml(snap)
    fake.answers_link_count = True
    notes: list[str] = []
    progress.set_sink(notes.append)
    try:
        got = _collect_with(monkeypatch, fake)
    finally:
        progress.set_sink(None)
    assert _comparable(got) == _comparable(snap)
    assert "nvmlDeviceGetNvLinkState gpu0 link17" in notes
    assert "nvmlDeviceGetNvLinkState gpu0 link18" not in notes  # 36 without the count


def test_blackwell_counters_come_from_the_per_link_fields(monkeypatch):
    """No legacy counter (NOT_SUPPORTED, as on Blackwell): one field-values call per link
    reads the counters NVML has there; the ones it has not keep their error."""
    data = Snapshot.load(NVML_FIXTURES / "h100-healthy.json").to_dict()
    not_supported = {"code": 3}
    for link in data["gpus"][0]["nvlinks"]:
        link["counters"] = {"link_recovery_failed": 0, "symbol_errors": 12, "replay": 4}
        link["errors"] = {
            name: not_supported
            for name in model.NVLINK_COUNTER_BY_NAME
            if name not in link["counters"]
        }
    snap = Snapshot.from_dict(data)
    fake = FakeNvml(snap)
    fake.legacy_counters = False
    got = _collect_with(monkeypatch, fake)
    assert got.gpus[0].nvlinks == snap.gpus[0].nvlinks
    assert got.gpus[0].nvlinks[3].counters["replay"] == 4  # NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY


@pytest.mark.parametrize("path", ALL_FIXTURES, ids=lambda p: p.stem)
def test_generated_fixtures_say_they_were_generated(path):
    """make_fixtures.py models its nodes: its files must not pass for recordings (those come
    from tools/record-nvml-snapshot.py, source "recorded"), and must be what it writes now."""
    import importlib.util

    data = json.loads(path.read_text())
    assert data["source"].startswith("generated by tests/fixtures/nvml/make_fixtures.py")
    assert data["comment"].startswith("generated from ")
    spec = importlib.util.spec_from_file_location(
        "make_fixtures", NVML_FIXTURES / "make_fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build()[path.stem]
    assert data["comment"].endswith(built["comment"]) and data["source"] == built["source"]
