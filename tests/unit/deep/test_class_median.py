"""Deep-tier figures against the node class's median (checks/trend/class_median.py), the
sacct reader (slurm/dbd.py) and validate-job's step (quarantine/job.py).

The deep results are test_baseline.py's: the deep checks' own judging code in the shapes
`nodecheck run --tier deep --json` shows, H100 SXM figures at the datasheet shares healthy
parts give. The sacct lines are in the shape `sacct -n -P -X --format=NodeList,End,
AdminComment` prints (tests/integration/test_class_median_dbd.py reads real ones).
"""

from __future__ import annotations

import pytest

from nodecheck.checks.trend import baseline, class_median
from nodecheck.checks.trend.class_median import (
    MARK,
    MAX_FIGURES_TEXT,
    ClassLimits,
    Published,
    class_figures,
    judge_figure,
    node_figures,
    parse_figures,
    publish,
    why_of,
    with_figures,
)
from nodecheck.core.reason import parse_reason
from nodecheck.core.results import Status
from nodecheck.quarantine.ladder import Step, ValidationHistory, decide_after_validation
from tests.unit.deep.test_baseline import deep_results

LIMITS = ClassLimits(warn_drop=0.10, fail_drop=0.25, min_nodes=3, window_days=30)
GEMM = "deep.gemm:bf16 GEMM"


def published_by(slow: dict[str, float] | None = None) -> str:
    """What a validation with these deep results writes into its AdminComment."""
    return publish(node_figures(baseline.figures_of(deep_results(slow))))


# --- publish and parse --------------------------------------------------------------------


def test_a_node_publishes_the_median_of_its_gpus_per_figure_and_reads_back_the_same():
    text = published_by({"gpu3": 0.5})  # one slow GPU of four does not move the median
    assert text.startswith(MARK) and "\n" not in text and len(text) <= MAX_FIGURES_TEXT
    figures = parse_figures(text)
    assert set(figures) == {f.series for f in baseline.figures_of(deep_results())}
    healthy = parse_figures(published_by())
    assert figures[GEMM] == pytest.approx(healthy[GEMM]) == pytest.approx(989.5 * 0.72, rel=1e-3)
    assert figures["deep.p2p:peer copy (both ways)"] == pytest.approx(720.0)
    # the round trip loses nothing but digits past the fourth
    exact = node_figures(baseline.figures_of(deep_results()))
    assert parse_figures(publish(exact)) == pytest.approx(exact, rel=1e-3)


def test_nothing_measured_publishes_nothing_and_the_figures_part_is_bounded():
    assert publish({}) == "" and with_figures("", "") == ""
    many = {f"deep.gemm:metric number {i}": 100.0 + i for i in range(100)}
    text = publish(many)
    assert len(text) <= MAX_FIGURES_TEXT
    kept = parse_figures(text)
    assert 10 < len(kept) < 100 and all(many[k] == v for k, v in kept.items())  # whole entries
    odd = {"deep.gemm:a=b": 1.0, "deep.gemm:a;b": 1.0, "nocolon": 1.0,
           "deep.gemm:nan": float("nan"), "deep.gemm:zero": 0.0, "deep.gemm:ok": 2.0}  # fmt: skip
    assert parse_figures(publish(odd)) == {"deep.gemm:ok": 2.0}


@pytest.mark.parametrize(
    "comment",
    [
        "",
        "not validated: deep.gemm gpu0: no PyTorch",  # a why, no figures
        "nodecheck figures v1: ",  # the mark alone
        "nodecheck figures v1: deep.gemm:bf16 GEMM=fast",
        "nodecheck figures v1: deep.gemm:bf16 GEMM=700;",  # cut after an entry
        "nodecheck figures v1: deep.gemm:bf16 GEMM=700;deep.membw:memory copy",
        "nodecheck figures v1: deep.gemm:bf16 GEMM=-700",
        "nodecheck figures v1: deep.gemm:bf16 GEMM=inf",
        "nodecheck figures v1: bf16 GEMM=700",  # no check
        "nodecheck figures v2: deep.gemm:bf16 GEMM=700",  # a version this one does not know
        "admin: RMA 44 nodecheck figures v1:deep.gemm:bf16 GEMM=700",  # no space after the mark
    ],
)
def test_a_malformed_comment_contributes_nothing(comment: str):
    assert parse_figures(comment) == {}


