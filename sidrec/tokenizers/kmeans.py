"""Seeded torch k-means (plain and size-balanced), shared by RQ-VAE codebook init and RQ-KMeans.

Everything runs on the device of ``x``; randomness comes only from the given CPU ``torch.Generator``, so the same
seed gives the same clusters on CPU and GPU (up to floating-point ties).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

# Rows of x scored against all centroids at once; bounds the (chunk, k) distance matrix for large catalogues.
_CHUNK = 65536
# Rows per step of the k-means++ distance update; a (chunk, d) buffer this size stays in cache.
_SEED_CHUNK = 4096
# Default cap on the points k-means++ seeds on (256 per centroid at K = 256); smaller inputs seed on every point.
INIT_SAMPLE = 65536
# Nearest centroids kept per point by the balanced assignment instead of its full row of k distances.
_CANDIDATES = 32


def squared_distances(x: Tensor, centroids: Tensor, rows: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances between rows: ``(N, d), (k, d) -> (N, k)``, clamped at 0 against round-off.

    With ``rows`` (indices into x), only those rows of the result, ``(R, k)``: the matrix product still runs over
    all of ``x``, so they are the same bits as the full result's rows (a product over fewer rows may round
    differently), but the elementwise work and the output are R x k.
    """
    sq = x.pow(2).sum(1, keepdim=True)  # (N, 1)
    prod = 2 * x @ centroids.T  # (N, k)
    if rows is not None:
        sq, prod = sq[rows], prod[rows]
    d2 = sq - prod  # (N or R, k); the sum below is in place so that at most two (N, k) tensors are alive at once
    del prod
    return d2.add_(centroids.pow(2).sum(1)).clamp_min_(0.0)


def nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centroid of each row: ``(N,) long, (N,) float``."""
    index, dist = [], []
    for start in range(0, x.shape[0], _CHUNK):
        d2 = squared_distances(x[start : start + _CHUNK], centroids)  # (chunk, k)
        best = d2.min(dim=1)
        index.append(best.indices)
        dist.append(best.values)
    if not index:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(index), torch.cat(dist)


def _pad_to_k(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """With fewer points than clusters, append jittered copies of random points so k-means stays defined.

    The jitter (1e-4 of the data scale) keeps copies distinct, so every centroid ends up on a real point.
    """
    n = x.shape[0]
    if n >= k:
        return x
    if n == 0:
        raise ValueError(f"kmeans: need at least one point to fit {k} clusters")
    idx = torch.randint(n, (k - n,), generator=generator).to(x.device)
    scale = 1e-4 * x.std().clamp_min(1e-6) if n > 1 else x.new_tensor(1e-4)
    noise = torch.randn(k - n, x.shape[1], generator=generator).to(x.device, x.dtype)
    return torch.cat([x, x[idx] + scale * noise])


def _distances_to(x: Tensor, c: Tensor, out: Tensor) -> Tensor:
    """Squared distance of every row of ``x (N, d)`` to one point ``c (d,)``, written into ``out (N,)``.

    Computed as ``(x - c)^2`` summed over d, bit-identical to ``(x - c).pow(2).sum(1)`` (a chosen centroid gets
    exactly 0, unlike ||x||^2 - 2 x.c + ||c||^2), but in row chunks through one reused ``(chunk, d)`` buffer, so
    no N x d temporary is allocated per call: that allocation, not the arithmetic, made seeding slow at scale.
    """
    buf = x.new_empty(min(_SEED_CHUNK, x.shape[0]), x.shape[1])  # (chunk, d)
    for start in range(0, x.shape[0], _SEED_CHUNK):
        rows = x[start : start + _SEED_CHUNK]
        diff = buf[: rows.shape[0]]
        torch.sub(rows, c, out=diff)
        diff.mul_(diff)
        torch.sum(diff, 1, out=out[start : start + rows.shape[0]])
    return out


def _init_centroids(
    x: Tensor, k: int, init: str, generator: torch.Generator, init_sample: int | None = INIT_SAMPLE
) -> Tensor:
    """k-means++ (D^2 sampling) or k distinct random points as the starting centroids: ``(k, d)``.

    With more than ``init_sample`` points, k-means++ seeds on a seeded random subset of ``init_sample`` of them,
    so its k sequential passes cost the same for any N (the Lloyd iterations that follow still use every
    point). ``None`` seeds on all points. Inputs of at most ``init_sample`` points draw nothing extra from the
    generator, so their seeding is unchanged by the cap.
    """
    n = x.shape[0]
    if init == "random":
        return x[torch.randperm(n, generator=generator)[:k].to(x.device)].clone()
    if init != "kmeans++":
        raise ValueError(f"kmeans: init must be 'kmeans++' or 'random', got {init!r}")
    if init_sample is not None and n > init_sample:
        if init_sample < k:
            raise ValueError(f"kmeans: init_sample must be >= k = {k}, got {init_sample}")
        x = x[torch.randperm(n, generator=generator)[:init_sample].to(x.device)]  # (init_sample, d)
        n = init_sample
    centroids = x.new_empty(k, x.shape[1])
    first = int(torch.randint(n, (1,), generator=generator))
    centroids[0] = x[first]
    d2 = _distances_to(x, x[first], x.new_empty(n))  # (N,) squared distance to the nearest chosen centroid
    new = torch.empty_like(d2)  # (N,) squared distance to the newest centroid
    for j in range(1, k):
        # Sample a point with probability proportional to d2, via inverse CDF so the CPU generator drives GPU data.
        cdf = d2.cumsum(0)
        u = torch.rand(1, generator=generator, dtype=cdf.dtype).to(x.device) * cdf[-1]
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=n - 1)
        centroids[j] = x[pick[0]]
        torch.minimum(d2, _distances_to(x, centroids[j], new), out=d2)
    return centroids


def _update(x: Tensor, assign: Tensor, centroids: Tensor, dist: Tensor) -> Tensor:
    """Lloyd update: each centroid moves to the mean of its points.

    A cluster that lost all its points is re-seeded on the point farthest from its own centroid (as
    scikit-learn does), so no code is left dead after k-means.
    """
    k = centroids.shape[0]
    sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # (k, d)
    counts = torch.bincount(assign, minlength=k)  # (k,)
    new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), centroids)
    empty = (counts == 0).nonzero().flatten()
    if len(empty):
        far = dist.topk(min(len(empty), x.shape[0])).indices
        new[empty[: len(far)]] = x[far]
    return new


def kmeans(
    x: Tensor,
    k: int,
    iters: int = 20,
    generator: torch.Generator | None = None,
    init: Literal["kmeans++", "random"] = "kmeans++",
    *,
    init_sample: int | None = INIT_SAMPLE,
) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ (or random) seeding.

    Args:
        x: points, ``(N, d)`` float.
        k: number of clusters. With ``N < k``, jittered copies of random points fill the gap.
        iters: maximum Lloyd iterations (stops early once assignments no longer change).
        generator: CPU generator for all randomness; ``None`` uses a fresh generator seeded with 0.
        init: ``"kmeans++"`` or ``"random"``.
        init_sample: k-means++ seeds on a seeded random subset of at most this many points (``None``: all);
            the Lloyd iterations always use every point.

    Returns:
        ``(centroids (k, d), assign (N,) long)``: the cluster of each input point.

    Example:
        >>> x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2)])
        >>> c, a = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
        >>> bool(a[0] != a[-1])
        True
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n = x.shape[0]
    pts = _pad_to_k(x, k, generator)
    centroids = _init_centroids(pts, k, init, generator, init_sample)
    assign, dist = nearest(pts, centroids)
    for _ in range(iters):
        centroids = _update(pts, assign, centroids, dist)
        new_assign, dist = nearest(pts, centroids)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centroids, assign[:n]


def _row_blocks(n: int, chunk: int) -> list[int]:
    """Bounds ``[0, ..., n]`` of ``ceil(n / chunk)`` contiguous row blocks of near-equal size covering n rows.

    Near-equal rather than ``chunk``-sized plus a remainder, so no block is tiny: a matrix product over very few
    rows can round differently from the same rows inside a larger product (measured with MKL: blocks of up to
    9 rows, at 2 threads), while blocks of thousands of rows gave the bits of one product over all rows.
    """
    count = max(1, -(-n // chunk))
    return [n * i // count for i in range(count + 1)]


def _score_with_room(
    x: Tensor, centroids: Tensor, room: Tensor, todo: Tensor, m: int, chunk: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Score the points ``todo`` (ascending indices into x) against the centroids that still have room.

    Row blocks of x are multiplied whole (see ``squared_distances``' ``rows``), so every distance has the bits
    of the full ``squared_distances(x, centroids)``.

    Returns:
        ``dist (U,)`` and ``col (U,) long``: the nearest centroid with room (the first of equally near ones, as
        ``min`` on a full row picks); ``cand_dist (U, m)`` and ``cand_col (U, m)``: the m nearest ones, in no
        particular order (a full centroid counts as infinitely far).
    """
    u, k = len(todo), centroids.shape[0]
    dist, col = x.new_empty(u), torch.empty(u, dtype=torch.long, device=x.device)
    cand_dist = x.new_empty(u, m)
    cand_col = torch.empty(u, m, dtype=torch.int16 if k < 2**15 else torch.int32, device=x.device)
    full = room <= 0  # (k,)
    bounds = _row_blocks(x.shape[0], chunk)
    cuts = torch.searchsorted(todo, torch.tensor(bounds, device=x.device)).tolist()  # todo[cuts[b]:] in block b
    for start, end, lo, hi in zip(bounds[:-1], bounds[1:], cuts[:-1], cuts[1:]):
        if lo == hi:
            continue
        rows = None if hi - lo == end - start else todo[lo:hi] - start
        d2 = squared_distances(x[start:end], centroids, rows).masked_fill_(full, float("inf"))  # (R, k)
        top = d2.topk(m, dim=1, largest=False, sorted=False)
        cand_dist[lo:hi], cand_col[lo:hi] = top.values, top.indices.to(cand_col.dtype)
        best = d2.min(dim=1)
        dist[lo:hi], col[lo:hi] = best.values, best.indices
    return dist, col, cand_dist, cand_col


