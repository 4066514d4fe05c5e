"""What each component does at the last step, from a `nem predict` output file: the figures of docs/results.md.

    nem predict --config configs/flying_shapes.yaml --ckpt_path weights/flying_shapes.ckpt --eval.k 5 \
        --data.test_size 500 --output pred.h5
    python docs/analysis/components.py pred.h5              # components used, objects split, spare components
    python docs/analysis/components.py pred.h5 --whole 3    # and the AMI of whole objects merged into 3 groups

Over the object pixels (true group > 0) of the last step of each sequence:
- components owning at least 5% of the object pixels (by argmax γ, the file's ``mask``), as a count per sequence;
- objects split: a second component wins at least 20% of the object's pixels; and the share of an object's pixels
  in its main component;
- the two least-used components (K ≥ 5: those beyond the three most-used): object pixels they win, their summed γ
  on object pixels, and their peak ψ anywhere in the frame;
- ``--whole G``: no model, the true groups only: every object given wholly to one of G groups, for each way to split
  the objects into G non-empty groups, scored by the project's AMI; the best way per sequence, the average way and
  the worst, averaged over sequences.
"""

from __future__ import annotations

import argparse
import itertools

import h5py
import numpy as np
import torch

from nem_lightning.metrics import adjusted_mutual_info


def usage(path: str) -> None:
    with h5py.File(path, "r") as f:
        mask, groups = f["mask"][:, -1], f["groups"][:, -1]
        gamma, pred, ami = f["gamma"][:, -1], f["pred"][:, -1, :, 0], f["ami"][:]
    K = gamma.shape[1]
    used, split, share, spare_won, spare_gamma, spare_peak = [], [], [], [], [], []
    for m, g, ga, p in zip(mask, groups, gamma, pred):
        fg = g > 0
        counts = np.bincount(m[fg], minlength=K)
        used.append(int((counts >= 0.05 * fg.sum()).sum()))
        for obj in np.unique(g[fg]):
            c = np.sort(np.bincount(m[g == obj], minlength=K))[::-1]
            share.append(c[0] / c.sum())
            split.append(len(c) > 1 and c[1] >= 0.2 * c.sum())
        if K >= 5:
            spare = np.argsort(counts)[::-1][3:]
            spare_won.append(counts[spare].sum() / fg.sum())
            spare_gamma.append(ga[spare][:, fg].sum(0).mean())
            spare_peak.append(p[spare].max(axis=(1, 2)).mean())
    print(f"{path}: K = {K}, {len(mask)} sequences, last-step AMI {np.nanmean(ami):.3f}")
    per_count = np.bincount(used, minlength=K + 1)[1:]
    print(f"  components owning >= 5% of the object pixels, sequences with 1..{K}: {per_count}")
    print(f"  objects split: {np.mean(split):.1%}; share of an object in its main component: {np.mean(share):.3f}")
    if spare_won:
        print(
            f"  the two least-used components: object pixels won {np.mean(spare_won):.2%}, their gamma on object "
            f"pixels {np.mean(spare_gamma):.1%}, their peak psi {np.mean(spare_peak):.2f}"
        )


def labellings(objects: int, groups: int) -> list[tuple[int, ...]]:
    """Every way to put ``objects`` objects into exactly ``groups`` non-empty unlabelled groups."""
    ways = set()
    for labels in itertools.product(range(groups), repeat=objects):
        if len(set(labels)) == groups:
            first: dict[int, int] = {}
            ways.add(tuple(first.setdefault(x, len(first)) for x in labels))
    return sorted(ways)


def whole_objects(path: str, groups_k: int) -> None:
    with h5py.File(path, "r") as f:
        groups = torch.from_numpy(f["groups"][:, -1].astype(np.int64))
    ways = labellings(int(groups.max()), groups_k)
    scores = []
    for labels in ways:
        assign = torch.tensor([0, *labels])[groups]  # background: any group, it is not scored
        gamma = torch.nn.functional.one_hot(assign, groups_k).permute(0, 3, 1, 2).float()
        ami, valid = adjusted_mutual_info(gamma, groups)
        scores.append(torch.where(valid, ami, torch.nan).numpy())
    s = np.stack(scores)
    print(
        f"  whole objects in {groups_k} groups ({len(ways)} ways): best way {np.nanmean(np.nanmax(s, 0)):.3f}, "
        f"average way {np.nanmean(s):.3f}, worst way {np.nanmean(np.nanmin(s, 0)):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", help="nem predict output files (with groups)")
    parser.add_argument("--whole", type=int, metavar="G", help="also score whole objects merged into G groups")
    args = parser.parse_args()
    for path in args.predictions:
        usage(path)
        if args.whole:
            whole_objects(path, args.whole)


if __name__ == "__main__":
    main()
