"""A model of what a lying relay (with colluding partners) can collect in one secure round,
searched exhaustively for small federations (issue 26: the audit's search, plain Python).

Parties 1..n; the colluders C are the highest ids (the rules are symmetric). The relay
decides every honest party's held set U2 (whose shares it delivers) and the survivor story
U3 it tells it. Under the consistency round an honest party reveals shares only for the
one story (U3, U2) it signed, and only once t survivors signed that same story (colluders
sign anything); it reveals b shares of U3 and s shares of U2 \\ U3. Colluders give up all
their shares. The relay recovers an honest party's input if it gets its self-mask seed and,
for every honest peer it masked with, its or that peer's mask key; it also learns the sum
over each revealed story's survivors, and wins if those sums and recovered inputs isolate
one honest party. That overstates the relay (a sum over parties with different held sets
does not unmask), which only makes "no strategy wins" a stronger statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from itertools import combinations


@dataclass(frozen=True)
class Story:
    """What the relay told one group of honest parties: survivors U3 and held set U2."""

    survivors: frozenset[int]
    held: frozenset[int]


def _subsets(pool: list[int], low: int = 0) -> Iterator[frozenset[int]]:
    for size in range(low, len(pool) + 1):
        for chosen in combinations(pool, size):
            yield frozenset(chosen)


def stories(group: frozenset[int], n: int, t: int) -> Iterator[Story]:
    """Every story a group may sign: group within U3, U3 within U2, at least t survivors."""
    others = [p for p in range(1, n + 1) if p not in group]
    for extra_survivors in _subsets(others, max(0, t - len(group))):
        rest = [p for p in others if p not in extra_survivors]
        for extra_held in _subsets(rest):
            survivors = group | extra_survivors
            yield Story(survivors, survivors | extra_held)


def _groups(honest: list[int], least: int) -> Iterator[list[frozenset[int]]]:
    """Every family of disjoint honest groups, each of at least `least` parties."""
    if not honest:
        yield []
        return
    first, rest = honest[0], honest[1:]
    yield from _groups(rest, least)  # the first party reveals nothing
    for size in range(max(0, least - 1), len(rest) + 1):
        for mates in combinations(rest, size):
            group = frozenset((first, *mates))
            remaining = [p for p in rest if p not in group]
            for more in _groups(remaining, least):
                yield [group, *more]


def relay_wins(n: int, t: int, colluders: int) -> list[tuple[Story, ...]]:
    """The strategies (one story per revealing group) under which the relay learns one honest
    party's input; empty if none does."""
    corrupt = frozenset(range(n - colluders + 1, n + 1))
    honest = [p for p in range(1, n + 1) if p not in corrupt]
    wins = []
    for family in _groups(honest, max(1, t - colluders)):
        for told in _assignments(family, n, t):
            reveals = all(
                len(g) + len(s.survivors & corrupt) >= t for g, s in zip(family, told, strict=True)
            )
            if reveals and _learns_one(n, t, corrupt, honest, family, told):
                wins.append(told)
                return wins
    return wins


def _assignments(family: list[frozenset[int]], n: int, t: int) -> Iterator[tuple[Story, ...]]:
    if not family:
        yield ()
        return
    for story in stories(family[0], n, t):
        for rest in _assignments(family[1:], n, t):
            if story not in rest:  # equal stories are one group
                yield (story, *rest)


def _learns_one(n, t, corrupt, honest, family, told) -> bool:
    b_count = dict.fromkeys(range(1, n + 1), len(corrupt))
    s_count = dict(b_count)
    for group, story in zip(family, told, strict=True):
        for v in story.survivors:
            b_count[v] += len(group)
        for v in story.held - story.survivors:
            s_count[v] += len(group)
    b_known = {v for v in b_count if b_count[v] >= t}
    s_known = {v for v in s_count if s_count[v] >= t}
    held_of = {p: s.held for g, s in zip(family, told, strict=True) for p in g}
    opened = set()
    for a in honest:
        if a not in b_known:
            continue
        # A silent party's held set is the relay's choice: at least t, as few honest as it can.
        options = [held_of[a]] if a in held_of else _free_held(a, n, t)
        for held in options:
            peers = [v for v in held if v != a and v not in corrupt]
            if a in s_known or all(v in s_known for v in peers):
                opened.add(a)
                break
    rows = [[1 if p == v else 0 for p in honest] for v in opened]
    rows += [[1 if p in s.survivors else 0 for p in honest] for s in told]
    return any(_in_span(rows, [1 if p == a else 0 for p in honest]) for a in honest)


def _free_held(a: int, n: int, t: int) -> Iterator[frozenset[int]]:
    others = [p for p in range(1, n + 1) if p != a]
    for extra in _subsets(others, t - 1):
        yield frozenset({a}) | extra


def _in_span(rows: list[list[int]], target: list[int]) -> bool:
    """Whether `target` is a rational combination of `rows` (Gaussian elimination)."""

    def rank(vectors: list[list[int]]) -> int:
        m = [[Fraction(x) for x in row] for row in vectors]
        r = 0
        for col in range(len(target)):
            pivot = next((i for i in range(r, len(m)) if m[i][col] != 0), None)
            if pivot is None:
                continue
            m[r], m[pivot] = m[pivot], m[r]
            for i in range(len(m)):
                if i != r and m[i][col] != 0:
                    factor = m[i][col] / m[r][col]
                    m[i] = [x - factor * y for x, y in zip(m[i], m[r], strict=True)]
            r += 1
        return r

    return rank(rows + [target]) == rank(rows) if rows else False


def without_consistency(n: int, t: int, told: dict[int, Story]) -> bool:
    """The rules before the consistency round: each party reveals for the story it alone was
    told (at least t survivors, itself among them). Whether the relay learns one input."""
    honest = sorted(told)
    family = [frozenset({p}) for p in honest]
    stories_ = tuple(told[p] for p in honest)
    return _learns_one(n, t, frozenset(), honest, family, stories_)
