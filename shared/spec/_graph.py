"""Iterative cycle finding for small directed graphs (no recursion, so no depth limit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["describe_cycles", "find_cycles"]

_NEW, _ACTIVE, _DONE = 0, 1, 2


def find_cycles(adjacency: Sequence[Sequence[int]], limit: int) -> list[list[int]]:
    """Find cycles with an iterative depth-first search, one per back edge.

    Args:
        adjacency: ``adjacency[n]`` lists the successors of node ``n`` (nodes are ``0..len-1``).
        limit: Stop after this many cycles.

    Returns:
        Up to ``limit`` cycles, each a list of nodes ``[a, b, ..., z]`` with edges
        ``a -> b -> ... -> z -> a``, found in a deterministic order.
    """
    state = [_NEW] * len(adjacency)
    cycles: list[list[int]] = []
    for root in range(len(adjacency)):
        if state[root] != _NEW:
            continue
        state[root] = _ACTIVE
        path = [root]
        position = {root: 0}
        next_edge = [0]
        while path:
            node = path[-1]
            edge = next_edge[-1]
            successors = adjacency[node]
            if edge < len(successors):
                next_edge[-1] = edge + 1
                successor = successors[edge]
                if state[successor] == _NEW:
                    state[successor] = _ACTIVE
                    position[successor] = len(path)
                    path.append(successor)
                    next_edge.append(0)
                elif state[successor] == _ACTIVE:
                    cycles.append(path[position[successor] :])
                    if len(cycles) >= limit:
                        return cycles
            else:
                state[node] = _DONE
                del position[node]
                path.pop()
                next_edge.pop()
    return cycles


def describe_cycles(
    adjacency: Sequence[Sequence[int]],
    label: Callable[[int], str],
    *,
    anchor: Callable[[int], bool],
    limit: int = 10,
    shown: int = 12,
) -> list[tuple[int, str]]:
    """Find cycles and describe each one for a message.

    Args:
        adjacency: As for :func:`find_cycles`.
        label: Names a node, e.g. ``'lane "in"'``.
        anchor: Which nodes a description may start at (every cycle must contain one).
        limit: Report at most this many cycles.
        shown: Name at most this many nodes per cycle, then ``...``.

    Returns:
        ``(node, "a -> b -> ... -> a")`` pairs without repeats, each rotated to start at the
        cycle's smallest anchor node.
    """
    described: list[tuple[int, str]] = []
    for cycle in find_cycles(adjacency, limit):
        first = min(node for node in cycle if anchor(node))
        start = cycle.index(first)
        loop = [*cycle[start:], *cycle[:start], first]
        text = " -> ".join(label(node) for node in loop[:shown])
        if len(loop) > shown:
            text += " -> ..."
        if (first, text) not in described:
            described.append((first, text))
    return described
