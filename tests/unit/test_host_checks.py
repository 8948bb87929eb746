import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from helpers import make_ctx, options_of

from nodecheck.checks.context import JobInfo
from nodecheck.checks.host import mounts as host_mounts
from nodecheck.checks.registry import all_checks
from nodecheck.run.results import Status

REGISTRY = all_checks()


def run(check_id, tmp_proc=None, job=None, phase="prolog", **options):
    chk = REGISTRY[check_id]
    ctx = make_ctx(
        phase=phase,
        options=options_of(chk, **options),
        job=job,
        procfs_root=tmp_proc or make_ctx().settings.procfs_root,
    )
    return list(chk.func(ctx))


MEMINFO = """MemTotal:       2113928192 kB
MemFree:        2000000000 kB
MemAvailable:   {avail} kB
Buffers:          123456 kB
HugePages_Total:       0
"""


@pytest.fixture
def proc(tmp_path):
    (tmp_path / "self").mkdir()
    return tmp_path


def test_mem_pass_and_lost_dimm(proc):
    (proc / "meminfo").write_text(MEMINFO.format(avail=2000000000))
    [ok] = run("host.mem", proc, min_total_gib=1900)
    assert ok.status is Status.PASS
    assert ok.values["total_gib"] == pytest.approx(2016.0, abs=1)
    [lost] = run("host.mem", proc, min_total_gib=2048)
    assert lost.status is Status.FAIL and "lost DIMM" in lost.message


def test_mem_available_thresholds(proc):
    (proc / "meminfo").write_text(MEMINFO.format(avail=10 * 1024 * 1024))
    [fail] = run("host.mem", proc, min_available_gib=64)
    assert fail.status is Status.FAIL and "only 10.0 GiB available" in fail.message
    [warn] = run("host.mem", proc, warn_available_gib=64)
    assert warn.status is Status.WARN


MOUNTS = """sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
nfs01:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
/dev/md0 /scratch xfs ro,relatime 0 0
/dev/sdb1 /mnt/with\\040space ext4 rw 0 0
"""


def test_mounts_missing_wrong_type_readonly(proc, tmp_path):
    (proc / "self" / "mounts").write_text(MOUNTS)
    results = run(
        "host.mounts",
        proc,
        required=["/home", "/scratch", "/lustre", "/mnt/with space"],
        fstypes={"/home": "lustre"},
        read_write=["/scratch"],
    )
    by = {r.component: r for r in results}
    assert by["/lustre"].status is Status.FAIL and by["/lustre"].message == "not mounted"
    assert by["/home"].message == "mounted as nfs4, expected lustre"
    assert by["/scratch"].message == "mounted read-only"
    # present in the table; the statvfs of this test path itself does not exist here
    assert by["/mnt/with space"].status is Status.FAIL
    assert "stat failed" in by["/mnt/with space"].message


def test_mount_that_hangs_is_reported_within_its_timeout(proc, monkeypatch):
    (proc / "self" / "mounts").write_text("nfs:/x /home nfs4 rw 0 0\n")
    monkeypatch.setattr(host_mounts.os, "statvfs", lambda p: time.sleep(30))
    started = time.monotonic()
    [hung] = run("host.mounts", proc, required=["/home"], probe_timeout_s=0.3)
    assert hung.status is Status.FAIL and "not responding within 0.3s" in hung.message
    assert time.monotonic() - started < 2


def test_mounts_pass_on_real_root():
    [root] = run("host.mounts", None, required=["/"])
    assert root.status is Status.PASS


def test_disk_thresholds(tmp_path):
    [ok] = run("host.disk", None, min_free_gib={str(tmp_path): 0.001})
    assert ok.status is Status.PASS and ok.component == str(tmp_path)
    [full] = run("host.disk", None, min_free_gib={str(tmp_path): 10**9})
    assert full.status is Status.FAIL and "need 1000000000 GiB" in full.message
    [missing] = run("host.disk", None, min_free_gib={"/no/such/dir": 1})
    assert missing.status is Status.FAIL and "cannot stat" in missing.message


def fake_pid(proc, pid, ppid, uid, comm, env=b"", state="S"):
    d = proc / str(pid)
    d.mkdir()
    (d / "stat").write_text(f"{pid} ({comm}) {state} {ppid} {pid} {pid} 0 -1 4194560\n")
    (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "environ").write_bytes(env)


