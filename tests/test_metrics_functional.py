"""The functional grouping scores per image against sklearn: AMI, ARI, the expected mutual information, edge
cases, label bounds and ignored labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import hypergeom
from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

from helpers import random_case, sklearn_per_image
from nem_lightning.metrics import adjusted_mutual_info, adjusted_rand_index, grouping_confidence, grouping_scores
from nem_lightning.metrics.functional import _expected_mutual_info

METHODS = ["max", "arithmetic", "geometric", "min"]
# (images, spatial shape, K, number of true labels incl. background 0)
CASES = [(4, (8, 8), 2, 4), (3, (16, 12), 5, 6), (2, (28, 28), 3, 6), (1, (64, 64), 2, 3)]


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
