"""Tests for nem_lightning.metrics: sklearn agreement per image, edge cases, sequences and DDP."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.stats import hypergeom
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from nem_lightning.metrics import (
    AdjustedMutualInfo,
    AdjustedRandIndex,
    GroupingConfidence,
    SequenceGroupingMetrics,
    adjusted_mutual_info,
    adjusted_rand_index,
    grouping_confidence,
    grouping_scores,
)
from nem_lightning.metrics.functional import _expected_mutual_info

METHODS = ["max", "arithmetic", "geometric", "min"]
# (images, spatial shape, K, number of true labels incl. background 0)
CASES = [(4, (8, 8), 2, 4), (3, (16, 12), 5, 6), (2, (28, 28), 3, 6), (1, (64, 64), 2, 3)]


def sklearn_per_image(score_fn, pred: torch.Tensor, true: torch.Tensor, ignore_index: int | None = 0, **kw):
    """The paper's loop: per image, select the scored pixels first, then call sklearn."""
    out = []
    for p, t in zip(pred.flatten(1).numpy(), true.flatten(1).numpy()):
        keep = np.ones_like(t, dtype=bool) if ignore_index is None else t != ignore_index
        out.append(score_fn(t[keep], p[keep], **kw))
    return np.array(out)


def random_case(B: int, shape: tuple[int, ...], K: int, labels: int, seed: int = 0):
    """Random gamma (B, K, *shape) and true groups (B, *shape) in [0, labels)."""
    g = torch.Generator().manual_seed(seed)
    gamma = torch.rand(B, K, *shape, generator=g)
    groups = torch.randint(0, labels, (B, *shape), generator=g)
    return gamma, groups


def noisy_copy(groups: torch.Tensor, flip: float, K: int, seed: int = 1) -> torch.Tensor:
    """Predicted labels equal to the groups (mod K) except a random fraction ``flip`` of pixels."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, K, groups.shape, generator=g)
    return torch.where(torch.rand(groups.shape, generator=g) < flip, noise, groups % K)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("B,shape,K,labels", CASES)
def test_ami_matches_sklearn_per_image(method, B, shape, K, labels):
    """Per-image AMI equals sklearn's on the non-background pixels, for every normaliser and size."""
    gamma, groups = random_case(B, shape, K, labels)
    for pred_in, pred in [(gamma, gamma.argmax(1)), (noisy_copy(groups, 0.3, K), noisy_copy(groups, 0.3, K))]:
        ours, valid = adjusted_mutual_info(pred_in, groups, average_method=method, num_labels=labels)
        ref = sklearn_per_image(adjusted_mutual_info_score, pred, groups, average_method=method)
        assert valid.all() and ours.dtype == torch.float64
        np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("B,shape,K,labels", CASES)
def test_ari_matches_sklearn_per_image(B, shape, K, labels):
    """Per-image foreground ARI equals sklearn's adjusted_rand_score on the non-background pixels."""
    gamma, groups = random_case(B, shape, K, labels, seed=3)
    for pred_in, pred in [(gamma, gamma.argmax(1)), (noisy_copy(groups, 0.3, K), noisy_copy(groups, 0.3, K))]:
        ours, valid = adjusted_rand_index(pred_in, groups, num_labels=labels)
        ref = sklearn_per_image(adjusted_rand_score, pred, groups)
        assert valid.all()
        np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-6)


def test_ari_large_image_does_not_overflow():
    """ARI stays exact to 1e-9 on a 400x400 image, where pair-count products exceed the int64 range."""
    g = torch.Generator().manual_seed(0)
    groups = torch.randint(1, 4, (1, 400, 400), generator=g)
    pred = noisy_copy(groups, 0.5, 4)
    ours, _ = adjusted_rand_index(pred, groups, num_labels=4)
    ref = sklearn_per_image(adjusted_rand_score, pred, groups)
    assert float(groups.numel()) ** 4 > torch.iinfo(torch.int64).max
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-9, atol=1e-12)


def test_expected_mutual_info_matches_hypergeometric_sum():
    """Windowed EMI equals the full hypergeometric sum where the window is narrower than the support."""
    for rows, cols in [([2048, 2048], [2048, 2048]), ([3000, 1096], [100, 1996, 2000]), ([1, 4095], [7, 4089])]:
        n = sum(rows)
        ref = 0.0
        for a in rows:
            for b in cols:
                x = np.arange(1, min(a, b) + 1)
                ref += (hypergeom.pmf(x, n, a, b) * x / n * np.log(n * x / (a * b))).sum()
        a_t = torch.tensor([rows], dtype=torch.float64)
        b_t = torch.tensor([cols], dtype=torch.float64)
        ours = _expected_mutual_info(a_t, b_t, torch.tensor([float(n)], dtype=torch.float64), n)
        assert ours.item() == pytest.approx(ref, rel=1e-9, abs=1e-13)