def test_the_why_and_the_figures_share_one_comment_and_the_why_reads_back_unchanged():
    why = "not validated: deep.membw gpu1: memory copy: not measured: CUDA error: out of memory"
    figures = published_by()
    comment = with_figures(why, figures)
    assert comment.startswith(why) and comment.endswith(figures) and "\n" not in comment
    assert why_of(comment) == why
    assert parse_figures(comment) == parse_figures(figures)
    assert why_of(why) == why and why_of(figures) == "" and why_of("") == ""
    assert why_of(f"{why} nodecheck figures v7: x") == why  # a newer job's figures, too


def test_the_loop_reads_the_same_why_with_the_figures_as_without():
    """quarantine/follow.py: a validation that could not run says why in its AdminComment;
    the loop's result line is the same whether the node's figures follow it or not."""
    from nodecheck.quarantine.follow import Move, next_step
    from nodecheck.quarantine.job import EXIT_NOT_VALIDATED
    from nodecheck.quarantine.validation import NodeValidation, Phase
    from nodecheck.slurm.job_json import JobRecord

    why = "not validated: deep.membw gpu1: memory copy: not measured: CUDA error; install it"

    def result(comment: str) -> str:
        job = JobRecord(1, "nodecheck-validate", "FAILED", "None", 1, 0, EXIT_NOT_VALIDATED,
                        "n1", admin_comment=comment)  # fmt: skip
        step = next_step(NodeValidation("n1", jobs=[1], phase=Phase.VALIDATING), job, None)
        assert step.move is Move.FINISH
        return step.result

    assert result(with_figures(why, published_by())) == result(why)
    assert result(why) == "not validated: deep.membw gpu1: memory copy: not measured: " + (
        "CUDA error; install it"
    )
    # only figures (no why): the loop's own words, as when the comment was empty
    assert result(published_by()) == result("")


# --- the class's figures ------------------------------------------------------------------


def test_the_newest_figures_per_node_of_the_class_other_than_this_one():
    good, slow = published_by(), published_by({f"gpu{i}": 0.2 for i in range(4)})
    records = [
        ("n1", 100.0, good),  # this node: never its own reference
        ("n2", 100.0, slow),
        ("n2", 200.0, good),  # newer: this one counts
        ("n3", 300.0, good),
        ("n3", 250.0, slow),
        ("n4", 100.0, "nodecheck figures v1: deep.gemm:bf16 GEMM=lots"),  # malformed
        ("n5", 100.0, "admin comment of someone else"),
        ("m1", 100.0, good),  # another class
    ]
    got = class_figures(records, "n1", lambda n: n.startswith("n"))
    assert [(p.node, p.end) for p in got] == [("n2", 200.0), ("n3", 300.0)]
    assert got[0].figures == parse_figures(good)


# --- the judgement ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "others", "level"),
    [
        (700.0, [], "few"),
        (300.0, [700.0, 710.0], "few"),  # two other nodes: fewer than min_nodes
        (700.0, [700.0, 710.0, 690.0], "ok"),
        (800.0, [700.0, 710.0, 690.0], "ok"),  # faster than the class is no fault
        (640.0, [700.0, 710.0, 690.0], "ok"),  # 8.6 % below
        (620.0, [700.0, 710.0, 690.0], "warn"),  # 11 % below
        (540.0, [700.0, 710.0, 690.0], "warn"),  # 23 %: within the class's wider fail_drop
        (520.0, [700.0, 710.0, 690.0], "fail"),  # 26 % below
        (520.0, [700.0, 700.0, 700.0, 100.0, 100.0], "fail"),  # the median, not the mean (540)
    ],
)
def test_judge_figure(value: float, others: list[float], level: str):
    assert judge_figure(value, others, LIMITS).level == level


def test_a_limit_of_zero_is_off():
    off = ClassLimits(0.0, 0.0, 3, 30)
    assert judge_figure(100.0, [700.0] * 3, off).level == "ok"


