import contextlib
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import make_ctx, options_of

from nodecheck.checks.context import JobInfo
from nodecheck.checks.host import mounts as host_mounts
from nodecheck.checks.registry import all_checks
from nodecheck.core.results import Status
from nodecheck.probes import host as host_probe

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
    release, answered = threading.Event(), threading.Event()

    def hung_statvfs(path):
        release.wait(30)  # a dead NFS server: no answer until the test lets go
        answered.set()

    monkeypatch.setattr(host_mounts.os, "statvfs", hung_statvfs)
    try:
        [hung] = run("host.mounts", proc, required=["/home"], probe_timeout_s=0.3)
        # The verdict came while the stat was still stuck: the check did not wait for it.
        assert not answered.is_set()
    finally:
        release.set()
    assert hung.status is Status.FAIL and "not responding within 0.3s" in hung.message


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


CGROUPS = Path(__file__).resolve().parents[1] / "fixtures" / "real" / "cgroup"
V2_LINE = (CGROUPS / "v2-job-step0-task0.txt").read_text()  # job_1392969
V1_LINE = (CGROUPS / "v1-devices-job-interactive.txt").read_text()  # uid_2101171, job_280678


def v2_job(job_id: str, node: str | None = None) -> str:
    scope = f"{node}_slurmstepd.scope" if node else "slurmstepd.scope"
    return V2_LINE.replace("job_1392969", f"job_{job_id}").replace("slurmstepd.scope", scope)


def v1_job(job_id: str, node: str | None = None) -> str:
    line = V1_LINE.replace("job_280678", f"job_{job_id}")
    return line.replace("/slurm/", f"/slurm_{node}/") if node else line


