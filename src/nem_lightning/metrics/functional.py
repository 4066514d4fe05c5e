"""Functional grouping metrics for Neural EM: per-image AMI, ARI and confidence, batched on the device.

The paper scores every image on its own with sklearn's ``adjusted_mutual_info_score`` (``max``
normaliser), using only the pixels whose true group is not 0, then averages over images. Here the same
numbers come out of one batched pass: a contingency table per image (``scatter_add_``), then mutual
information, entropies and the expected mutual information (EMI) as float64 tensor maths.

Layout follows torchmetrics: ``_grouping_update`` validates inputs and builds the contingency tables,
``_ami_compute`` / ``_ari_compute`` do the maths, and the public functions below compose them. Every
function returns per-image values (0 for images without scored pixels) and a mask of the valid images.

Label bound. Tensor shapes must be fixed without reading data back to the host, so the label range must be
known statically. Soft assignments gamma (B, K, ...) bound the predicted labels by K. True labels (and hard
predicted labels) are bounded by ``num_labels``: labels lie in [0, num_labels); the NEM datasets use
groups 0..5, i.e. ``num_labels=6``. With ``num_labels=None`` the bound is read from the data, which costs
one device-to-host synchronisation per call; pass it to keep the call sync-free. Out-of-range scored
labels fail through a device-side assert instead of being miscounted.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

AverageMethod = Literal["max", "arithmetic", "geometric", "min"]
_AVERAGE_METHODS = ("max", "arithmetic", "geometric", "min")
_EPS = torch.finfo(torch.float64).eps
# EMI window half-width t with 8 t^2 / (N + 2) >= _TAIL_LOG: Serfling's bound for sampling without
# replacement, P(|x - mu| >= t) <= 2 exp(-2 t^2 / (m (1 - (m - 1) / N))) with m = min(a, b, N-a, N-b) <= N/2,
# leaves out a hypergeometric mass below 5e-16 per cell, under float64 resolution.
_TAIL_LOG = 36.0
_CHUNK_ELEMENTS = 2**18  # EMI grid elements per chunk: 2 MB temporaries stay in cache and get reused


def _check_average_method(average_method: str) -> None:
    if average_method not in _AVERAGE_METHODS:
        raise ValueError(f"average_method must be one of {_AVERAGE_METHODS}, got {average_method!r}")


def _argmax_k(gamma: Tensor) -> Tensor:
    """argmax over dim 1 (first maximum on ties), several times faster on CPU than ``argmax(1)``."""
    K = gamma.shape[1]
    if K > 255:
        return gamma.argmax(1)
    # Weights K..1 in uint8: the first maximal k gets the largest weight; amax is vectorised, argmax(1) is not.
    weight = torch.arange(K, 0, -1, dtype=torch.uint8, device=gamma.device).view(1, K, *[1] * (gamma.ndim - 2))
    is_max = gamma >= gamma.amax(1, keepdim=True)  # (B, K, *spatial)
    return K - (is_max.view(torch.uint8) * weight).amax(1)  # (B, *spatial) uint8


def _grouping_update(
    preds: Tensor, target: Tensor, ignore_index: int | None, num_labels: int | None
) -> tuple[Tensor, int]:
    """Validate inputs and build one contingency table per image.

    Args:
        preds: soft assignments (B, K, *spatial) float, or hard labels (B, *spatial).
        target: true labels (B, *spatial), integer or float holding integers.
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
        num_labels: static bound on true (and hard predicted) labels; ``None`` reads it from the data.

    Returns:
        Contingency counts (B, R, C) float64 (rows: true labels without ``ignore_index``, columns:
        predicted labels) and the number of pixels per image, a static bound on each image's count.
    """
    hard = preds.ndim == target.ndim
    if preds.ndim == target.ndim + 1 and preds.is_floating_point():
        num_pred: int | None = preds.shape[1]  # predicted labels are bounded by K
        pred = _argmax_k(preds)  # (B, *spatial)
    elif hard:
        num_pred = num_labels
        pred = preds.round().long() if preds.is_floating_point() else preds.long()
    else:
        raise ValueError(
            f"preds must be gamma (B, K, *spatial) or labels (B, *spatial); got preds {tuple(preds.shape)}"
            f" for target {tuple(target.shape)}"
        )
    if pred.shape != target.shape:
        raise ValueError(f"preds {tuple(preds.shape)} do not match target {tuple(target.shape)}")
    true = target.round().long() if target.is_floating_point() else target.long()
    B = true.shape[0]
    true, pred = true.flatten(1), pred.flatten(1)  # (B, N)
    n_max = true.shape[1]
    if num_labels is None:  # static argument check; reading the bound from the data is the documented sync
        scored_true = true if ignore_index is None else true.masked_fill(true == ignore_index, 0)
        seen = torch.stack([scored_true.amax(), pred.amax().long()]).tolist() if true.numel() else [0, 0]
        num_labels = int(max(seen)) + 1 if hard else int(seen[0]) + 1
        num_pred = num_labels if hard else num_pred
    # Ignored pixels are counted in a "trash" row that is dropped afterwards: row ignore_index when that is
    # a valid label, else an extra row, so an out-of-range ignore label never indexes anything.
    rows, trash = num_labels, ignore_index
    if ignore_index is not None and not 0 <= ignore_index < num_labels:
        rows, trash = num_labels + 1, num_labels
        true = true.masked_fill(true == ignore_index, trash)
    if true.numel():
        t_min, t_max = torch.aminmax(true)
        in_range = (t_min >= 0) & (t_max < rows)
        if hard:  # gamma's argmax is in range by construction
            p_min, p_max = torch.aminmax(pred)
            in_range &= (p_min >= 0) & (p_max < num_pred)
        # Asynchronous on CUDA: fails later instead of syncing here; immediate on CPU.
        torch._assert_async(in_range, "labels outside [0, num_labels): raise num_labels")

    cell = torch.add(pred, true, alpha=num_pred)  # (B, N) flat index of (true, pred) within each image
    counts = torch.zeros(B, rows * num_pred, dtype=torch.float64, device=true.device)
    counts.scatter_add_(1, cell, counts.new_ones(1, 1).expand_as(cell))
    counts = counts.view(B, rows, num_pred)  # (B, rows, C)
    if trash is not None:  # slices, not a boolean mask: a mask index would sync on CUDA
        counts = torch.cat([counts[:, :trash], counts[:, trash + 1 :]], 1)  # (B, R, C) without ignored pixels
    return counts, n_max


def _emi_tables(n_max: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """log k! for k in [0, n_max], sliding windows (rows, W) of log-factorial terms, and windows of log x.

    The stacked windows hold three blocks: log x - log x! (so the bag below yields log(x P(x))), -log x!, and
    the reversed -log (x - w)!. Entries outside [0, n_max] are -inf, which zeroes the terms outside the
    support without masks; padding keeps every window in range.
    """
    pad = width + 1
    k = torch.arange(n_max + 1, dtype=torch.float64, device=device)
    log_fact = torch.lgamma(k + 1)  # (M+1,)
    edge = torch.full((pad,), -math.inf, dtype=torch.float64, device=device)
    neg = torch.cat([edge, -log_fact, edge])  # (M+1+2pad,) -log k! at index k + pad
    weighted = torch.cat([edge, k.log() - log_fact, edge])  # log k - log k!, -inf at k = 0
    windows = torch.cat([t.unfold(0, width, 1) for t in (weighted, neg, neg.flip(0))]).contiguous()  # (3 rows, W)
    zero = torch.zeros(pad, dtype=torch.float64, device=device)
    log_x = torch.cat([zero, k.clamp(min=1).log(), zero]).unfold(0, width, 1).contiguous()  # (rows, W)
    return log_fact, windows, log_x


def _expected_mutual_info(a: Tensor, b: Tensor, n: Tensor, n_max: int) -> Tensor:
    """Expected mutual information of two labelings with the given marginals, as sklearn computes it.

    EMI = sum_ij sum_x P(x) x/N log(x / mu) with x hypergeometric(N, a_i, b_j) and mu = a_i b_j / N. The
    sum over x runs on a window of static width W around mu (the whole support when it fits), so every cell
    of every image is one row of a (cells, W) grid; one ``embedding_bag`` sums the four log-factorial windows
    of log(x P(x)) per row.

    Args:
        a: row marginals (B, R) float64 holding integers.
        b: column marginals (B, C) float64 holding integers.
        n: scored pixels per image (B,) float64.
        n_max: static upper bound on ``n``.

    Returns:
        EMI per image (B,) float64.
    """
    B, R, C = a.shape[0], a.shape[1], b.shape[1]
    # Support length <= min(a, b, N-a, N-b) + 1 <= N/2 + 1; past that, Serfling's bound decides the width.
    width = min(2 * math.ceil(math.sqrt(_TAIL_LOG * (n_max + 2) / 8)) + 3, n_max // 2 + 2)
    pad = width + 1
    log_fact, windows, log_x = _emi_tables(n_max, width, a.device)
    block = windows.shape[0] // 3  # rows per block; block 2 row (n_max + pad - x) starts at -log x!

    ai, bj, N = a.long()[:, :, None], b.long()[:, None, :], n.long()[:, None, None]  # (B,R,1) (B,1,C) (B,1,1)
    ai, bj, N = (t.flatten() for t in torch.broadcast_tensors(ai, bj, N))  # (B*R*C,) one row per cell
    lo = (ai + bj - N).clamp(min=1)
    hi = torch.minimum(ai, bj)
    mode = ai * bj // N.clamp(min=1)
    start = torch.maximum(lo, torch.minimum(mode - width // 2, hi - width + 1))  # window [start, start+W)
    # log(x P(x)) - log_const = log x - log x! - log (N-a-b+x)! - log (a-x)! - log (b-x)!,  x = start + w
    log_const = log_fact[ai] + log_fact[bj] + log_fact[N - ai] + log_fact[N - bj] - log_fact[N]  # (cells,)
    rev = 2 * block + n_max + pad
    rows = torch.stack([start + pad, block + N - ai - bj + start + pad, rev - ai + start, rev - bj + start], 1)
    sums = torch.empty(2, rows.shape[0], dtype=torch.float64, device=a.device)  # E[x], E[x log x] per cell
    chunk = max(1, _CHUNK_ELEMENTS // width)  # bounds the (chunk, W) temporary
    for s in range(0, rows.shape[0], chunk):  # static trip count: depends on shapes only
        r = rows[s : s + chunk]
        xp = F.embedding_bag(r, windows, mode="sum").add_(log_const[s : s + chunk, None]).exp_()  # (chunk, W)
        sums[0, s : s + chunk] = xp.sum(-1)
        sums[1, s : s + chunk] = torch.einsum("cw,cw->c", xp, log_x.index_select(0, r[:, 0]))
    mu = (ai * bj).double() / N.clamp(min=1)  # float64: long / long would give float32
    # E[x log x] - E[x] log mu from the same terms, as sklearn sums x log(x / mu): rounding in P cancels.
    emi = (sums[1] - torch.special.xlogy(sums[0], mu)) / N.clamp(min=1)  # (cells,)
    return emi.view(B, R * C).sum(-1)


def _ami_compute(counts: Tensor, n_max: int, average_method: AverageMethod = "max") -> tuple[Tensor, Tensor]:
    """Per-image AMI from contingency tables, with sklearn's special cases and sign-preserving clamps.

    Args:
        counts: contingency (B, R, C) float64.
        n_max: static upper bound on pixels per image.
        average_method: entropy normaliser, one of max, arithmetic, geometric, min.

    Returns:
        AMI (B,) float64, 0 where not valid, and valid (B,) bool: images with at least one scored pixel.
    """
    _check_average_method(average_method)
    a, b = counts.sum(2), counts.sum(1)  # (B, R), (B, C)
    n = a.sum(1)  # (B,)
    n_safe = n.clamp(min=1)
    slog = lambda x: torch.special.xlogy(x, x).flatten(1).sum(1)  # noqa: E731  sum x log x, 0 log 0 = 0
    mi = ((slog(counts) - slog(a) - slog(b)) / n_safe + n_safe.log()).clamp(min=0)
    h_true = n_safe.log() - slog(a) / n_safe
    h_pred = n_safe.log() - slog(b) / n_safe
    if average_method == "max":
        norm = torch.maximum(h_true, h_pred)
    elif average_method == "min":
        norm = torch.minimum(h_true, h_pred)
    elif average_method == "arithmetic":
        norm = (h_true + h_pred) / 2
    else:
        norm = (h_true * h_pred).sqrt()
    emi = _expected_mutual_info(a, b, n, n_max)
    # sklearn keeps the signs of both differences and clamps their size to at least eps.
    den, num = norm - emi, mi - emi
    den = torch.where(den < 0, den.clamp(max=-_EPS), den.clamp(min=_EPS))
    num = torch.where(num < 0, num.clamp(max=-_EPS), num.clamp(min=_EPS))
    classes, clusters = (a > 0).sum(1), (b > 0).sum(1)
    ami = torch.where((classes == 1) | (clusters == 1), 0.0, num / den)  # one side unsplit: no information
    ami = torch.where((classes == 1) & (clusters == 1), 1.0, ami)  # neither side split: a perfect match
    valid = n > 0
    return ami.masked_fill(~valid, 0.0), valid


def _ari_compute(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image ARI from contingency tables via sklearn's pair confusion matrix, in float64.

    Args:
        counts: contingency (B, R, C) float64.

    Returns:
        ARI (B,) float64, 0 where not valid, and valid (B,) bool.
    """
    n = counts.sum((1, 2))  # (B,)
    sum_sq = counts.square().sum((1, 2))
    tp = sum_sq - n
    fp = counts.sum(1).square().sum(1) - sum_sq
    fn = counts.sum(2).square().sum(1) - sum_sq
    tn = n.square() - fp - fn - sum_sq
    num = 2.0 * (tp * tn - fn * fp)
    den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    ari = torch.where(den == 0, 0.0, num / den)
    ari = torch.where((fn == 0) & (fp == 0), 1.0, ari)  # full agreement (sklearn's special case)
    valid = n > 0
    return ari.masked_fill(~valid, 0.0), valid