def test_each_gpu_against_the_class_median_results_named_as_the_baseline_and_drained_alike():
    healthy = Published("n2", 1.0, parse_figures(published_by()))
    others = [healthy, Published("n3", 1.0, healthy.figures), Published("n4", 1.0, healthy.figures)]
    results = class_median.compare(baseline.figures_of(deep_results({"gpu2": 0.3})), others, LIMITS)
    bad = {(r.check_id, r.component, r.values["metric"]): r.status for r in results
           if r.status is not Status.PASS}  # fmt: skip
    assert bad[("trend.deep_gemm", "gpu2/class", "bf16 GEMM")] is Status.FAIL
    assert {c for _, c, _ in bad} == {"gpu2/class"}  # the other GPUs are at the median
    fail = next(r for r in results if r.status is Status.FAIL)
    assert "30% below its class median" in fail.message and "(3 nodes)" in fail.message
    decision = decide_after_validation(results, ValidationHistory(0, False), ("drain",), "41")
    assert decision.step is Step.DRAIN
    assert decision.reason == (  # docs/operations.md shows it
        "nodecheck: trend deep.gemm gpu2/class: bf16 GEMM 499 TFLOP/s, 30% below its class "
        "median 712 (3 nodes); more than 25% below (+5 more) [validate job 41 sev=medium act=admin]"
    )
    parsed = parse_reason(decision.reason or "")
    assert parsed is not None and parsed.check_id.startswith("trend.deep_")
    assert parsed.component == "gpu2/class"
    # two other nodes only: nothing judged, all pass
    few = class_median.compare(baseline.figures_of(deep_results({"gpu2": 0.3})), others[:2], LIMITS)
    assert {r.status for r in few} == {Status.PASS}
    assert {r.values["level"] for r in few} == {"few"}


# --- the sacct reader (slurm/dbd.py) ------------------------------------------------------


def test_the_reader_asks_one_bounded_sacct_and_keeps_the_newest_comment_per_node():
    from nodecheck.slurm import SlurmError
    from nodecheck.slurm.dbd import parse_validation_comments, validation_comment_args

    args = validation_comment_args("/usr/bin/sacct", "nodecheck-validate", start=0.0, end=86400.0)
    assert args[0] == "/usr/bin/sacct" and "--name=nodecheck-validate" in args
    assert "--state=COMPLETED" in args and "-a" in args and "-X" in args
    assert args[-1] == "--format=NodeList,End,AdminComment"  # the free text last
    with pytest.raises(SlurmError):
        validation_comment_args("sacct", "x,y --state=FAILED", start=0.0, end=1.0)
    figures = published_by()
    text = "\n".join(
        [
            f"n2|2026-12-01T10:00:00|{figures}",
            "n2|2026-12-02T10:00:00|nodecheck figures v1: deep.gemm:bf16 GEMM=700",
            f"n3|2026-12-01T10:00:00|{figures} | with a bar",
            "n4|2026-12-01T10:00:00|",  # passed, published nothing (a CPU-only node)
            f"n[5-6]|2026-12-01T10:00:00|{figures}",  # several nodes: a fabric stage's
            f"n7|Unknown|{figures}",
            "garbage",
        ]
    )
    got = parse_validation_comments(text)
    assert [(c.node, c.comment) for c in got] == [
        ("n2", "nodecheck figures v1: deep.gemm:bf16 GEMM=700"),
        ("n3", f"{figures} | with a bar"),
    ]


# --- the steps of validate-job (quarantine/job.py) ----------------------------------------

CLASSES = """
scontrol = "/opt/slurm/bin/scontrol"
[[node_class]]
name = "h100"
match = ["n1", "n2", "n3", "n4"]
[[node_class]]
name = "a100"
match = ["m1"]
"""


def _config(tmp_path, extra: str = ""):
    from nodecheck.checks.registry import all_checks
    from nodecheck.run.config import load_config

    path = tmp_path / "nodecheck.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n{extra}{CLASSES}')
    return load_config(str(path), {}, all_checks())


class FakeSacct:
    """slurm/dbd.py `read_validation_comments` as the job calls it: what it was asked."""

    def __init__(self, records=(), error: Exception | None = None) -> None:
        self.records, self.error, self.calls = list(records), error, []

    def __call__(self, sacct, slurm_conf, job_name, *, start, end, timeout_s=20.0):
        from nodecheck.slurm.dbd import JobComment

        self.calls.append((sacct, job_name, end - start))
        if self.error:
            raise self.error
        return [JobComment(n, e, c) for n, e, c in self.records]


JOB_ENV = {"SLURM_JOB_NAME": "nodecheck-validate", "SLURM_JOB_ID": "41"}


