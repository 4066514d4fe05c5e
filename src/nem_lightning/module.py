"""The LightningModule: unrolls Neural EM, computes the outer loss, logs losses and grouping scores.

Run it with ``nem fit --config configs/shapes.yaml``; score it with
``nem test --config configs/shapes.yaml --ckpt_path <checkpoint>``.
"""

from __future__ import annotations

from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from nem_lightning.data import inspect_split
from nem_lightning.em import Distribution, EMOutput, NeuralEM, Noise, SampleDraws
from nem_lightning.errors import ConfigError, DataError, TrainingError
from nem_lightning.losses import (
    PIXEL_CHANGES,
    OuterLoss,
    StepWeights,
    next_frame_loss,
    outer_loss,
    step_weights,
    upper_bound_by_change,
    upper_bound_loss,
    upper_bound_per_step,
)
from nem_lightning.metrics import SequenceGroupingMetrics
from nem_lightning.networks import Architecture, MStep, build_cell

Stage = Literal["train", "val", "test", "predict"]
EVAL_SPLITS = {"val": 1, "test": 2, "predict": 2}  # the file split each stage reads, keying its random streams
SPLITS_READ = {"fit": ("training", "validation"), "validate": ("validation",), "test": ("test",), "predict": ("test",)}
# Logged per stage. Evaluation adds the upper bound of the last step (the original's printed "loss UB last",
# its next-step prediction error on video), its unweighted mean over steps and, on video, its four parts by how
# the pixels change (upper_bound_by_change); docs/next_step_prediction.md.
LOSSES = (
    "loss",
    "intra",
    "inter",
    "upper_bound",
    "upper_bound_last",
    "upper_bound_mean",
    "next_frame_loss",
    *(f"upper_bound_last_{name}" for name in PIXEL_CHANGES),
)


