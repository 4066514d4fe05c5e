"""The GPU path: training updates in float32 and bf16, eager and compiled, and `nem fit`/`nem test` on CUDA.

Marked ``cuda``: they run wherever a GPU is visible (``pytest -m cuda`` runs only these) and are skipped
elsewhere. ``benchmarks/gpu_check.py`` runs them on a GPU machine.
"""

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from nem_lightning.cli import run
from nem_lightning.generators import generate_dataset
from nem_lightning.module import NEMLightningModule

CONFIG = str(Path(__file__).resolve().parent.parent / "configs" / "flying_shapes.yaml")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _flying_model(**options) -> NEMLightningModule:
    torch.manual_seed(0)
    return NEMLightningModule(
        k=3,
        steps=4,
        architecture="flying_shapes",
        input_shape=(1, 28, 28),
        hidden_size=16,
        layer_norm=True,
        noise_prob=0.2,
        step_weights="all",
        gradient_gamma=False,
        score_steps="all",
        **options,
    ).cuda()


@pytest.mark.parametrize("bf16", [False, True])
def test_flying_update_on_cuda_is_finite_and_learns(bf16):
    """Four Adam updates on one CUDA batch lower its loss, in float32 and under bf16 autocast."""
    model = _flying_model()
    frames = (torch.rand(8, 5, 1, 28, 28, device="cuda") < 0.1).float()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(4):
        torch.manual_seed(1)  # the same noise and initial gamma every time
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out, loss, _ = model.unroll_and_loss(frames)
        assert out.preds[-1].dtype == torch.float32  # the output sigmoid and E-step stay float32
        optimizer.zero_grad()
        loss.total.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.total.item())
    assert losses[-1] < losses[0]


def test_compiled_update_on_cuda_matches_eager(monkeypatch, request):
    """torch.compile of the unroll gives eager's loss and gradients on CUDA (same random draws).

    TF32 is off: the layer norms' 1e-12 epsilon rescales a near-empty component's tiny masked input to unit
    variance, so their backward amplifies TF32's 1e-3 rounding of the first conv into large gradient differences.
    """
    # compiled code draws eager's numbers; config.patch restores the setting (monkeypatch breaks later compiles)
    patch = torch._inductor.config.patch(fallback_random=True)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch._dynamo.reset()
    model = _flying_model(compile=True)
    frames = (torch.rand(4, 5, 1, 28, 28, device="cuda") < 0.1).float()
    results = []
    for step in (partial(model.unroll_and_loss, compiled=False), partial(model.unroll_and_loss, compiled=True)):
        torch.manual_seed(2)
        _, loss, _ = step(frames)
        model.zero_grad()
        loss.total.backward()
        results.append((loss.total.detach(), [p.grad.clone() for p in model.parameters()]))
    (eager, eager_grads), (compiled, grads) = results
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4)


def test_fit_and_test_on_cuda_in_bf16(tmp_path):
    """`nem fit` trains on the GPU in bf16 and `nem test` scores its checkpoint there."""
    data = generate_dataset("flying_shapes_3", tmp_path / "fs.h5", sizes=(32, 16, 16), frames=5, progress=False)
    logger = json.dumps({"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}})
    common = [
        "--config",
        CONFIG,
        "--data.path",
        str(data),
        "--model.steps",
        "4",
        "--data.num_workers",
        "0",
        "--data.val_size",
        "16",
    ]
    cli = run(
        [
            "fit",
            *common,
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
            "--data.batch_size",
            "8",
            "--trainer.precision",
            "bf16-mixed",
            "--trainer.accelerator",
            "gpu",
            "--trainer.logger",
            logger,
        ]
    )
    assert cli.trainer.global_step == 2 and cli.trainer.strategy.root_device.type == "cuda"
    ckpt = cli.trainer.checkpoint_callback.best_model_path
    cli = run(["test", *common, "--ckpt_path", ckpt, "--trainer.accelerator", "gpu", "--trainer.logger", "false"])
    scores = cli.trainer.callback_metrics
    assert scores["test/images"] == 16 and 0.0 <= scores["test/ami"] <= 1.0
