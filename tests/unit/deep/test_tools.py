"""perftest, nccl-tests and dcgmi parsers on real outputs; the runner with a fake binary
at the boundary that prints one of those real outputs."""

from __future__ import annotations

import os
import stat
import sys
import time
from pathlib import Path

import pytest

from nodecheck.probes.active import tools

REAL = Path(__file__).resolve().parents[2] / "fixtures" / "real" / "deep"


def text(name: str) -> str:
    return (REAL / name).read_text()


def test_every_fixture_is_listed_with_its_source():
    listed = (REAL / "README.md").read_text()
    for path in REAL.iterdir():
        if path.name != "README.md":
            assert f"`{path.name}`" in listed, path.name


def test_ib_write_bw_rows_in_gbits():
    rows = tools.parse_perftest_bw(text("ib_write_bw-ib-report_gbits.txt"))
    assert [(r.nbytes, r.iterations) for r in rows] == [(2, 5000), (4, 5000), (8, 5000)]
    assert rows[0].peak_gbps == pytest.approx(0.042350)
    assert rows[-1].average_gbps == pytest.approx(0.17)
    [row] = tools.parse_perftest_bw(text("ib_write_bw-postlist-roce.txt"))
    assert (row.nbytes, row.iterations, row.average_gbps) == (8, 224958464, 0.48)
    assert row.msg_rate_mpps == pytest.approx(7.498617)


def test_ib_write_bw_in_mb_per_second_is_converted():
    out = text("ib_write_bw-postlist-roce.txt").replace("[Gb/sec]", "[MB/sec]")
    [row] = tools.parse_perftest_bw(out)
    assert row.average_gbps == pytest.approx(0.48 * 8 * 1024 * 1024 / 1e9)


def test_ib_lat_row_survives_the_cpu_frequency_warnings():
    [row] = tools.parse_perftest_lat(text("ib_read_lat-roce.txt"))
    assert (row.nbytes, row.iterations) == (2, 1000)
    assert row.usec == {"t_min": 6.88, "t_max": 16.81, "t_typical": 7.04, "t_avg": 7.06,
                        "t_stdev": 0.31, "p99": 7.38, "p999": 16.81}  # fmt: skip


def test_nccl_tests_rows_average_and_validation():
    result = tools.parse_nccl_tests(text("all_reduce_perf-a800-24ranks.txt"))
    assert result.avg_busbw == pytest.approx(41.6967)
    assert result.out_of_bounds == 0 and result.wrong == 0
    assert [r.nbytes for r in result.rows] == [536870912, 1073741824, 2147483648]
    assert result.rows[-1].busbw_oop == 42.31 and result.rows[-1].busbw_ip == 42.34


def test_nccl_tests_wrong_results_are_counted():
    out = text("all_reduce_perf-a800-24ranks.txt").replace("41.57      0", "41.57      3", 1)
    assert tools.parse_nccl_tests(out).wrong == 3


def test_dcgm_3x_json_with_noise_and_nulls():
    results, meta = tools.parse_dcgm(text("dcgmi-diag-v3-8gpu-pass.json"))
    assert meta["version"] == "3.1.0"
    assert {r.status for r in results} == {"PASS"}
    assert [r.component for r in results if r.test == "software"] == [f"gpu{i}" for i in range(8)]
    assert {r.component for r in results if r.category == "Deployment"} == {"node"}


def test_dcgm_4x_json_entities():
    results, _ = tools.parse_dcgm(text("dcgmi-diag-v4-8gpu-diagnostic.json"))
    assert [(r.test, r.component, r.status) for r in results][:2] == [
        ("diagnostic", "gpu0", "PASS"), ("diagnostic", "gpu1", "PASS"),
    ]  # fmt: skip
    assert len(results) == 8


def test_dcgm_failure_names_the_gpu_and_keeps_the_warning():
    results, _ = tools.parse_dcgm(text("dcgmi-diag-v3-gpu0-memory-fail.json"))
    memory = {r.component: r for r in results if r.test == "GPU Memory"}
    assert memory["gpu0"].status == "FAIL" and memory["gpu1"].status == "PASS"
    assert "cuCtxCreate" in memory["gpu0"].warnings[0]


def test_dcgm_output_without_json_is_an_error():
    with pytest.raises(ValueError, match="no JSON"):
        tools.parse_dcgm("Error: unable to establish a connection to the specified host")


def fake_tool(tmp_path: Path, body: str, name: str = "fake-tool") -> str:
    script = tmp_path / name
    script.write_text(f"#!{sys.executable}\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_runner_passes_arguments_as_a_list_and_reads_the_real_output(tmp_path):
    fixture = REAL / "all_reduce_perf-a800-24ranks.txt"
    binary = fake_tool(tmp_path, f"import sys\nassert sys.argv[1:] == ['-b', '8; rm -rf /']\n"
                                 f"print(open({str(fixture)!r}).read())")  # fmt: skip
    ran = tools.run([binary, "-b", "8; rm -rf /"], timeout_s=20)
    assert ran.returncode == 0 and not ran.timed_out
    assert tools.parse_nccl_tests(ran.stdout).avg_busbw == pytest.approx(41.6967)


def test_runner_kills_the_tool_and_its_children_at_the_deadline(tmp_path):
    pidfile = tmp_path / "child.pid"
    binary = fake_tool(tmp_path, "import os, subprocess, time\n"
                       f"child = subprocess.Popen(['sleep', '60'])\n"
                       f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
                       "time.sleep(60)")  # fmt: skip
    ran = tools.run([binary], timeout_s=1.5)
    assert ran.timed_out
    child = int(pidfile.read_text())
    for _ in range(50):  # the child is killed with the session; wait for it to be reaped
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                break
        time.sleep(0.1)
    else:
        pytest.fail("the tool's child outlived the deadline")


def test_runner_refuses_a_relative_path():
    with pytest.raises(ValueError, match="absolute"):
        tools.run(["dcgmi", "diag"], timeout_s=1)
