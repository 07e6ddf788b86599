"""U-Net trainer: a client of the shared engine (:mod:`pcna_seg.engine.base`), with epochs as a
view on iterations.

One iteration = one batch of tiles (``UNET.DATA.BATCH_SIZE`` over all processes); an epoch =
one pass over the training tiles = ``len(train_loader)`` iterations. The per-epoch work
(validation, the epoch's record, the epoch-based LR schedule, ``model_best.pth``, overlay
frames) is :class:`EpochHook`; checkpoints, resume, metric writers, seeding, devices and
multi-process training (``tools/train_unet.py --num-gpus N`` or torchrun) are the engine's,
as for Mask R-CNN.

Outputs in ``OUTPUT_DIR``:

- ``config.yaml`` (merged config), ``log.txt``;
- ``metrics.json``: one JSON line per epoch (written at the epoch's last iteration):
  ``iteration``, ``epoch`` (1-based), ``lr``, ``train_loss`` (mean per tile over the epoch),
  ``val_loss``, ``pr_auc/<class>``, ``pr_auc_mean``, ``iou/…``, ``dice/…``, ``seg`` (contour
  mode), ``count_mae`` (count mode), ``seconds``, plus the engine's ``total_loss`` / ``loss``
  (median of the last iterations), ``time`` and ``data_time``;
- checkpoints in the engine's layout: ``model_{iter:07d}.pth`` every
  ``UNET.SOLVER.CHECKPOINT_PERIOD`` epochs (only the newest is kept), ``last_checkpoint``
  naming it, ``model_final.pth``; and ``model_best.pth`` (best ``UNET.SOLVER.MONITOR``). Each
  holds model, optimizer, scheduler, scaler, ``iteration``, ``epoch``, every process's RNG
  states and the hook states (the per-epoch history and the best value);
- ``overlays/epoch_XXXX.png`` every ``UNET.EVAL.OVERLAY_PERIOD`` epochs (fixed validation
  tiles, colours in :mod:`pcna_seg.unet.viz`), ``overlays.mp4`` (or ``.gif``) at the end;
- ``loss.png``, ``lr.png``, ``pr_auc.png``, ``pr_curves.png``, ``summary.json``.

``OUTPUT_DIR`` follows the output-folder rule (:func:`pcna_seg.engine.run.training_folder`).
Validation runs on the main process on the whole validation set; its record is shared with
the other processes so every process steps the schedule alike.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm
from yacs.config import CfgNode

from pcna_seg.engine import hooks as H
from pcna_seg.engine.base import SimpleTrainer
from pcna_seg.engine.checkpoint import Checkpointer, checkpoint_files, read_checkpoint, unwrap
from pcna_seg.engine.launch import (
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    resolve_device,
    seed_all,
)
from pcna_seg.engine.run import log_to_folder, training_folder
from pcna_seg.engine.writers import EventStorage, JSONWriter, TensorboardWriter
from pcna_seg.errors import ConfigError, DataError, WeightsError
from pcna_seg.evaluation.evaluator import DatasetEvaluator
from pcna_seg.unet import viz
from pcna_seg.unet.dataset import to_device
from pcna_seg.unet.losses import build_loss, resolve_class_weights
from pcna_seg.unet.metrics import SegmentationMetrics
from pcna_seg.unet.models import build_unet, load_unet_state
from pcna_seg.unet.schedulers import (
    build_optimizer,
    build_scheduler,
    current_lr,
    monitor_mode,
    scheduler_step,
    simulate_schedules,
)
from pcna_seg.utils_io import remove_leftovers, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


def metric_keys(cfg: CfgNode) -> list[str]:
    """Keys of a ``metrics.json`` record that ``UNET.SOLVER.MONITOR`` may name."""
    keys = ["train_loss", "val_loss", "pr_auc_mean", "iou_mean"]
    for c in cfg.UNET.CLASSES:
        keys += [f"pr_auc/{c}", f"iou/{c}", f"dice/{c}"]
    keys += {"contour": ["seg"], "count": ["count_mae"]}.get(cfg.UNET.MODE, [])
    return keys


class UNetEvaluator(DatasetEvaluator):
    """Validation loss (mean per tile) and :class:`SegmentationMetrics` over batches of tiles.

    ``process((images, targets), logits)``: (B, C, T, T) / (B, T, T) on the device and the
    model's (B, K, T, T) float logits. ``evaluate()``: ``{"val_loss": ..., **metrics}``; the
    filled accumulator stays in ``self.metrics`` (PR curves, confusion matrix).
    """

    def __init__(self, cfg: CfgNode, loss_fn: nn.Module, device: torch.device) -> None:
        self.cfg, self.loss_fn, self.device = cfg, loss_fn, device
        self.dataset_name = "validation"
        self.reset()

    def reset(self) -> None:
        u = self.cfg.UNET
        self.metrics = SegmentationMetrics(u.CLASSES, u.MODE, u.EVAL.PR_THRESHOLDS, str(self.device))
        self._loss, self._n = 0.0, 0

    def process(self, inputs: Any, outputs: Any) -> None:
        targets = inputs[1]
        self._loss += self.loss_fn(outputs, targets).item() * len(targets)
        self._n += len(targets)
        self.metrics.update(outputs, targets)

    def evaluate(self) -> dict[str, Any]:
        if self._n == 0:
            raise DataError("The validation loader yielded no tiles")
        return {"val_loss": self._loss / self._n, **self.metrics.compute()}


class UNetTrainer(SimpleTrainer):
    """Train a U-Net from a config; ``loaders`` (train, val) default to ``build_unet_loaders``.

    Each loader yields ``(images (B, C, T, T), targets (B, T, T))``: float32 / int64, or compact
    float16 / uint8 (``UNET.DATA.COMPACT``), converted on the device (:func:`to_device`).
    ``class_counts``: (K,) pixel counts for frequency weights when ``UNET.LOSS.CLASS_WEIGHTS``
    is empty (default: read from ``UNET.DATA.TRAIN_H5``). ``resume``: continue from the newest
    readable checkpoint in ``output_dir`` (a new run when there is none).
    """

    oom_hint = "GPU out of memory{where}; lower UNET.DATA.BATCH_SIZE or UNET.BASE_WIDTH"

    def __init__(
        self,
        cfg: CfgNode,
        loaders: tuple[DataLoader, DataLoader | None] | None = None,
        class_counts: np.ndarray | None = None,
        output_dir: str | Path | None = None,
        resume: bool = False,
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir if output_dir is not None else cfg.OUTPUT_DIR)
        device = resolve_device(cfg.MODEL.DEVICE)
        self.seed = seed_all(int(cfg.SEED))
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
        self.diverged_hint = (
            f"Lower UNET.SOLVER.BASE_LR (now {cfg.UNET.SOLVER.BASE_LR}) or check the tiles in "
            f"{cfg.UNET.DATA.TRAIN_H5 or 'the training data'} for NaN/inf values"
        )
        if loaders is None:
            from pcna_seg.unet.dataset import build_unet_loaders

            loaders = build_unet_loaders(cfg, self.seed, get_rank(), get_world_size())
        self.train_loader, self.val_loader = loaders
        if self.val_loader is None:
            raise ConfigError("UNET.DATA.VAL_H5 is empty; the U-Net trainer needs validation tiles")
        self.iters_per_epoch = len(self.train_loader)
        if self.iters_per_epoch == 0:
            raise DataError("The training loader yields no batches")
        monitor = cfg.UNET.SOLVER.MONITOR
        if monitor not in metric_keys(cfg):
            raise ConfigError(
                f"UNET.SOLVER.MONITOR {monitor!r} is not a metric; choose one of {metric_keys(cfg)}"
            )
        model = build_unet(cfg).to(device)
        self.loss_fn = build_loss(cfg, resolve_class_weights(cfg, class_counts)).to(device)
        super().__init__(model, build_optimizer(cfg, model), device, amp=cfg.UNET.SOLVER.AMP)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.epochs = int(cfg.UNET.SOLVER.EPOCHS)
        self.max_iter = self.epochs * self.iters_per_epoch
        self.checkpointer = Checkpointer(
            self.model,
            self.output_dir,
            cfg,
            model_loader=load_unet_state,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
        )
        self.start_iter = self.iter = self.checkpointer.resume_or_load(
            cfg.UNET.WEIGHTS, resume, _init_weights
        )
        self._check_epoch_boundary()
        self.resumed_rng = self.checkpointer.resumed_rng
        self.seed = int(self.checkpointer.resumed.get("seed", self.seed))
        if get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.storage = EventStorage(self.start_iter)
        self.storage.load_state_dict(self.checkpointer.resumed.get("storage", {}))
        self.batch_tiles = 0
        self.epoch_hook = EpochHook(self.iters_per_epoch, monitor)
        ipe, period = self.iters_per_epoch, max(1, int(cfg.UNET.SOLVER.CHECKPOINT_PERIOD))
        writers: list[Any] = []
        if is_main_process():
            writers = [JSONWriter(self.output_dir / "metrics.json", self.start_iter)]
            if TensorboardWriter.available():
                writers.append(TensorboardWriter(self.output_dir, self.start_iter))
        self.register_hooks(
            [
                H.IterationTimer(),
                H.LRScheduler(self.optimizer),  # records the LR; the schedule steps once per epoch
                EpochProgress(ipe) if is_main_process() else None,
                self.epoch_hook,
                H.PeriodicWriter(writers, ipe, first=False) if writers else None,
                H.PeriodicCheckpointer(self.checkpointer, ipe * period, max_to_keep=1),  # last
            ]
        )
        self.load_hook_states(self.checkpointer.resumed.get("hooks", {}))
        self.overlay_batch = self._overlay_tiles(int(cfg.UNET.EVAL.OVERLAY_TILES))
        self.summary: dict[str, Any] = {}

    def _check_epoch_boundary(self) -> None:
        resumed = self.checkpointer.resumed
        if resumed and (self.start_iter % self.iters_per_epoch or "epoch" not in resumed):
            raise WeightsError(
                f"The checkpoint in {self.output_dir} ends at iteration {self.start_iter - 1}, which is "
                f"not the end of an epoch of {self.iters_per_epoch} batches: the training tiles or "
                "UNET.DATA.BATCH_SIZE changed since it was written; resume with the same data, or start "
                "again with --overwrite"
            )

    # ----------------------------------------------------------------------------------------
    def checkpoint_extra(self) -> dict[str, Any]:
        return super().checkpoint_extra() | {
            "seed": self.seed,
            "epoch": (self.iter + 1) // self.iters_per_epoch,
        }

    def data_iterator(self) -> Any:
        """Batches of epochs ``start_iter // iters_per_epoch`` .. EPOCHS-1, each epoch's order and
        augmentation set from (seed, epoch) before its first batch."""
        for epoch in range(self.start_iter // self.iters_per_epoch, self.epochs):
            loader = self.train_loader
            sampler = getattr(loader, "batch_sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(epoch)
            if hasattr(loader.dataset, "set_epoch"):  # per-epoch augmentation seeding
                loader.dataset.set_epoch(epoch)
            yield from loader

    def losses(self, batch: Any) -> dict[str, torch.Tensor]:
        images, targets = to_device(*batch, self.device)
        self.batch_tiles = len(images)
        return {"loss": self.loss_fn(self.model(images), targets)}

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs; returns the summary written to ``summary.json`` (main process)."""
        if is_main_process():
            write_text_atomic(self.output_dir / "config.yaml", self.cfg.dump())
            remove_leftovers(self.output_dir / "overlays")
            self._drop_later_overlays()
        logger.info(
            "Training epochs %d..%d (%d batches each)",
            self.start_iter // self.iters_per_epoch + 1,
            self.epochs,
            self.iters_per_epoch,
        )
        super().train()
        return self.summary

    # ----------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, Any], SegmentationMetrics]:
        """Validation loss and metrics over the whole validation loader (this process)."""
        model = unwrap(self.model)
        model.eval()
        evaluator = UNetEvaluator(self.cfg, self.loss_fn, self.device)
        try:
            for images, targets in tqdm(self.val_loader, desc="validation", leave=False, disable=None):
                images, targets = to_device(images, targets, self.device)
                with self._autocast():
                    logits = model(images)
                evaluator.process((images, targets), logits.float())
        finally:
            model.train()
        return evaluator.evaluate(), evaluator.metrics

    def _overlay_tiles(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fixed validation tiles shown every overlay epoch: evenly spaced, most foreground first."""
        ds = self.val_loader.dataset
        if n <= 0 or len(ds) == 0 or not is_main_process():
            return None
        cand = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), 4 * n)).round().astype(int))
        items = [ds[int(i)] for i in cand]
        fg = [float((t > 0).float().mean()) for _, t in items]
        keep = sorted(np.argsort(fg)[::-1][:n])
        images, targets = torch.stack([items[i][0] for i in keep]), torch.stack([items[i][1] for i in keep])
        return images.float(), targets.long()

    @torch.no_grad()
    def overlay(self, epoch: int) -> Path | None:
        """Write ``overlays/epoch_XXXX.png`` (1-based ``epoch``) of the fixed validation tiles."""
        if self.overlay_batch is None:
            return None
        model = unwrap(self.model)
        model.eval()
        images, targets = self.overlay_batch
        with self._autocast():
            logits = model(images.to(self.device)).float()
        model.train()
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        tiles = [
            viz.error_overlay(i.numpy(), t.numpy(), p) for i, t, p in zip(images, targets, pred.cpu().numpy())
        ]
        grid = viz.tile_grid(tiles, caption=f"epoch {epoch}")
        return viz.write_png(self.output_dir / "overlays" / f"epoch_{epoch:04d}.png", grid)

    def _drop_later_overlays(self) -> None:
        """Remove overlay frames of epochs after the resumed one (a killed run wrote them after its
        last checkpoint; the resumed run redoes them), so the video never mixes two runs."""
        done = self.start_iter // self.iters_per_epoch
        stale = [p for p in (self.output_dir / "overlays").glob("epoch_*.png") if _epoch_of(p) > done]
        for p in stale:
            p.unlink()
        if stale:
            logger.info("removed %d overlay frames of epochs after %d", len(stale), done)

    def finish(self, metrics: SegmentationMetrics | None, history: list[dict[str, Any]], best: float) -> None:
        """Plots, PR curves, the overlay video and ``summary.json`` (main process)."""
        cfg, out = self.cfg, self.output_dir
        classes, monitor = list(cfg.UNET.CLASSES), cfg.UNET.SOLVER.MONITOR
        if metrics is None:  # resumed after the last epoch: re-validate for the final curves
            _, metrics = self.validate()
        if history:
            viz.plot_history(history, out, classes)
            monitored = [float(r[monitor]) for r in history if monitor in r]
            if len(monitored) > 1:  # what each scheduler would have done with this run's curve
                viz.plot_lr_curves(simulate_schedules(cfg, monitored), monitored, out / "lr_schedules.png")
        last = history[-1] if history else {}
        aucs = {c: last.get(f"pr_auc/{c}", float("nan")) for c in classes}
        viz.plot_pr_curves(metrics.pr_curves(), out / "pr_curves.png", aucs)
        frames = sorted((out / "overlays").glob("epoch_*.png"))
        video = None
        if frames:
            imgs = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in frames]
            video = viz.write_video(imgs, out / "overlays.mp4", fps=cfg.UNET.EVAL.VIDEO_FPS)
        self.summary = {
            "epochs": len(history),
            "best": {monitor: best},
            "final": last,
            "train_seconds_this_run": self.epoch_hook.seconds,
            "video": str(Path(cfg.OUTPUT_DIR) / video.name) if video else None,
            "confusion_matrix": metrics.confusion().tolist(),
        }
        write_json_atomic(out / "summary.json", self.summary, indent=2)


class EpochProgress(H.HookBase):
    """A tqdm bar per epoch (shown on a terminal only)."""

    def __init__(self, iters_per_epoch: int) -> None:
        self.ipe = iters_per_epoch
        self.bar: Any = None

    def after_step(self) -> None:
        t = self.trainer
        if self.bar is None:
            epoch = t.iter // self.ipe + 1
            self.bar = tqdm(total=self.ipe, desc=f"epoch {epoch} train", leave=False, disable=None)
            self.bar.update(t.iter % self.ipe)
        latest = t.storage.latest("loss")
        self.bar.update(1)
        if latest is not None:
            self.bar.set_postfix(loss=f"{latest[1]:.4f}")
        if (t.iter + 1) % self.ipe == 0:
            self.after_train()

    def after_train(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochHook(H.HookBase):
    """The end of every epoch: validation (main process; the record is shared), the record in
    the metric store (``metrics.json``), the schedule step on ``UNET.SOLVER.MONITOR``,
    ``model_best.pth``, an overlay frame; after the last epoch the plots and ``summary.json``.

    State for resume: the per-epoch history and the best monitored value.
    """

    def __init__(self, iters_per_epoch: int, monitor: str) -> None:
        self.ipe, self.monitor = iters_per_epoch, monitor
        self.mode = monitor_mode(monitor)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.history: list[dict[str, Any]] = []
        self.metrics: SegmentationMetrics | None = None
        self.seconds = 0.0
        self._t_train = self._t0 = 0.0
        self._loss_sum, self._tiles, self._lr = 0.0, 0, 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.history = float(state["best"]), list(state["history"])

    def before_train(self) -> None:
        self._t_train = time.perf_counter()

    def before_step(self) -> None:
        t = self.trainer
        if t.iter % self.ipe == 0:
            self._t0, self._loss_sum, self._tiles = time.perf_counter(), 0.0, 0
            self._lr = current_lr(t.optimizer)

    def after_step(self) -> None:
        t: UNetTrainer = self.trainer  # type: ignore[assignment]
        latest = t.storage.latest("loss")
        self._loss_sum += (latest[1] if latest else float("nan")) * t.batch_tiles
        self._tiles += t.batch_tiles
        if (t.iter + 1) % self.ipe:
            return
        epoch = (t.iter + 1) // self.ipe
        rec: dict[str, Any] = {
            "epoch": epoch,
            "lr": self._lr,
            "train_loss": self._loss_sum / max(self._tiles, 1),
        }
        if is_main_process():
            scores, self.metrics = t.validate()
            rec.update(scores)
        rec = broadcast_object(rec)
        rec["seconds"] = time.perf_counter() - self._t0
        value = float(rec[self.monitor])
        scheduler_step(t.scheduler, value)
        self.history.append(rec)
        if (value < self.best) if self.mode == "min" else (value > self.best):
            self.best = value
            t.checkpointer.save("model_best", t.iter, mark_last=False, **t.checkpoint_extra())
        period = max(1, int(t.cfg.UNET.EVAL.OVERLAY_PERIOD))
        if is_main_process() and (epoch % period == 0 or epoch == t.epochs):
            t.overlay(epoch)
        t.storage.put_scalars(**{k: v for k, v in rec.items() if isinstance(v, (int, float))})
        logger.info(
            "epoch %d/%d lr %.3g train %.4f val %.4f %s %.4f (%.1fs)", epoch, t.epochs, rec["lr"],
            rec["train_loss"], rec["val_loss"], self.monitor, value, rec["seconds"],
        )  # fmt: skip

    def after_train(self) -> None:
        self.seconds = time.perf_counter() - self._t_train
        t: UNetTrainer = self.trainer  # type: ignore[assignment]
        if t.completed and is_main_process():
            t.finish(self.metrics, self.history, self.best)


def _init_weights(model: nn.Module, path: str) -> None:
    """``UNET.WEIGHTS``: initialise from a U-Net checkpoint or state dict (a mismatch is one line)."""
    state = read_checkpoint(path)
    load_unet_state(model, state.get("model", state), f"{path} (UNET.WEIGHTS)")
    logger.info("initialised the U-Net from %s", path)


def _epoch_of(path: Path) -> int:
    try:
        return int(path.stem.rsplit("_", 1)[-1])
    except ValueError:
        return 0


def train_unet(
    cfg: CfgNode,
    resume: bool = False,
    loaders: tuple[DataLoader, DataLoader | None] | None = None,
    class_counts: np.ndarray | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train (or resume) a U-Net as configured, in every process of a run; returns the summary
    (``summary.json``; {} on processes other than the main one).

    ``OUTPUT_DIR`` is checked first (refused when non-empty without ``resume``/``overwrite``),
    then the data and model are built, then the run writes into the folder (or, with
    ``overwrite``, into a staging folder swapped in at the end; see the module docstring).
    """
    has_checkpoint = lambda d: bool(checkpoint_files(d))  # noqa: E731 (a failed start leaves nothing)
    with training_folder(cfg.OUTPUT_DIR, resume, overwrite, has_checkpoint) as (folder, mode):
        with log_to_folder(folder, cfg.OUTPUT_DIR):
            trainer = UNetTrainer(cfg, loaders, class_counts, folder, resume=resume and mode == "resume")
            return trainer.train()