def test_identical_partitions_score_one():
    """Identical partitions under any relabelling score exactly 1 for AMI and ARI, as in sklearn."""
    groups = torch.randint(1, 5, (3, 10, 10), generator=torch.Generator().manual_seed(0))
    pred = (groups * 3) % 7  # a relabelling: 1,2,3,4 -> 3,6,2,5
    ami, _ = adjusted_mutual_info(pred, groups, num_labels=7)
    ari, _ = adjusted_rand_index(pred, groups, num_labels=7)
    assert ami.tolist() == [1.0, 1.0, 1.0] and ari.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "name,true,pred",
    [
        ("one class, one cluster", [1, 1, 1, 1], [0, 0, 0, 0]),
        ("one class, two clusters", [2, 2, 2, 2], [0, 1, 0, 1]),
        ("two classes, one cluster", [1, 2, 1, 2], [3, 3, 3, 3]),
        ("one scored pixel", [0, 0, 3, 0], [1, 2, 0, 1]),
        ("every pixel its own cluster", [1, 1, 1, 1], [0, 1, 2, 3]),
        ("two of six clusters used", [1, 1, 2, 2, 3, 3], [5, 5, 0, 0, 0, 5]),
    ],
)
def test_degenerate_partitions_match_sklearn(name, true, pred):
    """Degenerate cases (single class or cluster, one pixel, unused clusters) give sklearn's values."""
    t, p = torch.tensor([true]), torch.tensor([pred])
    keep = t[0] != 0
    for method in METHODS:
        ami, valid = adjusted_mutual_info(p, t, num_labels=6, average_method=method)
        ref = adjusted_mutual_info_score(t[0][keep].numpy(), p[0][keep].numpy(), average_method=method)
        assert valid.item() and ami.item() == pytest.approx(ref, abs=1e-12), name
    ari, _ = adjusted_rand_index(p, t, num_labels=6)
    assert ari.item() == pytest.approx(adjusted_rand_score(t[0][keep].numpy(), p[0][keep].numpy()), abs=1e-12)


def test_single_cluster_edge_values():
    """sklearn's convention: both sides unsplit scores 1.0, exactly one side unsplit scores 0.0."""
    t = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 2, 1, 2]])
    p = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 1], [3, 3, 3, 3]])
    ami, _ = adjusted_mutual_info(p, t, num_labels=4)
    assert ami.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("K,labels", [(7, 4), (2, 6)])
def test_k_different_from_group_count_matches_sklearn(K, labels):
    """More or fewer slots K than true groups still agrees with sklearn per image."""
    gamma, groups = random_case(3, (12, 12), K, labels, seed=K)
    ami, _ = adjusted_mutual_info(gamma, groups, num_labels=labels)
    ref = sklearn_per_image(adjusted_mutual_info_score, gamma.argmax(1), groups, average_method="max")
    np.testing.assert_allclose(ami.numpy(), ref, atol=1e-6)


def test_soft_and_hard_inputs_agree():
    """gamma input equals its argmax labels, ties included (first maximal k, like argmax)."""
    gamma, groups = random_case(4, (9, 9), 4, 5)
    gamma[:, :, :3] = 0.25  # exact ties on three rows of pixels
    gamma[:, 1:3, 3:5] = 0.9  # ties between two slots
    hard = gamma.argmax(1)
    for fn in (adjusted_mutual_info, adjusted_rand_index):
        soft_v, _ = fn(gamma, groups, num_labels=5)
        hard_v, _ = fn(hard, groups, num_labels=5)
        torch.testing.assert_close(soft_v, hard_v, rtol=0, atol=1e-12)


def test_float_targets_and_inferred_bound_match_integer_input():
    """Float groups holding integers, and num_labels=None (bound read from data), give the same scores."""
    gamma, groups = random_case(3, (10, 10), 3, 6)
    base, _ = adjusted_mutual_info(gamma, groups, num_labels=6)
    as_float, _ = adjusted_mutual_info(gamma, groups.float(), num_labels=6)
    inferred, _ = adjusted_mutual_info(gamma, groups.to(torch.uint8))
    torch.testing.assert_close(as_float, base, rtol=0, atol=0)
    torch.testing.assert_close(inferred, base, rtol=0, atol=1e-12)


