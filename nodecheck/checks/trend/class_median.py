"""Deep-tier figures against the node class's median (issue 28): a step of `validate-job`,
beside the node's own baseline (baseline.py).

Publish. Each validation job that measured GPU figures writes them into its job's
AdminComment (root alone may set it; slurmdbd keeps it with the job record), one number per
figure: `nodecheck figures v1: deep.gemm:bf16 GEMM=712.4;deep.membw:memory copy=2948`. The
number is the node's median over its GPUs (or GPU pairs), not every GPU's: one slow GPU is
this node's own problem, which its own checks and baseline judge, and must not drag the
figure the other nodes are measured against; the median of 8 GPUs is also one number where
8 would make the comment 8 times longer. Figures come last in the comment, after whatever
else it says (why a validation could not run, which the loop reads back: `why_of`), and the
figures part is bounded (MAX_FIGURES_TEXT, whole entries only) and one line.

Read. Before judging, the job reads the class's recent figures with one `sacct` call
(slurm/dbd.py `read_validation_comments`): the loop's validation jobs that COMPLETED (passed)
within the window, newest per node. `class_figures` keeps the nodes of this node's class,
this node excluded, and drops a comment that does not parse (a hand-edited one, another
version's): one bad comment is one node fewer, never a wrong median.

Judge. Each GPU figure of this node against the median of the class's nodes' figures, once
at least `min_nodes` other nodes published it: WARN more than `warn_drop` below, FAIL more
than `fail_drop` below. The margins are wider than the own baseline's (0.10 / 0.25 against
0.10 / 0.20): a class median is taken across different machines, whose cooling, firmware and
silicon differ within a class by several percent even when all are healthy, while the own
baseline compares a node with itself. A figure above the median is never a fault.

Results are named as the baseline's (`trend.deep_gemm` for deep.gemm: reason `trend
deep.gemm`), their component the GPU with CLASS_SUFFIX (`gpu3/class`), so the drain reason
says which comparison found it. `judge_figure` and the parsing are pure; the job does I/O.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nodecheck.checks.trend.baseline import Figure, figure_result, num, relative
from nodecheck.core.results import CheckResult

VERSION = 1
MARK = f"nodecheck figures v{VERSION}: "
# Any version's mark, so that a loop strips what a newer job wrote as well.
_ANY_MARK = re.compile(r"(?:^|\s)nodecheck figures v\d+: ")
MAX_FIGURES_TEXT = 600  # characters of the figures part, mark included
CLASS_SUFFIX = "/class"
# A key is `<check>:<metric>`; these characters would break the entry or the comment.
_BAD_KEY = re.compile(r"[=;|\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ClassLimits:
    """The class comparison's settings (config: validate_class_median_*)."""

    warn_drop: float  # share below the class median that WARNs (0.10: 10 %)
    fail_drop: float  # share below the class median that FAILs (0.25)
    min_nodes: int  # other nodes of the class that must have published a figure
    window_days: float  # validations older than this are not read


@dataclass(frozen=True)
class Published:
    """One node's figures from its newest passed validation in the window."""

    node: str
    end: float  # when its validation job ended (epoch seconds)
    figures: Mapping[str, float]  # series (`deep.gemm:bf16 GEMM`) -> the node's median


@dataclass(frozen=True)
class ClassVerdict:
    """One figure against its class median. level: fail, warn, ok, few (too few nodes)."""

    level: str
    median: float | None
    drop: float | None  # 1 - value / median; negative: faster than the class
    nodes: int  # other nodes of the class that published this figure


# --- publish -----------------------------------------------------------------------------


def node_figures(figures: Iterable[Figure]) -> dict[str, float]:
    """Per series, the median of this node's GPUs (or pairs): what the node publishes."""
    per: dict[str, list[float]] = {}
    for fig in figures:
        per.setdefault(fig.series, []).append(fig.value)
    return {key: statistics.median(values) for key, values in per.items()}


def publish(figures: Mapping[str, float]) -> str:
    """`nodecheck figures v1: k=v;k=v` (keys sorted, 4 significant digits), "" when there is
    nothing to publish. Entries that would not fit MAX_FIGURES_TEXT are left out whole."""
    text = ""
    for key in sorted(figures):
        value = figures[key]
        if _BAD_KEY.search(key) or ":" not in key or not _good(value):
            continue
        entry = f"{key}={value:.4g}"
        candidate = f"{text};{entry}" if text else MARK + entry
        if len(candidate) > MAX_FIGURES_TEXT:
            continue
        text = candidate
    return text


