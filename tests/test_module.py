"""The LightningModule: NaN losses stop the run; the compiled unroll matches eager; evaluation logs its losses."""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from nem_lightning.errors import ConfigError, TrainingError
from nem_lightning.losses import upper_bound_per_step
from nem_lightning.module import NEMLightningModule


def _model(**options) -> NEMLightningModule:
    torch.manual_seed(0)
    return NEMLightningModule(k=2, steps=3, input_shape=(1, 6, 6), hidden_size=8, **options)


def test_compiled_unroll_and_loss_match_eager_values_and_gradients(request):
    """model.compile gives the same loss, predictions and gradients as eager (same random draws)."""
    # compiled code draws eager's numbers; config.patch restores the setting (monkeypatch breaks later compiles)
    patch = torch._inductor.config.patch(fallback_random=True)
    patch.__enter__()
    request.addfinalizer(lambda: patch.__exit__(None, None, None))
    torch._dynamo.reset()
    model = _model(compile=True)
    frames = (torch.rand(4, 1, 1, 6, 6) < 0.3).float()
    results = []
    for run in (partial(model.unroll_and_loss, compiled=False), partial(model.unroll_and_loss, compiled=True)):
        torch.manual_seed(1)
        out, loss, upper = run(frames)
        model.zero_grad()
        loss.total.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.total.detach(), upper, out.stacked_gammas(), grads))
    assert model._compiled is not None
    (eager_loss, eager_upper, eager_gammas, eager_grads), (loss, upper, gammas, grads) = results
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(upper, eager_upper)
    torch.testing.assert_close(gammas, eager_gammas)
    for got, expected in zip(grads, eager_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_a_failed_compile_is_one_readable_error(monkeypatch):
    """Without a working compiler the run stops with a ConfigError naming model.compile."""

    def broken(*args, **kwargs):
        def compiled(*a, **k):
            failure = RuntimeError("no C++ compiler found\nlong details")
            raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, failure, None)

        return compiled

    monkeypatch.setattr(torch, "compile", broken)
    model = _model(compile=True)
    batch = {"features": torch.zeros(2, 1, 1, 6, 6)}
    with pytest.raises(ConfigError, match=r"model.compile: .*\(no C\+\+ compiler found\); set --model.compile false"):
        model._shared_step(batch, "train")


def test_evaluation_stays_eager(monkeypatch):
    """Validation never goes through torch.compile (its batch sizes and grad mode would recompile)."""
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled during evaluation"))
    model = _model(compile=True)
    model.eval()
    with torch.no_grad():
        model._shared_step({"features": torch.zeros(2, 1, 1, 6, 6)}, "val")
    assert model._compiled is None


def test_non_finite_loss_stops_with_a_training_error():
    """A NaN loss raises TrainingError (one line from the CLI), not a silent NaN run."""
    model = NEMLightningModule(k=2, steps=2, input_shape=(1, 4, 4), hidden_size=8)
    with torch.no_grad():
        model.em.cell.input_weights.weight.fill_(float("nan"))
    batch = {"features": torch.zeros(2, 1, 1, 4, 4)}
    with pytest.raises(TrainingError, match="the train loss became nan"):
        model._shared_step(batch, "train")


def test_layer_norm_epsilon_is_a_checked_model_option():
    """model.layer_norm_eps defaults to the original's 1e-12 and must lie in (0, 1)."""
    assert _model().hparams.layer_norm_eps == 1e-12
    with pytest.raises(ConfigError, match=r"model.layer_norm_eps must lie in \(0, 1\), got 0.0"):
        _model(layer_norm_eps=0.0)


def _batches(sizes, frames):
    """Evaluation batches of binary frames (B, F, C, H, W) with groups (B, F, H, W), indexed like the data module's."""
    torch.manual_seed(2)
    batches, start = [], 0
    for size in sizes:
        index = torch.arange(start, start + size)
        features = (torch.rand(size, frames, 1, 6, 6) < 0.3).float()
        groups = torch.randint(0, 3, (size, frames, 6, 6))
        batches.append({"features": features, "groups": groups, "index": index, "draw_index": index.tolist()})
        start += size
    return batches


@pytest.mark.parametrize(("stage", "k", "frames"), [("val", 2, 4), ("test", 1, 4), ("test", 2, 1)])
def test_evaluation_logs_the_last_and_mean_upper_bound_as_sample_means(stage, k, frames):
    """val/ and test/ log upper_bound_last and upper_bound_mean for any K, video or static, as means over samples."""
    model = NEMLightningModule(k=k, steps=3, input_shape=(1, 6, 6), hidden_size=8)
    batches = _batches([3, 1], frames)  # uneven batches: a mean of batch means would weigh the 1 sample thrice
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    loader = DataLoader(batches, batch_size=None)
    (trainer.validate if stage == "val" else trainer.test)(model, dataloaders=loader, verbose=False)
    metrics = trainer.callback_metrics
    assert {f"{stage}/{name}" for name in ("upper_bound", "upper_bound_last", "upper_bound_mean")} <= set(metrics)
    assert (f"{stage}/next_frame_loss" in metrics) == (frames > 1)  # today's names stay as they were
    with torch.no_grad():  # the same per-sample draws, batch by batch, weighted by the batch's samples
        per_batch = [
            upper_bound_per_step(out.preds, out.targets, "bernoulli")
            for out in (model(b["features"], model._draws(b, stage)) for b in batches)
        ]
    assert (per_batch[0] - per_batch[1]).abs().min() > 0.1  # so the weighting is tested
    expected = (3 * per_batch[0] + per_batch[1]) / 4  # (T,)
    torch.testing.assert_close(metrics[f"{stage}/upper_bound_last"], expected[-1])
    torch.testing.assert_close(metrics[f"{stage}/upper_bound_mean"], expected.mean())
    parts = [f"{stage}/upper_bound_last_{name}" for name in ("kept_on", "appeared", "vanished", "kept_off")]
    assert all(name in metrics for name in parts) == (frames > 1)  # video only: a static image does not change
    if frames > 1:
        torch.testing.assert_close(sum(metrics[name] for name in parts), expected[-1])
