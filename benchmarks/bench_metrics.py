"""Batched grouping metrics against the paper's per-image sklearn loop.

Scores 64 sequences x 20 steps of 28x28 frames (random gamma, random groups 0..K) for K = 3 and K = 5, and
prints, for each K, the time of the batched AMI and ARI, of the full sequence metric (AMI + ARI + confidence),
of sklearn's ``adjusted_mutual_info_score(average_method="max")`` over the 1280 images, and the speed-up
measured in the same run. Batched timings are the best of ``--repeats`` calls, the sklearn loop the best of
two. CUDA timings are added when a GPU is visible.

Run: python benchmarks/bench_metrics.py [--threads N] [--repeats R]   (--threads 0: torch's default)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import adjusted_mutual_info_score

from nem_lightning.metrics import SequenceGroupingMetrics, adjusted_mutual_info, adjusted_rand_index

B, T, H, W = 64, 20, 28, 28


def best_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls after one warm-up, synchronising CUDA around each call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def sklearn_loop(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The paper's scoring: per image, drop group-0 pixels, then sklearn AMI with the max normaliser."""
    scores = np.empty(len(true))
    for i in range(len(true)):
        keep = true[i] != 0
        scores[i] = adjusted_mutual_info_score(true[i][keep], pred[i][keep], average_method="max")
    return scores


def run(K: int, device: torch.device, repeats: int, sklearn_s: float | None) -> float:
    """Time the batched metrics for one K on one device; return the sklearn time used for the ratio."""
    g = torch.Generator().manual_seed(K)
    gamma = torch.softmax(torch.randn(B, T, K, H, W, generator=g), dim=2).to(device)  # (B, T, K, H, W)
    groups = torch.randint(0, K + 1, (B, T, H, W), generator=g).to(device)  # (B, T, H, W)
    flat_gamma, flat_groups = gamma.flatten(0, 1), groups.flatten(0, 1)  # (B*T, K, H, W), (B*T, H, W)

    t_ami = best_time(lambda: adjusted_mutual_info(flat_gamma, flat_groups, num_labels=K + 1), repeats, device)
    t_ari = best_time(lambda: adjusted_rand_index(flat_gamma, flat_groups, num_labels=K + 1), repeats, device)
    seq = SequenceGroupingMetrics(num_steps=T, step_weights="all", num_labels=K + 1).to(device)

    def sequence_pass() -> dict[str, torch.Tensor]:
        seq.reset()
        seq.update(gamma, groups)
        return seq.compute()

    t_seq = best_time(sequence_pass, repeats, device)
    if sklearn_s is None:
        pred = flat_gamma.argmax(1).flatten(1).cpu().numpy()
        true = flat_groups.flatten(1).cpu().numpy()
        sklearn_times = []
        for _ in range(2):  # best of two, as the batched timings keep their best call
            start = time.perf_counter()
            ref = sklearn_loop(pred, true)
            sklearn_times.append(time.perf_counter() - start)
        sklearn_s = min(sklearn_times)
        ours, _ = adjusted_mutual_info(flat_gamma, flat_groups, num_labels=K + 1)
        print(f"  max |AMI - sklearn| over {len(ref)} images: {np.abs(ours.cpu().numpy() - ref).max():.1e}")
    print(
        f"  K={K} {device.type:4s}  AMI {t_ami * 1e3:7.1f} ms   ARI {t_ari * 1e3:7.1f} ms   "
        f"sequence metric (AMI+ARI+conf) {t_seq * 1e3:7.1f} ms   sklearn AMI loop {sklearn_s * 1e3:7.0f} ms   "
        f"speed-up AMI {sklearn_s / t_ami:6.0f}x  (sequence metric {sklearn_s / t_seq:5.0f}x)"
    )
    return sklearn_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # One thread by default: the sklearn loop runs on one core, so the ratio compares like with like.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (best is kept)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{B} sequences x {T} steps of {H}x{W} = {B * T} images; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    for K in (3, 5):
        sklearn_s = run(K, torch.device("cpu"), args.repeats, None)
        if torch.cuda.is_available():
            run(K, torch.device("cuda"), args.repeats, sklearn_s)
    if not torch.cuda.is_available():
        print("  CUDA not available: GPU timings skipped")


if __name__ == "__main__":
    main()