def with_figures(why: str, figures_text: str) -> str:
    """One AdminComment carrying both: the why-text first (as before, what the loop reads
    back through `why_of`), the figures last. One line."""
    why = " ".join(why.split())
    return f"{why} {figures_text}".strip() if figures_text else why


def why_of(comment: str) -> str:
    """The comment without its figures part: what it said before figures were published."""
    found = list(_ANY_MARK.finditer(comment))
    return comment[: found[-1].start()].rstrip() if found else comment


def parse_figures(comment: str) -> dict[str, float]:
    """The figures of a version-1 comment; {} when it has none, another version's, or any
    entry that does not parse (a malformed comment contributes nothing, not a part)."""
    found = list(_ANY_MARK.finditer(comment))
    if not found:
        return {}
    start = found[-1]
    if start.group(0).strip() != MARK.strip():
        return {}
    out: dict[str, float] = {}
    for entry in comment[start.end() :].split(";"):
        key, sep, number = entry.rpartition("=")
        if not sep or ":" not in key or _BAD_KEY.search(key) or key.strip() != key:
            return {}
        try:
            value = float(number)
        except ValueError:
            return {}
        if not _good(value):
            return {}
        out[key] = value
    return out


def _good(value: float) -> bool:
    return math.isfinite(value) and value > 0


# --- read --------------------------------------------------------------------------------


def class_figures(
    comments: Iterable[tuple[str, float, str]], node: str, same_class: Callable[[str], bool]
) -> list[Published]:
    """From (node, end, AdminComment) records of passed validations: per node of this
    node's class (other than this node), the newest that published figures."""
    newest: dict[str, Published] = {}
    for other, end, comment in comments:
        if other == node or not same_class(other):
            continue
        figures = parse_figures(comment)
        if not figures:
            continue
        if other not in newest or end > newest[other].end:
            newest[other] = Published(other, end, figures)
    return sorted(newest.values(), key=lambda p: p.node)


# --- judge -------------------------------------------------------------------------------


def judge_figure(value: float, others: Iterable[float], limits: ClassLimits) -> ClassVerdict:
    """One GPU's figure against the median of the class's nodes' figures."""
    seen = [v for v in others if _good(v)]
    if len(seen) < max(limits.min_nodes, 1):
        return ClassVerdict("few", None, None, len(seen))
    median = statistics.median(seen)
    drop = 1.0 - value / median
    if limits.fail_drop > 0 and drop > limits.fail_drop:
        level = "fail"
    elif limits.warn_drop > 0 and drop > limits.warn_drop:
        level = "warn"
    else:
        level = "ok"
    return ClassVerdict(level, median, drop, len(seen))


def result_of(fig: Figure, verdict: ClassVerdict, limits: ClassLimits) -> CheckResult:
    """`trend.deep_gemm`, component `gpu3/class`: the class comparison of gpu3's figure."""
    if verdict.median is None or verdict.drop is None:
        detail = f": too few nodes of its class ({verdict.nodes} of {limits.min_nodes})"
    else:
        detail = (
            f", {relative(verdict.drop)} its class median {num(verdict.median)} "
            f"({verdict.nodes} nodes)"
        )
        if verdict.level == "fail":
            detail += f"; more than {limits.fail_drop:.0%} below"
    values = {
        "class_median": None if verdict.median is None else round(verdict.median, 6),
        "drop": None if verdict.drop is None else round(verdict.drop, 4),
        "nodes": verdict.nodes,
    }
    return figure_result(fig, verdict.level, detail, values, limits, fig.component + CLASS_SUFFIX)


def compare(
    figures: Iterable[Figure], published: Iterable[Published], limits: ClassLimits
) -> list[CheckResult]:
    """One result per figure of this node; the caller keeps the WARN and FAIL ones."""
    published = list(published)
    out = []
    for fig in figures:
        others = [p.figures[fig.series] for p in published if fig.series in p.figures]
        out.append(result_of(fig, judge_figure(fig.value, others, limits), limits))
    return out