def adjusted_mutual_info(
    preds: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = 0,
    average_method: AverageMethod = "max",
    num_labels: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-image adjusted mutual information, matching sklearn's ``adjusted_mutual_info_score``.

    Args:
        preds: soft assignments gamma (B, K, *spatial) float (label = argmax over K) or labels (B, *spatial).
        target: true labels (B, *spatial), integer or float holding integers.
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
        average_method: entropy normaliser: max (the paper's), arithmetic, geometric or min.
        num_labels: static bound on true (and hard predicted) labels; ``None`` reads it from the data (a sync).

    Returns:
        AMI (B,) float64 (0 where not valid) and valid (B,) bool: images with at least one scored pixel.
    """
    counts, n_max = _grouping_update(preds, target, ignore_index, num_labels)
    return _ami_compute(counts, n_max, average_method)


def adjusted_rand_index(
    preds: Tensor, target: Tensor, *, ignore_index: int | None = 0, num_labels: int | None = None
) -> tuple[Tensor, Tensor]:
    """Per-image adjusted Rand index (foreground ARI with the default ``ignore_index=0``).

    Args:
        preds: soft assignments gamma (B, K, *spatial) float or labels (B, *spatial).
        target: true labels (B, *spatial), integer or float holding integers.
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
        num_labels: static bound on true (and hard predicted) labels; ``None`` reads it from the data (a sync).

    Returns:
        ARI (B,) float64 (0 where not valid) and valid (B,) bool.
    """
    counts, _ = _grouping_update(preds, target, ignore_index, num_labels)
    return _ari_compute(counts)


def grouping_confidence(gamma: Tensor, target: Tensor, *, ignore_index: int | None = 0) -> tuple[Tensor, Tensor]:
    """Per-image confidence: mean over scored pixels of max_k gamma.

    Averaged per image first (then over images by the metrics), so every image weighs the same whatever its
    number of scored pixels, like AMI and ARI.

    Args:
        gamma: soft assignments (B, K, *spatial).
        target: true labels (B, *spatial), used only for the ignore mask.
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.

    Returns:
        Confidence (B,) float64 (0 where not valid) and valid (B,) bool.
    """
    if gamma.ndim != target.ndim + 1 or gamma.shape[2:] != target.shape[1:] or gamma.shape[0] != target.shape[0]:
        raise ValueError(f"gamma {tuple(gamma.shape)} must be (B, K, *spatial) for target {tuple(target.shape)}")
    conf = gamma.amax(1).to(torch.float64).flatten(1)  # (B, N)
    true = target.round() if target.is_floating_point() else target
    scored = torch.ones_like(conf, dtype=torch.bool) if ignore_index is None else (true != ignore_index).flatten(1)
    count = scored.sum(1)  # (B,)
    valid = count > 0
    return (conf * scored).sum(1) / count.clamp(min=1), valid


def grouping_scores(
    gamma: Tensor,
    target: Tensor,
    *,
    ignore_index: int | None = 0,
    average_method: AverageMethod = "max",
    num_labels: int | None = None,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-image AMI, ARI and confidence in one pass: AMI and ARI share one contingency table per image.

    Gives the values of ``adjusted_mutual_info``, ``adjusted_rand_index`` and ``grouping_confidence``
    without building the contingency tables twice.

    Args:
        gamma: soft assignments (B, K, *spatial) float.
        target: true labels (B, *spatial), integer or float holding integers.
        ignore_index: true label whose pixels are not scored; ``None`` scores every pixel.
        average_method: AMI entropy normaliser: max (the paper's), arithmetic, geometric or min.
        num_labels: static bound on true labels; ``None`` reads it from the data (a sync).

    Returns:
        Scores ``{"ami", "ari", "confidence"}``, each (B,) float64 (0 where not valid), and valid (B,) bool.
    """
    counts, n_max = _grouping_update(gamma, target, ignore_index, num_labels)
    ami, valid = _ami_compute(counts, n_max, average_method)
    ari, _ = _ari_compute(counts)
    confidence, _ = grouping_confidence(gamma, target, ignore_index=ignore_index)
    return {"ami": ami, "ari": ari, "confidence": confidence}, valid