def test_ignore_index_none_and_out_of_range():
    """ignore_index=None scores every pixel; an ignore label outside [0, num_labels) such as 255 works."""
    gamma, groups = random_case(3, (10, 10), 3, 4)
    every, _ = adjusted_mutual_info(gamma, groups, ignore_index=None, num_labels=4)
    ref = sklearn_per_image(
        adjusted_mutual_info_score, gamma.argmax(1), groups, ignore_index=None, average_method="max"
    )
    np.testing.assert_allclose(every.numpy(), ref, atol=1e-6)
    relabelled = groups.masked_fill(groups == 0, 255)
    fg_255, _ = adjusted_mutual_info(gamma, relabelled, ignore_index=255, num_labels=4)
    fg_0, _ = adjusted_mutual_info(gamma, groups, ignore_index=0, num_labels=4)
    torch.testing.assert_close(fg_255, fg_0, rtol=0, atol=1e-12)


def test_labels_outside_bound_raise():
    """A scored label at or above num_labels fails loudly instead of being miscounted."""
    gamma, groups = random_case(2, (6, 6), 3, 6)
    with pytest.raises(RuntimeError, match="num_labels"):
        adjusted_mutual_info(gamma, groups, num_labels=4)


def test_all_ignored_image_is_skipped_and_counted():
    """An image with no scored pixels is invalid, left out of every mean and counted; nothing is NaN."""
    gamma, groups = random_case(4, (8, 8), 3, 4)
    groups[2] = 0
    ami, valid = adjusted_mutual_info(gamma, groups, num_labels=4)
    conf, conf_valid = grouping_confidence(gamma, groups)
    assert valid.tolist() == [True, True, False, True] and torch.equal(conf_valid, valid)
    assert ami[2] == 0 and conf[2] == 0
    keep = [0, 1, 3]
    pred = gamma.argmax(1)[keep]
    ami_ref = sklearn_per_image(adjusted_mutual_info_score, pred, groups[keep], average_method="max").mean()
    ari_ref = sklearn_per_image(adjusted_rand_score, pred, groups[keep]).mean()
    for metric, expected in [
        (AdjustedMutualInfo(num_labels=4), ami_ref),
        (AdjustedRandIndex(num_labels=4), ari_ref),
        (GroupingConfidence(), conf[keep].mean().item()),
    ]:
        metric.update(gamma, groups)
        value = metric.compute()
        assert not value.isnan() and value.item() == pytest.approx(expected, abs=1e-9)
        assert metric.skipped.item() == 1
    empty = AdjustedMutualInfo(num_labels=4)
    empty.update(gamma[2:3], groups[2:3])
    assert empty.compute().item() == 0.0 and empty.skipped.item() == 1


def test_confidence_is_mean_max_gamma_over_scored_pixels():
    """Confidence is the per-image mean of max_k gamma over foreground pixels, then the mean over images."""
    gamma, groups = random_case(3, (7, 5), 4, 3)
    gamma = gamma.softmax(1)
    conf, _ = grouping_confidence(gamma, groups)
    ref = [gamma[i].amax(0)[groups[i] != 0].double().mean().item() for i in range(3)]
    np.testing.assert_allclose(conf.numpy(), ref, rtol=1e-12)
    metric = GroupingConfidence()
    metric.update(gamma[:1], groups[:1])
    metric.update(gamma[1:], groups[1:])
    assert metric.compute().item() == pytest.approx(np.mean(ref), rel=1e-12)


def test_metric_is_mean_of_per_image_scores_across_batches():
    """Accumulating uneven batches gives the mean of per-image sklearn scores, not a pooled clustering."""
    gamma, groups = random_case(5, (10, 10), 3, 5, seed=7)
    metric = AdjustedMutualInfo(average_method="arithmetic", num_labels=5)
    metric.update(gamma[:2], groups[:2])
    metric.update(gamma[2:], groups[2:])
    ref = sklearn_per_image(adjusted_mutual_info_score, gamma.argmax(1), groups, average_method="arithmetic")
    assert metric.compute().item() == pytest.approx(ref.mean(), abs=1e-9)
    assert metric.skipped.item() == 0


