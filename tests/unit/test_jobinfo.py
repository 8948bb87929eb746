from nodecheck.checks.context import JobInfo
from nodecheck.hostlist import is_plain_node_name


def test_job_env_is_read():
    job = JobInfo.from_env(
        {
            "SLURM_JOB_ID": "812",
            "SLURM_JOB_UID": "1000",
            "SLURM_JOB_USER": "alice",
            "SLURM_JOB_GPUS": "0,1,3",
            "SLURM_NODELIST": "gpu[001-004]",
        }
    )
    assert (job.job_id, job.uid, job.user, job.gpus, job.nodelist) == (
        "812",
        1000,
        "alice",
        (0, 1, 3),
        "gpu[001-004]",
    )
    assert job.ignored == ()


def test_hostile_env_values_are_ignored_and_named():
    job = JobInfo.from_env(
        {
            "SLURM_JOB_ID": "812; reboot",
            "SLURM_JOB_UID": "-1",
            "SLURM_JOB_USER": "alice$(id)",
            "SLURM_JOB_GPUS": "0,x",
            "SLURM_NODELIST": "n1\nn2",
        }
    )
    assert (job.job_id, job.uid, job.user, job.gpus, job.nodelist) == (None,) * 5
    assert set(job.ignored) == {
        "SLURM_JOB_ID",
        "SLURM_JOB_UID",
        "SLURM_JOB_USER",
        "SLURM_JOB_GPUS",
        "SLURM_NODELIST",
    }


def test_a_trailing_newline_is_not_a_valid_value():
    # `$` in re.match matches before a final newline; the values must match whole.
    job = JobInfo.from_env(
        {
            "SLURM_JOB_ID": "4242\n",
            "SLURM_JOB_UID": "1000\n",
            "SLURM_JOB_USER": "alice\n",
            "SLURM_JOB_GPUS": "0,1\n",
            "SLURM_NODELIST": "n[1-2]\n",
        }
    )
    assert (job.job_id, job.uid, job.user, job.gpus, job.nodelist) == (None,) * 5
    assert len(job.ignored) == 5


def test_node_names_match_whole():
    assert is_plain_node_name("n2")
    assert not is_plain_node_name("n2\n")
    assert not is_plain_node_name("n2\nn3")