def test_services(proc):
    fake_pid(proc, 100, 1, 0, "munged")
    fake_pid(proc, 101, 1, 0, "nv-fabricmanage")  # comm is cut at 15 characters
    fake_pid(proc, 102, 1, 0, "slurmd", state="Z")
    results = run("host.services", proc, required=["munged", "nv-fabricmanager", "slurmd"])
    assert [(r.component, r.status) for r in results] == [
        ("munged", Status.PASS),
        ("nv-fabricmanager", Status.PASS),
        ("slurmd", Status.FAIL),
    ]


def test_procs_finds_leftovers_of_this_job_only(proc, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    job = JobInfo(job_id="812", uid=1000, user="alice")
    fake_pid(proc, 200, 1, 1000, "python", env=b"HOME=/x\0SLURM_JOB_ID=812\0")
    fake_pid(proc, 201, 1, 1000, "sleep", env=b"SLURM_JOB_ID=811\0")  # another job's
    fake_pid(proc, 202, 1, 1000, "zombie", env=b"SLURM_JOB_ID=812\0", state="Z")
    fake_pid(proc, 203, 1, 1000, "tmux")  # user's, no job env
    # same job id, but a step of it on another node sharing this host (multiple slurmd)
    fake_pid(proc, 204, 1, 1000, "python", env=b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n2\0")
    fake_pid(proc, 205, 1, 1000, "python", env=b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n1\0")
    # same job id and node name, but another cluster's slurmd on this host
    fake_pid(
        proc,
        206,
        1,
        1000,
        "python",
        env=b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n1\0SLURM_CONF=/other/slurm.conf\0",
    )
    [res] = run("host.procs", proc, job=job, phase="epilog", grace_s=0)
    assert res.status is Status.FAIL
    assert sorted(res.values["pids"]) == [200, 205]
    assert "2 processes left after job 812: 200 python, 205 python" in res.message
    [by_user] = run("host.procs", proc, job=job, phase="epilog", grace_s=0, match="user")
    assert sorted(by_user.values["pids"]) == [200, 201, 203, 204, 205, 206]


def test_procs_spares_the_hook_process_the_agent_runs_for(proc):
    """Through the agent, the epilog Slurm started (the agent client, carrying the job's
    environment) is no ancestor of the probe: hook_pid names it as ours."""
    job = JobInfo(job_id="812", uid=1000, user="alice")
    fake_pid(proc, 250, 1, 0, "slurmd")
    fake_pid(proc, 300, 250, 0, "python3", env=b"SLURM_JOB_ID=812\0")  # the client
    fake_pid(proc, 301, 1, 1000, "python", env=b"SLURM_JOB_ID=812\0")  # a real leftover
    chk = REGISTRY["host.procs"]
    ctx = make_ctx(phase="epilog", options=options_of(chk, grace_s=0), job=job, procfs_root=proc)
    [unaware] = chk.func(ctx)
    assert sorted(unaware.values["pids"]) == [300, 301]
    [res] = chk.func(replace(ctx, hook_pid=300))
    assert res.values["pids"] == [301]


def test_procs_skip_without_job(proc):
    [res] = run("host.procs", proc, job=JobInfo(), phase="epilog")
    assert res.status is Status.SKIP


def test_procs_on_real_proc_ignores_our_own_tree_and_sees_a_stray():
    job_id = str(900000 + os.getpid() % 1000)
    env = {**os.environ, "SLURM_JOB_ID": job_id}
    # Double fork, as a daemonising job step would: the stray is no descendant of ours.
    out = subprocess.run(
        [
            "/bin/sh",
            "-c",
            f"{sys.executable} -c 'import time; time.sleep(30)' >/dev/null 2>&1 & echo $!",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    stray = int(out.stdout)
    job = JobInfo(job_id=job_id, uid=os.getuid())
    try:
        [res] = run("host.procs", None, job=job, phase="epilog", grace_s=0)
        assert res.status is Status.FAIL
        assert res.values["pids"] == [stray]
    finally:
        os.kill(stray, 9)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{stray}") and time.monotonic() < deadline:
            time.sleep(0.05)
    [clean] = run("host.procs", None, job=job, phase="epilog", grace_s=0)
    assert clean.status is Status.PASS