def test_sequence_metric_per_step_and_weighting():
    """Per-step values equal the functional scores of each step; "last" and "all" weight them as documented."""
    B, T, K = 3, 4, 3
    g = torch.Generator().manual_seed(0)
    gamma = torch.rand(B, T, K, 6, 6, generator=g)
    groups = torch.randint(0, 4, (B, T, 6, 6), generator=g)
    groups[1, 2] = 0  # one all-ignored frame: step 2 averages over two images
    per_step = {"ami": [], "ari": [], "confidence": []}
    for t in range(T):
        for name, fn in [("ami", adjusted_mutual_info), ("ari", adjusted_rand_index)]:
            v, ok = fn(gamma[:, t], groups[:, t], num_labels=4)
            per_step[name].append(v[ok].mean().item())
        v, ok = grouping_confidence(gamma[:, t], groups[:, t])
        per_step["confidence"].append(v[ok].mean().item())
    for weights in ("last", "all"):
        metric = SequenceGroupingMetrics(num_steps=T, step_weights=weights, num_labels=4)
        metric.update(gamma, groups)
        out = metric.compute()
        for name, ref in per_step.items():
            np.testing.assert_allclose(out[f"{name}_per_step"].numpy(), ref, atol=1e-12)
            assert out[f"{name}_last"].item() == pytest.approx(ref[-1], abs=1e-12)
            assert out[name].item() == pytest.approx(ref[-1] if weights == "last" else np.mean(ref), abs=1e-12)
        assert metric.skipped.tolist() == [0, 0, 1, 0]


def test_grouping_scores_equal_the_separate_functional_forms():
    """The one-pass functional gives exactly the values and mask of the three separate functions."""
    gamma, groups = random_case(4, (9, 9), 3, 5, seed=5)
    groups[1] = 0
    scores, valid = grouping_scores(gamma, groups, average_method="geometric", num_labels=5)
    for name, (ref, ref_valid) in [
        ("ami", adjusted_mutual_info(gamma, groups, average_method="geometric", num_labels=5)),
        ("ari", adjusted_rand_index(gamma, groups, num_labels=5)),
        ("confidence", grouping_confidence(gamma, groups)),
    ]:
        torch.testing.assert_close(scores[name], ref, rtol=0, atol=0)
        assert torch.equal(valid, ref_valid)


def test_sequence_per_step_ami_equals_functional_and_sklearn():
    """Per-step AMI of the sequence metric equals the functional AMI of each step, and sklearn's mean."""
    B, T, K = 4, 3, 3
    g = torch.Generator().manual_seed(2)
    gamma = torch.rand(B, T, K, 7, 7, generator=g)
    groups = torch.randint(0, 5, (B, T, 7, 7), generator=g)
    groups[3, 0] = 0  # step 0 averages over three images
    metric = SequenceGroupingMetrics(num_steps=T, step_weights="all", num_labels=5)
    metric.update(gamma[:1], groups[:1])
    metric.update(gamma[1:], groups[1:])
    per_step = metric.compute()["ami_per_step"]
    for t in range(T):
        ami, valid = adjusted_mutual_info(gamma[:, t], groups[:, t], num_labels=5)
        assert per_step[t].item() == pytest.approx(ami[valid].mean().item(), abs=1e-12)
        keep = valid.numpy()
        ref = sklearn_per_image(
            adjusted_mutual_info_score, gamma[:, t].argmax(1)[keep], groups[:, t][keep], average_method="max"
        )
        assert per_step[t].item() == pytest.approx(ref.mean(), abs=1e-9)


def test_sequence_compute_counts_images_scored_and_skipped():
    """compute()["images"] is the number of sequences scored per step, skipped (all-ignored) ones included."""
    g = torch.Generator().manual_seed(4)
    gamma = torch.rand(5, 2, 3, 6, 6, generator=g)
    groups = torch.randint(1, 4, (5, 2, 6, 6), generator=g)
    groups[0] = 0  # skipped at both steps
    groups[3, 1] = 0  # skipped at the last step only
    metric = SequenceGroupingMetrics(num_steps=2, num_labels=4)
    metric.update(gamma[:2], groups[:2])  # 2 images per step, 1 skipped at the last step
    metric.update(gamma[2:], groups[2:])  # 3 more, 1 skipped at the last step
    out = metric.compute()
    assert out["images"].item() == 5.0 and out["images"].dim() == 0
    assert metric.skipped.tolist() == [1, 2] and metric.count.tolist() == [4, 3]
    static = SequenceGroupingMetrics(num_steps=2, num_labels=4)
    static.update(gamma[:3], groups[:3, :1])  # static groups: image 0 skipped at every step
    assert static.compute()["images"].item() == 3.0
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert metric.compute()["images"].item() == 0.0


def test_a_loose_label_bound_scores_like_the_exact_one():
    """num_labels only bounds the labels: 4, 16 and None (read from the data) give the same scores."""
    g = torch.Generator().manual_seed(3)
    gamma = torch.rand(5, 3, 3, 7, 7, generator=g)
    groups = torch.randint(0, 4, (5, 3, 7, 7), generator=g)
    results = []
    for bound in (4, 16, None):
        metric = SequenceGroupingMetrics(num_steps=3, step_weights="all", num_labels=bound)
        metric.update(gamma, groups)
        results.append(metric.compute())
    for other in results[1:]:
        for name in ("ami", "ari", "confidence"):
            torch.testing.assert_close(other[f"{name}_per_step"], results[0][f"{name}_per_step"], rtol=0, atol=1e-12)