def test_validate_job_reads_its_class_once_and_hands_on_the_warn_and_fail(tmp_path, monkeypatch):
    from nodecheck.quarantine.job import _class_median

    good = published_by()
    fast = published_by({f"gpu{i}": -1.0 for i in range(4)})  # twice as fast: another class
    sacct = FakeSacct([("n1", 9.0, published_by({"gpu2": 0.3})), ("n2", 1.0, good),
                       ("n3", 1.0, good), ("n4", 1.0, good), ("m1", 1.0, fast),
                       ("m1", 2.0, fast)])  # fmt: skip
    monkeypatch.setattr("nodecheck.slurm.dbd.read_validation_comments", sacct)
    cfg = _config(tmp_path)
    kept = _class_median(cfg, "n1", deep_results({"gpu2": 0.3}), JOB_ENV)
    assert sacct.calls == [("/opt/slurm/bin/sacct", "nodecheck-validate", 30 * 86400.0)]
    assert kept and {r.component for r in kept} == {"gpu2/class"}
    assert {r.status for r in kept} == {Status.FAIL}
    assert {r.values["nodes"] for r in kept} == {3}  # n2-n4: not n1 itself, not m1
    assert _class_median(cfg, "n1", deep_results(), JOB_ENV) == []  # healthy: nothing kept
    # too few of the class published: nothing judged
    monkeypatch.setattr(
        "nodecheck.slurm.dbd.read_validation_comments", FakeSacct(sacct.records[:3])
    )
    assert _class_median(cfg, "n1", deep_results({"gpu2": 0.3}), JOB_ENV) == []
    # its settings are the config's
    wide = _config(
        tmp_path, "validate_class_median_fail_drop = 0.5\nvalidate_class_median_min_nodes = 2\n"
    )
    monkeypatch.setattr(
        "nodecheck.slurm.dbd.read_validation_comments", FakeSacct(sacct.records[:3])
    )
    assert {r.status for r in _class_median(wide, "n1", deep_results({"gpu2": 0.3}), JOB_ENV)} == {
        Status.WARN
    }


def test_without_slurmdbd_or_turned_off_the_class_is_not_compared(tmp_path, monkeypatch):
    """No accounting (sacct fails), no job name, or turned off: no result at all, never an
    ERROR (which would hold the validation back) nor a FAIL."""
    from nodecheck.quarantine.job import _class_median
    from nodecheck.slurm import SlurmError

    slow = deep_results({"gpu2": 0.5})
    down = FakeSacct(error=SlurmError("sacct failed (rc=1): Slurm accounting storage is disabled"))
    monkeypatch.setattr("nodecheck.slurm.dbd.read_validation_comments", down)
    assert _class_median(_config(tmp_path), "n1", slow, JOB_ENV) == []
    assert len(down.calls) == 1
    assert _class_median(_config(tmp_path), "n1", slow, {}) == []  # not in a Slurm job
    off = _config(tmp_path, "validate_class_median = false\n")
    assert _class_median(off, "n1", slow, JOB_ENV) == []
    assert len(down.calls) == 1  # neither asked sacct


def test_the_job_writes_its_why_and_its_figures_in_one_admin_comment(tmp_path, monkeypatch):
    from nodecheck.quarantine import job as validate_job
    from nodecheck.quarantine.ladder import Decision
    from nodecheck.slurm.jobs import SlurmJobs

    written: list[tuple[int, str]] = []
    monkeypatch.setattr(SlurmJobs, "note_on_job", lambda self, j, text: written.append((j, text)))
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    cfg = _config(tmp_path)
    figures = validate_job._published_figures(deep_results())
    assert figures == published_by()
    unvalidated = Decision(Step.NOT_VALIDATED, None, False, "not validated: deep.p2p gpu0: no")
    why = validate_job._why_note(unvalidated)
    assert why.startswith("not validated: deep.p2p gpu0: no; install")
    assert validate_job._why_note(Decision(Step.RETURN, None, False, "validation passed")) == ""
    validate_job._note_on_job(cfg, why, figures)
    validate_job._note_on_job(cfg, "", figures)
    validate_job._note_on_job(cfg, why)
    validate_job._note_on_job(cfg, "", "")  # nothing to say: no call
    assert written == [(41, f"{why} {figures}"), (41, figures), (41, why)]
    assert why_of(written[0][1]) == why and parse_figures(written[0][1]) == parse_figures(figures)
