"""The metric classes: means of per-image scores over batches, skipped images, sequences scored per step, and
updates on CUDA without a host synchronisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from helpers import random_case, sklearn_per_image
from nem_lightning.metrics import (
    AdjustedMutualInfo,
    AdjustedRandIndex,
    GroupingConfidence,
    SequenceGroupingMetrics,
    adjusted_mutual_info,
    adjusted_rand_index,
    grouping_confidence,
)


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