def test_sequence_static_groups_broadcast_over_steps():
    """Groups with one step (static data) are scored against every step, same as repeating them."""
    g = torch.Generator().manual_seed(1)
    gamma = torch.rand(2, 3, 4, 8, 8, generator=g)
    groups = torch.randint(0, 5, (2, 1, 8, 8), generator=g)
    once, repeated = SequenceGroupingMetrics(3, num_labels=5), SequenceGroupingMetrics(3, num_labels=5)
    once.update(gamma, groups)
    repeated.update(gamma, groups.repeat(1, 3, 1, 1))
    for key, value in once.compute().items():
        torch.testing.assert_close(value, repeated.compute()[key], rtol=0, atol=0)


def test_sequence_rejects_wrong_step_count():
    """A gamma whose step count differs from num_steps is refused with a message naming the shapes."""
    metric = SequenceGroupingMetrics(num_steps=4)
    with pytest.raises(ValueError, match="4 steps"):
        metric.update(torch.rand(2, 3, 2, 5, 5), torch.zeros(2, 3, 5, 5, dtype=torch.long))


def _ddp_data():
    """Eight images and two-step sequences; image 6 has no scored pixels."""
    g = torch.Generator().manual_seed(11)
    gamma = torch.rand(8, 2, 3, 6, 6, generator=g)
    groups = torch.randint(0, 4, (8, 2, 6, 6), generator=g)
    groups[6] = 0
    return gamma, groups


def _all_metrics(gamma: torch.Tensor, groups: torch.Tensor) -> dict[str, torch.Tensor]:
    """Update every metric class with the given slice and return their computed values."""
    flat_gamma, flat_groups = gamma[:, -1], groups[:, -1]
    out = {}
    for name, metric in [
        ("ami", AdjustedMutualInfo(num_labels=4)),
        ("ari", AdjustedRandIndex(num_labels=4)),
        ("confidence", GroupingConfidence()),
    ]:
        metric.update(flat_gamma, flat_groups)
        out[name] = metric.compute()
        with metric.sync_context():  # states hold the local counts outside compute()
            out[f"{name}_skipped"] = metric.skipped.clone()
    seq = SequenceGroupingMetrics(num_steps=2, step_weights="all", num_labels=4)
    seq.update(gamma, groups)
    out.update({f"seq_{k}": v for k, v in seq.compute().items()})
    with seq.sync_context():
        out["seq_skipped"] = seq.skipped.clone()
    return out


def _ddp_worker(rank: int, store_path: str, out_dir: str) -> None:
    """One gloo rank over loopback: rank 0 scores images 0..4, rank 1 images 5..7."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, 2)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
    try:
        gamma, groups = _ddp_data()
        part = slice(0, 5) if rank == 0 else slice(5, 8)
        torch.save(_all_metrics(gamma[part], groups[part]), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_matches_single_process_on_uneven_split(tmp_path):
    """Two gloo ranks holding 5 and 3 images reduce to exactly the single-process values."""
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    single = _all_metrics(*_ddp_data())
    assert single["ami_skipped"].item() == 1
    for rank in (0, 1):
        synced = torch.load(tmp_path / f"rank{rank}.pt")
        assert synced.keys() == single.keys()
        for key, value in single.items():
            torch.testing.assert_close(synced[key], value, rtol=0, atol=1e-12, msg=key)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_update_is_sync_free_and_matches_cpu():
    """On CUDA, update with num_labels makes no host synchronisation and matches the CPU values."""
    gamma, groups = random_case(4, (16, 16), 3, 5)
    seq = SequenceGroupingMetrics(num_steps=1, num_labels=5).cuda()
    cpu = SequenceGroupingMetrics(num_steps=1, num_labels=5)
    gamma_cuda, groups_cuda = gamma.cuda()[:, None], groups.cuda()[:, None]
    seq.update(gamma_cuda, groups_cuda)  # warm-up: first calls may allocate and sync
    seq.reset()
    torch.cuda.set_sync_debug_mode("error")
    try:
        seq.update(gamma_cuda, groups_cuda)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu.update(gamma[:, None], groups[:, None])
    for key, value in cpu.compute().items():
        torch.testing.assert_close(seq.compute()[key].cpu(), value, rtol=0, atol=1e-9, msg=key)
