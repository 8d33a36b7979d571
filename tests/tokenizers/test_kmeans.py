import pytest
import torch

from sidrec.tokenizers import kmeans as kmeans_module
from sidrec.tokenizers.kmeans import balanced_kmeans, kmeans, nearest


def blobs(n_per: int, centres: torch.Tensor, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(centres)).repeat_interleave(n_per)
    x = centres[labels] + spread * torch.randn(len(labels), centres.shape[1], generator=gen)
    return x, labels


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return len({(int(i), int(j)) for i, j in zip(a, b)}) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_recovers_separated_clusters(init):
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x, labels = blobs(30, centres, 0.1, seed=0)
    found = 0
    for seed in range(3):
        c, a = kmeans(x, 4, iters=20, generator=torch.Generator().manual_seed(seed), init=init)
        assert c.shape == (4, 2) and a.shape == (120,)
        # Assignments are consistent with the returned centroids.
        assert torch.equal(a, nearest(x, c)[0])
        found += same_partition(a, labels)
    # k-means++ always finds well-separated blobs; random init may fall into a local optimum on some seed.
    assert found == 3 if init == "kmeans++" else found >= 1


def test_kmeans_centroids_are_cluster_means():
    centres = torch.tensor([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    x, labels = blobs(20, centres, 0.3, seed=1)
    c, a = kmeans(x, 2, generator=torch.Generator().manual_seed(0))
    for k in range(2):
        assert torch.allclose(c[k], x[a == k].mean(0), atol=1e-5)


def test_kmeans_is_deterministic_for_a_seed():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(2))
    c1, a1 = kmeans(x, 7, generator=torch.Generator().manual_seed(3))
    c2, a2 = kmeans(x, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(c1, c2) and torch.equal(a1, a2)


def test_kmeans_with_fewer_points_than_clusters():
    x = torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    c, a = kmeans(x, 8, generator=torch.Generator().manual_seed(0))
    assert c.shape == (8, 2) and torch.isfinite(c).all()
    assert a.shape == (3,) and len(set(a.tolist())) == 3
    # Every point has a centroid (almost) on it.
    assert torch.allclose(c[a], x, atol=1e-3)


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_reseeds_empty_clusters(seed):
    # Random init on mostly-duplicate points starts with identical centroids, leaving clusters empty.
    x = torch.cat([torch.zeros(50, 2), torch.ones(5, 2), torch.tensor([[3.0, 3.0], [4.0, 0.0]])])
    _, a = kmeans(x, 4, generator=torch.Generator().manual_seed(seed), init="random")
    assert len(set(a.tolist())) == 4


def test_kmeans_rejects_bad_init_and_empty_input():
    with pytest.raises(ValueError, match="init"):
        kmeans(torch.randn(10, 2), 2, init="farthest")
    with pytest.raises(ValueError, match="at least one point"):
        kmeans(torch.zeros(0, 2), 2)


@pytest.mark.parametrize("n,k", [(120, 4), (103, 10), (64, 64), (50, 7)])
def test_balanced_kmeans_sizes_are_equal_up_to_one(n, k):
    # Deliberately unbalanced data: most points in one blob.
    gen = torch.Generator().manual_seed(n)
    x = torch.cat(
        [torch.randn(n - n // 5, 3, generator=gen) * 0.1, 5 + torch.randn(n // 5, 3, generator=gen)]
    )
    c, a = balanced_kmeans(x, k, iters=10, generator=torch.Generator().manual_seed(0))
    sizes = torch.bincount(a, minlength=k)
    assert c.shape == (k, 3)
    assert int(sizes.max() - sizes.min()) <= 1 and int(sizes.sum()) == n


def test_balanced_kmeans_matches_kmeans_on_balanced_blobs():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x, labels = blobs(25, centres, 0.2, seed=4)
    _, a = balanced_kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    assert same_partition(a, labels)


def _reference_init(x, k, generator):
    """The original k-means++ seeding: a full (N, d) temporary per added centroid, no subsampling."""
    n = x.shape[0]
    centroids = x.new_empty(k, x.shape[1])
    first = int(torch.randint(n, (1,), generator=generator))
    centroids[0] = x[first]
    d2 = (x - x[first]).pow(2).sum(1)
    for j in range(1, k):
        cdf = d2.cumsum(0)
        u = torch.rand(1, generator=generator, dtype=cdf.dtype) * cdf[-1]
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=n - 1)
        centroids[j] = x[pick[0]]
        d2 = torch.minimum(d2, (x - centroids[j]).pow(2).sum(1))
    return centroids


@pytest.mark.parametrize("n,d,k,chunk", [(300, 5, 16, 7), (1000, 24, 64, 128), (50, 3, 50, 4096)])
def test_chunked_seeding_equals_reference(n, d, k, chunk, monkeypatch):
    # Chunks smaller than N exercise the buffered path; the seeded centroids must be bit-identical.
    monkeypatch.setattr(kmeans_module, "_SEED_CHUNK", chunk)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n))
    got = kmeans_module._init_centroids(x, k, "kmeans++", torch.Generator().manual_seed(1))
    want = _reference_init(x, k, torch.Generator().manual_seed(1))
    assert torch.equal(got, want)


def test_distances_to_one_point_equal_the_unchunked_formula(monkeypatch):
    monkeypatch.setattr(kmeans_module, "_SEED_CHUNK", 10)
    x = torch.randn(95, 6, generator=torch.Generator().manual_seed(0))
    out = kmeans_module._distances_to(x, x[3], torch.empty(95))
    assert torch.equal(out, (x - x[3]).pow(2).sum(1)) and out[3] == 0


def test_subsampled_seeding_is_reference_seeding_of_a_seeded_subset():
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    got = kmeans_module._init_centroids(x, 8, "kmeans++", torch.Generator().manual_seed(5), init_sample=100)
    gen = torch.Generator().manual_seed(5)
    subset = x[torch.randperm(400, generator=gen)[:100]]
    assert torch.equal(got, _reference_init(subset, 8, gen))
    # At or below the cap nothing is drawn for the subset: the full-data seeding is unchanged.
    full = kmeans_module._init_centroids(x, 8, "kmeans++", torch.Generator().manual_seed(5), init_sample=400)
    assert torch.equal(full, _reference_init(x, 8, torch.Generator().manual_seed(5)))


def test_subsampled_kmeans_still_uses_every_point():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x, labels = blobs(100, centres, 0.1, seed=2)
    for fit in (kmeans, balanced_kmeans):
        c, a = fit(x, 4, generator=torch.Generator().manual_seed(0), init_sample=20)
        assert a.shape == (400,) and same_partition(a, labels)
        for j in range(4):  # Lloyd means over all 400 points, not only the 20 seeding ones
            assert torch.allclose(c[j], x[a == j].mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="init_sample"):
        kmeans(x, 4, init_sample=3)


def _reference_squared_distances(x, centroids):
    """The original one-expression distances (three (N, k) tensors alive at once)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ centroids.T + centroids.pow(2).sum(1)).clamp_min_(0.0)


def _reference_capacity_assign(d2, capacity):
    """The original assignment rounds on the full (N, k) distance matrix, copying the unassigned rows each round."""
    n, k = d2.shape
    assign = torch.full((n,), -1, dtype=torch.long)
    room = capacity.clone()
    while True:
        todo = (assign < 0).nonzero().flatten()
        if len(todo) == 0:
            return assign
        cost = d2[todo].masked_fill(room[None, :] <= 0, float("inf"))
        best = cost.min(dim=1)
        by_dist = best.values.argsort()
        order = by_dist[best.indices[by_dist].argsort(stable=True)]
        col = best.indices[order]
        first = torch.searchsorted(col, col, right=False)
        rank = torch.arange(len(order)) - first
        accepted = rank < room[col]
        assign[todo[order[accepted]]] = col[accepted]
        room -= torch.bincount(col[accepted], minlength=k)


def _reference_balanced_kmeans(x, k, iters, generator, init):
    """The original balanced k-means: the full distance matrix for every assignment."""
    n = x.shape[0]
    pts = kmeans_module._pad_to_k(x, k, generator)
    m = pts.shape[0]
    capacity = torch.full((k,), m // k, dtype=torch.long)
    capacity[: m % k] += 1
    centroids = kmeans_module._init_centroids(pts, k, init, generator)
    assign = _reference_capacity_assign(_reference_squared_distances(pts, centroids), capacity)
    for _ in range(iters):
        centroids = kmeans_module._update(pts, assign, centroids, pts.new_zeros(m))
        new_assign = _reference_capacity_assign(_reference_squared_distances(pts, centroids), capacity)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centroids, assign[:n]


def _points(n, k, d, gen, ties):
    """Gaussian points and centroids, or small-integer ones whose distances tie exactly (within and across rows)."""
    if ties:
        return torch.randint(0, 3, (n, d), generator=gen).float(), torch.randint(0, 3, (k, d), generator=gen).float()
    return torch.randn(n, d, generator=gen), torch.randn(k, d, generator=gen)


@pytest.mark.parametrize("seed", range(6))
def test_capacity_assign_equals_full_matrix_reference(seed, monkeypatch):
    # Few candidates and small blocks force re-scoring (candidates that cannot tell) on every kind of input:
    # N not divisible by k, N < k with spare capacity, exact ties, capacities summing to more than N.
    scored = []
    real = kmeans_module._score_with_room
    monkeypatch.setattr(kmeans_module, "_score_with_room", lambda *args: scored.append(1) or real(*args))
    gen = torch.Generator().manual_seed(seed)
    rescored = 0
    for n, k, d in [(203, 10, 3), (97, 31, 2), (7, 20, 4), (300, 64, 5)]:
        x, c = _points(n, k, d, gen, ties=seed % 2 == 1)
        capacity = torch.full((k,), n // k, dtype=torch.long)
        capacity[: n % k] += 1
        if seed >= 3:
            capacity += torch.randint(0, 3, (k,), generator=gen)
        for chunk in (16, 50, 65536):
            bounds = kmeans_module._row_blocks(n, chunk)
            # Distances with the fast path's block products (bit-for-bit what it sees at any block size).
            d2 = torch.cat([kmeans_module.squared_distances(x[s:e], c) for s, e in zip(bounds[:-1], bounds[1:])])
            want = _reference_capacity_assign(d2, capacity)
            assert int(want.min()) >= 0 and (torch.bincount(want, minlength=k) <= capacity).all()
            for candidates in (1, 3, k):
                scored.clear()
                got = kmeans_module._capacity_assign(x, c, capacity, candidates=candidates, chunk=chunk)
                assert torch.equal(got, want), (n, k, chunk, candidates)
                rescored += len(scored) > 1
    assert rescored > 0  # the re-scoring path ran


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n,k,d", [(1000, 7, 5), (999, 10, 3), (50, 64, 4), (3001, 256, 8)])
def test_balanced_kmeans_equals_full_matrix_reference(seed, n, k, d):
    # End to end with the default block size: one block at these sizes, the very product the reference runs.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    if seed == 1:
        x = x.round()  # duplicate points and tied distances
    init = "random" if seed == 2 else "kmeans++"
    c1, a1 = balanced_kmeans(x, k, 10, torch.Generator().manual_seed(seed), init)
    c2, a2 = _reference_balanced_kmeans(x, k, 10, torch.Generator().manual_seed(seed), init)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)


def test_squared_distances_of_some_rows_are_those_rows_of_the_full_result():
    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(300, 16, generator=gen), torch.randn(40, 16, generator=gen)
    rows = torch.tensor([0, 5, 6, 150, 299])
    full = kmeans_module.squared_distances(x, c)
    assert torch.equal(full, _reference_squared_distances(x, c))
    assert torch.equal(kmeans_module.squared_distances(x, c, rows), full[rows])


def test_row_blocks_are_near_equal_and_cover_every_row():
    assert kmeans_module._row_blocks(10, 4) == [0, 3, 6, 10]
    assert kmeans_module._row_blocks(65537, 65536) == [0, 32768, 65537]
    assert kmeans_module._row_blocks(5, 100) == [0, 5]