class NEMLightningModule(pl.LightningModule):
    """Neural Expectation Maximization (RNN-EM or N-EM) trained on the outer loss.

    Args:
        k: number of mixture components K (may differ between training and test).
        steps: number of EM steps T unrolled per sample.
        m_step: ``rnn_em`` (learned recurrent update) or ``n_em`` (one gradient step, tied weights).
        architecture: encoder/decoder of the M-step: ``fc`` (static shapes: pixels straight into the RNN,
            fully connected decoder), ``flying_shapes`` or ``flying_mnist`` (the paper's conv networks).
        input_shape: (C, H, W) of one frame; must match the data.
        hidden_size: width of the recurrent state (250 in the paper's static experiments).
        layer_norm: layer norm on the RNN pre-activation, read by the decoder.
        layer_norm_eps: variance epsilon of every layer norm (conv layers and the RNN). The original's TF
            layer norm used 1e-12, so a component whose masked input is tiny still sees its pattern at
            unit scale; torch's usual 1e-5 would flatten it.
        distribution: pixel likelihood: ``bernoulli`` (binary data) or ``gaussian`` (grey data).
        noise: input corruption: ``bitflip``, ``masked_uniform`` or ``none``.
        noise_prob: probability of the noise per pixel (0.1 for static shapes, 0.2 elsewhere).
        e_sigma: standard deviation of the Gaussian E-step.
        w_inter: weight of the inter-component (prior) term of the loss.
        step_weights: loss weight per step: ``last``, ``all``, or a list of T numbers.
        gradient_gamma: let gradients flow through gamma (static data); false stops them (video).
        score_steps: which steps the reported ``ami``/``ari`` average: ``last`` (static) or ``all`` (video).
        lr: Adam learning rate.
        eval_seed: seed of evaluation's randomness. Validation, test and predict draw each sample's noise and
            initial gamma from its own stream, keyed by (eval_seed, split, sample index), so scores do not depend
            on batch size, process count or what ran before. Training draws from the global stream.
        compile: run the training unroll and its loss through ``torch.compile`` (fuses the many small per-pixel
            operations; usually 1.3-1.5x faster per step on CPU, see benchmarks/RESULTS.md; one-off compile of
            about a minute per batch shape). Validation, test and predict stay eager. Needs a working C++ compiler
            on CPU. Slower than eager for the convolutional flying models on CPU (benchmarks/RESULTS.md).
        compile_mode: ``torch.compile`` mode when ``compile`` is on: ``default``, ``reduce-overhead`` (CUDA
            graphs, which remove the per-kernel launch cost that dominates on a GPU) or ``max-autotune``.
    """

    def __init__(
        self,
        k: int = 4,
        steps: int = 15,
        m_step: MStep = "rnn_em",
        architecture: Architecture = "fc",
        input_shape: tuple[int, int, int] = (1, 28, 28),
        hidden_size: int = 250,
        layer_norm: bool = False,
        layer_norm_eps: float = 1e-12,
        distribution: Distribution = "bernoulli",
        noise: Noise = "bitflip",
        noise_prob: float = 0.1,
        e_sigma: float = 0.25,
        w_inter: float = 1.0,
        step_weights: StepWeights = "last",
        gradient_gamma: bool = True,
        score_steps: Literal["last", "all"] = "last",
        lr: float = 1e-3,
        eval_seed: int = 0,
        compile: bool = False,
        compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default",
    ) -> None:
        super().__init__()
        if k < 1 or steps < 1:
            raise ConfigError(f"model.k and model.steps must be at least 1, got k={k}, steps={steps}")
        if hidden_size < 1:
            raise ConfigError(f"model.hidden_size must be at least 1, got {hidden_size}")
        if not 0.0 <= noise_prob <= 1.0:
            raise ConfigError(f"model.noise_prob must lie in [0, 1], got {noise_prob}")
        if m_step == "n_em" and distribution != "bernoulli":
            raise ConfigError(
                "model.m_step=n_em implements the Bernoulli gradient step; set model.distribution=bernoulli"
            )
        if lr <= 0 or e_sigma <= 0:
            raise ConfigError(f"model.lr and model.e_sigma must be positive, got lr={lr}, e_sigma={e_sigma}")
        if not 0.0 < layer_norm_eps < 1.0:
            raise ConfigError(f"model.layer_norm_eps must lie in (0, 1), got {layer_norm_eps}")
        self.save_hyperparameters()
        self.weights = self._step_weights(step_weights, steps)
        cell = build_cell(
            m_step,
            architecture,
            tuple(input_shape),
            hidden_size,
            layer_norm,
            distribution == "bernoulli",
            layer_norm_eps,
        )
        self.em = NeuralEM(cell, distribution, noise, noise_prob, e_sigma, gradient_gamma)
        self.val_scores = SequenceGroupingMetrics(steps, score_steps)
        self.test_scores = SequenceGroupingMetrics(steps, score_steps)
        # Evaluation losses are means over samples, reduced as sums and counts over processes like the scores:
        # Lightning's sync_dist would average the per-process means, which weighs an uneven split wrongly.
        self.val_losses = nn.ModuleDict({name: MeanMetric() for name in LOSSES})
        self.test_losses = nn.ModuleDict({name: MeanMetric() for name in LOSSES})
        self._compiled = None  # built on first use: a plain function, so the state dict is unchanged
        self.test_ami_per_step: Tensor | None = None  # (T,) AMI of each EM step from the last `nem test`
        # Where the number of steps came from, for error messages: `nem` sets "--eval.steps" or "checkpoint".
        self.steps_option: Literal["model.steps", "--eval.steps", "checkpoint"] = "model.steps"

    def setup(self, stage: str) -> None:
        # A known label bound lets the metrics score without a host synchronisation per batch.
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        labels = getattr(datamodule, "num_labels", None)
        for scores in (self.val_scores, self.test_scores):
            scores.num_labels = labels
        path = getattr(datamodule, "path", None)
        for split in SPLITS_READ.get(stage, ()) if path is not None else ():
            try:
                frames = inspect_split(path, split, require_groups=False)["frames"]
            except DataError:
                continue  # a missing split is reported, with its own message, when the loader reads it
            self._check_frame_count(frames, f"{path}: the {split} sequences have {frames} frames")

    def _check_frame_count(self, frames: int, what: str) -> None:
        """Video needs one frame more than EM steps (step t predicts frame t + 1); static data has one frame."""
        steps = self.hparams.steps
        if frames == 1 or frames >= steps + 1:
            return
        named = {
            "model.steps": f"model.steps={steps}",
            "--eval.steps": f"--eval.steps {steps}",
            "checkpoint": f"the checkpoint's model.steps={steps}",
        }[self.steps_option]
        hint = "; evaluate fewer steps with --eval.steps" if self.steps_option == "checkpoint" else ""
        raise DataError(f"{what}, but {named} needs at least {steps + 1}{hint}")

    @staticmethod
    def _step_weights(weights: StepWeights, steps: int) -> list[float]:
        try:
            return step_weights(weights, steps)
        except ValueError as err:
            raise ConfigError(str(err)) from None

    def forward(self, features: Tensor, draws: SampleDraws | None = None) -> EMOutput:
        """Unroll EM on (B, F, C, H, W) frames: F = 1 for static data, F >= steps + 1 for video."""
        self._check_frames(features)
        return self.em(features, self.hparams.k, self.hparams.steps, draws)

    def unroll_and_loss(
        self, features: Tensor, draws: SampleDraws | None = None, compiled: bool | None = None
    ) -> tuple[EMOutput, OuterLoss, Tensor]:
        """The loss of a batch: what a training step computes before its backward, for benchmarks and own loops.

        Args:
            features: (B, F, C, H, W) frames, F = 1 for static data, F >= steps + 1 for video.
            draws: per-sample random streams for the noise and initial γ (evaluation); None draws from the
                global stream, as training does.
            compiled: through ``torch.compile`` (``model.compile``'s path; not with ``draws``); None follows
                ``model.compile`` while the module is in training mode.

        Returns:
            The unroll's output (γ and ψ of every step), the outer loss (``total``, ``intra``, ``inter``) and
            the gradient-free upper-bound loss.
        """
        self._check_frames(features)
        if compiled is None:
            compiled = self.hparams.compile and self.training and draws is None
        if compiled:
            return self._compiled_unroll_and_loss(features)
        return self._eager_unroll_and_loss(features, draws)

    def _eager_unroll_and_loss(
        self, features: Tensor, draws: SampleDraws | None = None
    ) -> tuple[EMOutput, OuterLoss, Tensor]:
        hp = self.hparams
        out = self.em(features, hp.k, hp.steps, draws)
        loss = outer_loss(
            out.preds, out.gammas, out.targets, hp.distribution, self.weights, hp.w_inter, hp.gradient_gamma
        )
        with torch.no_grad():
            upper = upper_bound_loss(out.preds, out.targets, hp.distribution, self.weights)
        return out, loss, upper

    def _compiled_unroll_and_loss(self, features: Tensor) -> tuple[EMOutput, OuterLoss, Tensor]:
        if self._compiled is None:
            # static shapes: one graph per batch size (the full batches and the epoch's last one)
            self._compiled = torch.compile(self._eager_unroll_and_loss, dynamic=False, mode=self.hparams.compile_mode)
        if self.hparams.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # the previous update's graph outputs are no longer read
        try:
            return self._compiled(features)
        except torch._dynamo.exc.BackendCompilerFailed as err:
            lines = str(err.inner_exception).strip().splitlines()
            reason = lines[0] if lines else type(err.inner_exception).__name__
            raise ConfigError(
                f"model.compile: torch.compile could not build the unroll ({reason}); set --model.compile false"
            ) from None

    def _check_frames(self, features: Tensor) -> None:
        shape, frames = tuple(features.shape[2:]), features.shape[1]
        if shape != tuple(self.hparams.input_shape):
            raise DataError(
                f"the data's frames are (C, H, W) = {shape} but model.input_shape is {tuple(self.hparams.input_shape)}"
            )
        self._check_frame_count(frames, f"the sequences have {frames} frames")

    def _shared_step(self, batch: dict[str, Tensor], stage: Stage) -> Tensor:
        hp, train = self.hparams, stage == "train"
        out, loss, upper = self.unroll_and_loss(
            batch["features"], self._draws(batch, stage), compiled=train and hp.compile
        )
        if not torch.isfinite(loss.total):
            raise TrainingError(f"the {stage} loss became {loss.total.item()}; lower model.lr or check the data")
        logged = {"loss": loss.total, "intra": loss.intra, "inter": loss.inter, "upper_bound": upper}
        if not train:  # any K, static or video: the max over K needs no grouping
            per_step = upper_bound_per_step(out.preds, out.targets, hp.distribution)  # (T,)
            logged["upper_bound_last"], logged["upper_bound_mean"] = per_step[-1], per_step.mean()
        if not train and batch["features"].shape[1] > 1 and hp.steps > 1:  # video: genuine next-frame prediction
            logged["next_frame_loss"] = next_frame_loss(out.preds, out.gammas, out.targets, hp.distribution)
            read = batch["features"][:, len(out.preds) - 1]  # the clean frame the last step read
            parts = upper_bound_by_change(out.preds[-1], read, out.targets[:, -1], hp.distribution)
            logged.update({f"upper_bound_last_{name}": value for name, value in parts.items()})
        size = batch["features"].shape[0]
        if stage in ("val", "test"):
            means = self.val_losses if stage == "val" else self.test_losses
            for name, value in logged.items():
                means[name].update(value.detach().float(), size)  # weighted by the batch's samples
                self.log(f"{stage}/{name}", means[name], on_step=False, on_epoch=True, prog_bar=name == "loss")
        else:
            options = dict(on_step=train, on_epoch=not train, batch_size=size)
            self.log(f"{stage}/loss", loss.total.detach(), prog_bar=True, **options)
            self.log_dict({f"{stage}/{n}": v.detach() for n, v in logged.items() if n != "loss"}, **options)
        if stage in ("val", "test") and "groups" in batch:
            scores = self.val_scores if stage == "val" else self.test_scores
            scores.update(out.stacked_gammas().squeeze(3), self._scored_groups(batch["groups"]))
        return loss.total

    def _draws(self, batch: dict[str, Any], stage: Stage) -> SampleDraws | None:
        """Per-sample random streams for evaluation (predict reads the test split, so it draws as test does)."""
        indices = batch.get("draw_index")
        if stage == "train" or (indices is None and "index" not in batch):
            return None
        if indices is None:
            indices = batch["index"].tolist()
        split = EVAL_SPLITS[stage]
        return SampleDraws([(self.hparams.eval_seed, split, i) for i in indices])

    def _scored_groups(self, groups: Tensor) -> Tensor:
        """Groups each step's gamma is scored against: step t predicts frame t + 1. (B, T or 1, H, W)."""
        return groups if groups.shape[1] == 1 else groups[:, 1 : self.hparams.steps + 1]

    def _log_scores(self, scores: SequenceGroupingMetrics, stage: Stage) -> None:
        values = scores.compute()  # scores and the number of images scored, already reduced over processes
        # sync_dist only silences Lightning's DDP warning
        self.log(f"{stage}/ami", values["ami"], prog_bar=True, sync_dist=True)
        scalars = {f"{stage}/{name}": v for name, v in values.items() if v.dim() == 0 and name != "ami"}
        self.log_dict(scalars, sync_dist=True)
        scores.reset()
        if stage == "test":
            self.test_ami_per_step = values["ami_per_step"].cpu()  # (T,), drawn by GroupingFigures

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_scores, "val")

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_scores, "test")

    def groupings(self, batch: dict[str, Tensor], stage: Stage = "predict") -> dict[str, Tensor]:
        """What a figure or a prediction file shows for each sample of an evaluation batch.

        The unroll draws each sample's noise and initial γ from its own stream, as ``stage`` does (``val`` for
        validation samples, ``test``/``predict`` for test samples), and leaves the global random stream alone.

        Returns:
            ``index`` (B,); ``gammas`` (B, T, K, H, W) and ``preds`` (B, T, K, C, H, W) after each step;
            ``targets`` and ``inputs`` (B, T, C, H, W), the clean and the corrupted frame of each step; and,
            when the batch has them, ``groups`` (B, T or 1, H, W), the groups each step is scored against.
        """
        out = self(batch["features"], self._draws(batch, stage))
        result = {
            "index": batch["index"],
            "gammas": out.stacked_gammas().squeeze(3),
            "preds": out.stacked_preds(),
            "targets": out.targets[:, :, 0],
            "inputs": out.inputs,
        }
        if "groups" in batch:
            result["groups"] = self._scored_groups(batch["groups"])
        return result

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Per sample: gamma (B, T, K, H, W), predictions (B, T, K, C, H, W) and, if known, the scored groups."""
        shown = self.groupings(batch, "predict")
        return {k: v for k, v in shown.items() if k not in ("targets", "inputs")}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
