"""Ring pairs, the slow-pair classification and the second pass: the pure planners that
name a slow node among a job's nodes from pairwise figures (higher is better).

Shared by `deep.fabric` (torch.distributed, `nodecheck.probes.active.dist`) and the job-start
`fabric.preflight` (plain sockets). Ranks are places in the job's sorted node list. Nothing
here does I/O or imports anything heavy: the prolog imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

Pair = tuple[int, int]  # ranks, lower first


@dataclass(frozen=True)
class PairPlan:
    """Pass-1 reading: the reference figure, which pairs are slow, suspects and cleared."""

    reference: float
    slow: tuple[Pair, ...]
    suspects: tuple[int, ...]
    cleared: tuple[int, ...]


def ring_rounds(world: int) -> list[list[Pair]]:
    """The ring pairs (i, i+1 mod n) in rounds of pairs that share no node."""
    if world < 2:
        return []
    pairs = [tuple(sorted((i, (i + 1) % world))) for i in range(world)]
    unique: list[Pair] = list(dict.fromkeys(pairs))  # type: ignore[arg-type]
    return schedule(unique)


def schedule(pairs: Iterable[Pair]) -> list[list[Pair]]:
    """Greedy rounds: each pair goes into the first round where neither node is busy."""
    rounds: list[list[Pair]] = []
    busy: list[set[int]] = []
    for pair in pairs:
        for index, taken in enumerate(busy):
            if not taken & set(pair):
                rounds[index].append(pair)
                taken.update(pair)
                break
        else:
            rounds.append([pair])
            busy.append(set(pair))
    return rounds


def reference_of(figures: Iterable[float]) -> float:
    """The figure a healthy pair reaches: the upper median, so that a slow node, which
    slows two of the ring's pairs, does not drag the reference down with it."""
    ordered = sorted(figures)
    return ordered[len(ordered) // 2] if ordered else 0.0


def classify(pass1: dict[Pair, float], fraction: float, reference: float | None = None) -> PairPlan:
    """Slow pairs (below fraction x reference), suspects (members of slow pairs only) and
    cleared nodes; the reference is `reference_of` the figures unless given."""
    reference = reference_of(pass1.values()) if reference is None else reference
    slow = tuple(p for p, bw in sorted(pass1.items()) if bw < fraction * reference)
    fast_members = {n for p, bw in pass1.items() if bw >= fraction * reference for n in p}
    suspects = sorted({n for p in slow for n in p} - fast_members)
    return PairPlan(reference, slow, tuple(suspects), tuple(sorted(fast_members)))


def second_pass_rounds(plan: PairPlan) -> list[list[Pair]]:
    """Each suspect with a cleared partner, spreading suspects over different partners;
    and once more each slow pair of two cleared nodes (a slow path, or a moment's noise)."""
    pairs = [p for p in plan.slow if all(n in plan.cleared for n in p)]
    if not plan.suspects or not plan.cleared:
        return schedule(pairs)
    for i, suspect in enumerate(plan.suspects):
        partner = plan.cleared[i % len(plan.cleared)]
        pairs.append((min(suspect, partner), max(suspect, partner)))
    return schedule(pairs)