def _propose_from_candidates(
    cand_dist: Tensor, cand_col: Tensor, at: Tensor, room: Tensor, chunk: int
) -> tuple[Tensor, Tensor] | None:
    """The nearest centroid with room of the points whose candidates are rows ``at`` of ``cand_dist (P, m)``
    and ``cand_col (P, m)``; None when the candidates of some point cannot tell.

    A centroid missing from a point's candidates is at least as far as its farthest candidate, and centroids
    only ever lose room, so the nearest candidate with room is the answer whenever it is strictly nearer than
    the farthest candidate (or all k centroids are candidates); among equally near ones, the lowest index.

    Returns:
        ``dist (U,)`` and ``col (U,) long``, as ``_score_with_room`` gives them, or None.
    """
    k, m = len(room), cand_dist.shape[1]
    dist, col = cand_dist.new_empty(len(at)), torch.empty(len(at), dtype=torch.long, device=at.device)
    for lo in range(0, len(at), chunk):
        rows = at[lo : lo + chunk]
        cd, cc = cand_dist[rows], cand_col[rows].long()  # (C, m)
        cd.masked_fill_(room[cc] <= 0, float("inf"))
        near = cd.min(dim=1).values  # (C,)
        if m < k and bool((near >= cand_dist[rows].amax(1)).any()) or not bool(near.isfinite().all()):
            return None
        dist[lo : lo + len(rows)] = near
        col[lo : lo + len(rows)] = cc.masked_fill_(cd != near[:, None], k).min(dim=1).values
    return dist, col