def fake_pid(proc, pid, ppid, uid, comm, env=b"", state="S", cgroup="0::/user.slice\n"):
    """/proc/PID as the kernel lays it out (proc(5)): stat with all 52 fields (starttime,
    field 22, in clock ticks after boot), status, comm, environ and cgroup."""
    d = proc / str(pid)
    d.mkdir()
    fields = [state, ppid, pid, pid, 0, -1, 4194560] + [0] * 12 + [1000 + pid] + [0] * 30
    (d / "stat").write_text(f"{pid} ({comm}) {' '.join(map(str, fields))}\n")
    (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
    (d / "comm").write_text(f"{comm}\n")
    (d / "environ").write_bytes(env)
    (d / "cgroup").write_text(cgroup)
    if not (proc / "stat").exists():
        (proc / "stat").write_text("cpu  0 0 0 0 0 0 0 0 0 0\nbtime 1764590000\n")


def slurm_cgroups(tmp_path, version):
    """A /sys whose cgroup mount shows Slurm's hierarchy (proctrack/cgroup)."""
    sys_root = tmp_path / "sys"
    where = "system.slice/slurmstepd.scope" if version == 2 else "freezer/slurm"
    (sys_root / "fs" / "cgroup" / where).mkdir(parents=True)
    return sys_root


def run_procs(proc, sys_root, job, **options):
    chk = REGISTRY["host.procs"]
    ctx = make_ctx(
        phase="epilog",
        options=options_of(chk, **{"grace_s": 0, **options}),
        job=job,
        procfs_root=proc,
        sysfs_root=sys_root,
    )
    return list(chk.func(ctx))


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


@pytest.mark.parametrize("version", [1, 2])
def test_procs_finds_leftovers_of_this_job_by_its_cgroup(proc, tmp_path, version):
    job_cgroup = v2_job if version == 2 else v1_job
    sys_root = slurm_cgroups(tmp_path, version)
    job = JobInfo(job_id="812", uid=1000, user="alice")
    fake_pid(proc, 200, 1, 1000, "python", cgroup=job_cgroup("812"))
    fake_pid(proc, 201, 1, 1000, "sleep", cgroup=job_cgroup("811"))  # another job's
    fake_pid(proc, 202, 1, 1000, "zombie", cgroup=job_cgroup("812"), state="Z")
    fake_pid(proc, 203, 1, 1000, "tmux")  # the user's, in no job
    # job 812 of another node sharing this host (several slurmd), and of this node (n1)
    fake_pid(proc, 204, 1, 1000, "python", cgroup=job_cgroup("812", node="n2"))
    fake_pid(proc, 205, 1, 1000, "python", cgroup=job_cgroup("812", node="n1"))
    # a user's process that claims the job in its environment (the user writes that)
    fake_pid(proc, 206, 1, 1001, "fake", env=b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n1\0")
    [res] = run_procs(proc, sys_root, job)
    assert res.status is Status.FAIL
    assert sorted(res.values["pids"]) == [200, 205]
    assert res.values["matched_by"] == "cgroup"
    assert "2 processes left after job 812: 200 python, 205 python" in res.message
    [by_user] = run_procs(proc, sys_root, job, match="user")
    assert sorted(by_user.values["pids"]) == [200, 201, 203, 204, 205]


def test_a_faked_job_id_in_the_environment_drains_nothing(proc, tmp_path):
    """A local user cannot make a co-located job's epilog fail by putting its id in the
    environment of a process of their own."""
    sys_root = slurm_cgroups(tmp_path, 2)
    job = JobInfo(job_id="812", uid=1000, user="alice")
    fake_pid(proc, 300, 1, 1001, "sleep", env=b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n1\0")
    [res] = run_procs(proc, sys_root, job)
    assert res.status is Status.PASS


def test_without_slurm_cgroups_the_jobs_user_and_id_count(proc, tmp_path, monkeypatch):
    """proctrack/linuxproc: no cgroup names the job. A leftover is a process of the job's
    user that carries the job's id (on this node and cluster); the same id in another
    user's process is that user's forgery and counts for nothing."""
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    job = JobInfo(job_id="812", uid=1000, user="alice")
    no_sys = tmp_path / "no-sys"
    fake_pid(proc, 400, 1, 1000, "python", env=b"HOME=/x\0SLURM_JOB_ID=812\0")
    fake_pid(proc, 401, 1, 1001, "fake", env=b"SLURM_JOB_ID=812\0")  # another user's
    fake_pid(proc, 402, 1, 1000, "sleep", env=b"SLURM_JOB_ID=811\0")  # another job's
    fake_pid(proc, 403, 1, 1000, "tmux")  # the user's, no job
    fake_pid(proc, 404, 1, 1000, "python", env=b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n2\0")
    fake_pid(proc, 405, 1, 1000, "python", env=b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n1\0")
    other_cluster = b"SLURM_JOB_ID=812\0SLURMD_NODENAME=n1\0SLURM_CONF=/other/slurm.conf\0"
    fake_pid(proc, 406, 1, 1000, "python", env=other_cluster)
    [res] = run_procs(proc, no_sys, job)
    assert sorted(res.values["pids"]) == [400, 405]
    assert res.values["matched_by"] == "uid+environ"
    [by_user] = run_procs(proc, no_sys, job, match="user")
    assert sorted(by_user.values["pids"]) == [400, 402, 403, 404, 405, 406]
    [skip] = run_procs(proc, no_sys, JobInfo(job_id="812"))
    assert skip.status is Status.SKIP  # no cgroups and no uid: nothing to go by


def test_procs_spares_the_hook_process_the_agent_runs_for(proc, tmp_path):
    """Through the agent, the epilog Slurm started (the agent client, carrying the job's
    environment) is no ancestor of the probe: hook_pid names it as ours."""
    job = JobInfo(job_id="812", uid=0, user="root")
    fake_pid(proc, 250, 1, 0, "slurmd")
    fake_pid(proc, 300, 250, 0, "python3", env=b"SLURM_JOB_ID=812\0")  # the client
    fake_pid(proc, 301, 1, 0, "python", env=b"SLURM_JOB_ID=812\0")  # a real leftover
    chk = REGISTRY["host.procs"]
    ctx = make_ctx(
        phase="epilog",
        options=options_of(chk, grace_s=0),
        job=job,
        procfs_root=proc,
        sysfs_root=tmp_path / "no-sys",
    )
    [unaware] = chk.func(ctx)
    assert sorted(unaware.values["pids"]) == [300, 301]
    [res] = chk.func(replace(ctx, hook_pid=300))
    assert res.values["pids"] == [301]


def test_slurm_cgroup_lines_name_their_job():
    assert host_probe.slurm_job_of(V2_LINE) == host_probe.JobCgroup("1392969", None)
    assert host_probe.slurm_job_of(V1_LINE) == host_probe.JobCgroup("280678", None)
    assert host_probe.slurm_job_of(v2_job("7", "n1")) == host_probe.JobCgroup("7", "n1")
    assert host_probe.slurm_job_of(v1_job("7", "n1")) == host_probe.JobCgroup("7", "n1")
    for other in ("0::/user.slice/user-1000.slice/session-3.scope\n", "0::/job_5/x\n", ""):
        assert host_probe.slurm_job_of(other) is None


def test_procs_skip_without_job(proc):
    [res] = run("host.procs", proc, job=JobInfo(), phase="epilog")
    assert res.status is Status.SKIP


def test_procs_on_real_proc_ignores_our_own_tree_and_sees_a_stray(tmp_path, monkeypatch):
    """The real kernel's /proc: a stray of the job's user (here `nobody`) with the job's
    id, daemonised by a double fork, is found under proctrack/linuxproc (this machine has
    no Slurm cgroups)."""
    nobody = 65534
    out = subprocess.run(
        ["/bin/sh", "-c", "/bin/sleep 30 >/dev/null 2>&1 & echo $!"],
        user=nobody,
        env={"SLURM_JOB_ID": "900001"},
        capture_output=True,
        text=True,
        check=True,
    )
    stray = int(out.stdout)
    job = JobInfo(job_id="900001", uid=nobody)
    monkeypatch.setenv("SLURM_JOB_ID", "900001")
    try:
        [res] = run_procs(Path("/proc"), tmp_path / "no-sys", job)
        assert res.status is Status.FAIL
        assert res.values["pids"] == [stray]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stray, 9)
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{stray}") and time.monotonic() < deadline:
            time.sleep(0.05)