def _capacity_assign(
    x: Tensor, centroids: Tensor, capacity: Tensor, *, candidates: int = _CANDIDATES, chunk: int = _CHUNK
) -> Tensor:
    """Assign each row of ``x (N, d)`` to a centroid of ``centroids (k, d)``, centroid j taking at most
    ``capacity[j]`` rows (``capacity`` must sum to at least N).

    Rounds of proposals: every unassigned point proposes to its nearest centroid that still has room (the lowest
    index among equally near ones), and each centroid accepts its closest proposers up to its remaining room.
    Each round either places every proposer or fills a centroid, so at most k + 1 rounds run; there is no Python
    loop over points.

    The (N, k) distance matrix is never held. One pass over row blocks finds each point's ``candidates``
    nearest centroids, from which later rounds read the proposals (``_propose_from_candidates``). When the
    candidates of some unassigned point cannot tell, the unassigned points are scored again against the
    centroids with room, each keeping ``candidates * N / unassigned`` of them (so the same memory). Every
    distance has the bits of ``squared_distances(x, centroids)``, so the result is that of the rounds run on the
    full matrix, bit for bit; memory is O(N * candidates + chunk * k) instead of O(N * k).

    Args:
        x: points, ``(N, d)`` float.
        centroids: ``(k, d)``, same dtype and device.
        capacity: ``(k,)`` long, the most points each centroid may take.
        candidates: nearest centroids kept per point (more: fewer passes over x, more memory).
        chunk: rows per block of distances.

    Returns:
        ``(N,)`` long: the centroid of each point.

    Example:
        >>> x = torch.tensor([[0.0], [0.1], [0.2], [5.0]])
        >>> _capacity_assign(x, torch.tensor([[0.0], [5.0]]), torch.tensor([2, 2])).tolist()
        [0, 0, 1, 1]
    """
    n, k = x.shape[0], centroids.shape[0]
    budget = min(candidates, k)
    assign = torch.full((n,), -1, dtype=torch.long, device=x.device)
    room = capacity.clone()
    todo = pool = torch.arange(n, device=x.device)  # (U,) unassigned; (P,) the points holding candidates
    dist, col, cand_dist, cand_col = _score_with_room(x, centroids, room, todo, budget, chunk)
    while True:
        # Sort proposers by distance, then stably by column: within a column the closest come first.
        by_dist = dist.argsort()
        order = by_dist[col[by_dist].argsort(stable=True)]
        col = col[order]  # (U,) sorted by column
        first = torch.searchsorted(col, col, right=False)  # start of each proposer's column block
        rank = torch.arange(len(order), device=x.device) - first
        accepted = rank < room[col]
        assign[todo[order[accepted]]] = col[accepted]
        room -= torch.bincount(col[accepted], minlength=k)
        todo = (assign < 0).nonzero().flatten()
        if len(todo) == 0:
            return assign
        proposal = _propose_from_candidates(cand_dist, cand_col, torch.searchsorted(pool, todo), room, chunk)
        if proposal is None:
            del cand_dist, cand_col  # free them before the new ones are filled
            m = min(k, max(budget, budget * n // len(todo)))
            dist, col, cand_dist, cand_col = _score_with_room(x, centroids, room, todo, m, chunk)
            pool = todo
        else:
            dist, col = proposal


def balanced_kmeans(
    x: Tensor,
    k: int,
    iters: int = 20,
    generator: torch.Generator | None = None,
    init: Literal["kmeans++", "random"] = "kmeans++",
    *,
    init_sample: int | None = INIT_SAMPLE,
) -> tuple[Tensor, Tensor]:
    """k-means whose clusters all have ``N // k`` or ``N // k + 1`` points.

    Lloyd iterations where the assignment step is a greedy capacity-constrained assignment (closest points
    claim a cluster first) instead of the plain nearest centroid. The assignment keeps each point's 32 nearest
    centroids rather than the N x k distance matrix (``_capacity_assign``), with the same result.

    Args:
        x: points, ``(N, d)`` float.
        k: number of clusters. With ``N < k``, jittered copies of random points fill the gap.
        iters: maximum Lloyd iterations (stops early once assignments no longer change).
        generator: CPU generator for all randomness; ``None`` uses a fresh generator seeded with 0.
        init: ``"kmeans++"`` or ``"random"``.
        init_sample: k-means++ seeds on a seeded random subset of at most this many points (``None``: all);
            the Lloyd iterations always use every point.

    Returns:
        ``(centroids (k, d), assign (N,) long)``.

    Example:
        >>> x = torch.randn(10, 2, generator=torch.Generator().manual_seed(0))
        >>> _, a = balanced_kmeans(x, 3, generator=torch.Generator().manual_seed(0))
        >>> sorted(torch.bincount(a).tolist())
        [3, 3, 4]
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n = x.shape[0]
    pts = _pad_to_k(x, k, generator)
    m = pts.shape[0]
    capacity = torch.full((k,), m // k, dtype=torch.long, device=x.device)
    capacity[: m % k] += 1
    centroids = _init_centroids(pts, k, init, generator, init_sample)
    assign = _capacity_assign(pts, centroids, capacity)
    for _ in range(iters):
        # Every cluster is non-empty (capacity >= 1 and all points placed), so no re-seeding is needed here.
        centroids = _update(pts, assign, centroids, pts.new_zeros(m))
        new_assign = _capacity_assign(pts, centroids, capacity)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centroids, assign[:n]
