"""U-Net trainer: epochs over tile loaders, validation metrics, pictures, exact resume.

Outputs in ``OUTPUT_DIR``:

- ``config.yaml`` (merged config), ``metrics.json`` (one JSON record per epoch, rewritten
  atomically each epoch: ``epoch`` (1-based), ``lr``, ``train_loss``, ``val_loss``,
  ``pr_auc/<class>``, ``pr_auc_mean``, ``iou/…``, ``dice/…``, ``seg`` (contour mode),
  ``count_mae`` (count mode), ``seconds``);
- ``last_checkpoint.pth`` every ``UNET.SOLVER.CHECKPOINT_PERIOD`` epochs (model, optimizer,
  scheduler, AMP scaler, epochs done, RNG states, best monitored value, history, config YAML),
  ``model_best.pth`` (best ``UNET.SOLVER.MONITOR``), ``model_final.pth``;
- ``overlays/epoch_XXXX.png`` every ``UNET.EVAL.OVERLAY_PERIOD`` epochs (fixed validation
  tiles, colours in :mod:`pcna_seg.unet.viz`), ``overlays.mp4`` (or ``.gif``) at the end;
- ``loss.png``, ``lr.png``, ``pr_auc.png``, ``pr_curves.png``, ``summary.json``.

``OUTPUT_DIR`` follows the output-folder rule (:func:`pcna_seg.utils_io.output_folder`): a
non-empty folder is refused unless ``resume`` (continue from ``last_checkpoint.pth``, or start
from scratch with a log line when there is none) or ``overwrite`` (the new run is built in a
hidden ``.<name>.staging`` folder and swapped in when it finished; ``config.yaml`` names the
final folder). Leftovers of a killed run (hidden checkpoint/overlay temporary files) are
removed, with a log line, by the next run in that folder.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from yacs.config import CfgNode

from pcna_seg.config import save_config
from pcna_seg.engine.checkpoint import get_rng_state, read_checkpoint, set_rng_state
from pcna_seg.errors import ConfigError, DataError, WeightsError
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
from pcna_seg.utils_io import (
    atomic_path,
    check_output_folder,
    output_folder,
    remove_leftovers,
    write_json_atomic,
    write_text_atomic,
)

logger = logging.getLogger(__name__)
LAST = "last_checkpoint.pth"


def resolve_device(name: str) -> torch.device:
    """``MODEL.DEVICE``: "auto" → cuda when available, else the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"MODEL.DEVICE is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(name)


def seed_everything(seed: int) -> int:
    """Seed python/numpy/torch; a negative seed draws one. Returns the seed used."""
    if seed < 0:
        seed = int(np.random.SeedSequence().entropy % (2**31))
        logger.info("SEED < 0: drew seed %d", seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed


def metric_keys(cfg: CfgNode) -> list[str]:
    """Keys of a ``metrics.json`` record that ``UNET.SOLVER.MONITOR`` may name."""
    keys = ["train_loss", "val_loss", "pr_auc_mean", "iou_mean"]
    for c in cfg.UNET.CLASSES:
        keys += [f"pr_auc/{c}", f"iou/{c}", f"dice/{c}"]
    keys += {"contour": ["seg"], "count": ["count_mae"]}.get(cfg.UNET.MODE, [])
    return keys


class UNetTrainer:
    """Train a U-Net from a config; ``loaders`` (train, val) default to ``build_unet_loaders(cfg)``.

    Each loader yields ``(images (B, C, T, T), targets (B, T, T))``: float32 / int64, or compact
    float16 / uint8 (``UNET.DATA.COMPACT``), converted on the device (:func:`to_device`).
    ``class_counts``: (K,) pixel counts for frequency weights when ``UNET.LOSS.CLASS_WEIGHTS``
    is empty (default: read from ``UNET.DATA.TRAIN_H5``).
    """

    def __init__(
        self,
        cfg: CfgNode,
        loaders: tuple[DataLoader, DataLoader | None] | None = None,
        class_counts: np.ndarray | None = None,
    ) -> None:
        self.cfg = cfg
        self.out = Path(cfg.OUTPUT_DIR)
        self.seed = seed_everything(int(cfg.SEED))
        self.device = resolve_device(cfg.MODEL.DEVICE)
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
        if loaders is None:
            from pcna_seg.unet.dataset import build_unet_loaders

            loaders = build_unet_loaders(cfg)
        self.train_loader, self.val_loader = loaders
        if self.val_loader is None:
            raise ConfigError("UNET.DATA.VAL_H5 is empty; the U-Net trainer needs validation tiles")
        self.model = build_unet(cfg).to(self.device)
        self.loss_fn = build_loss(cfg, resolve_class_weights(cfg, class_counts)).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.amp = bool(cfg.UNET.SOLVER.AMP) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.monitor = cfg.UNET.SOLVER.MONITOR
        known = metric_keys(cfg)
        if self.monitor not in known:
            raise ConfigError(f"UNET.SOLVER.MONITOR {self.monitor!r} is not a metric; choose one of {known}")
        self.mode = monitor_mode(self.monitor)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.overlay_batch = self._overlay_tiles(int(cfg.UNET.EVAL.OVERLAY_TILES))
        if cfg.UNET.WEIGHTS:
            self._load_weights(cfg.UNET.WEIGHTS)

    # ----------------------------------------------------------------------------------------
    def _overlay_tiles(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The fixed validation tiles shown every overlay epoch: evenly spaced, most foreground first."""
        ds = self.val_loader.dataset
        if n <= 0 or len(ds) == 0:
            return None
        cand = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), 4 * n)).round().astype(int))
        items = [ds[int(i)] for i in cand]
        fg = [float((t > 0).float().mean()) for _, t in items]
        keep = sorted(np.argsort(fg)[::-1][:n])
        images, targets = torch.stack([items[i][0] for i in keep]), torch.stack([items[i][1] for i in keep])
        return images.float(), targets.long()

    def _load_weights(self, path: str) -> None:
        state = read_checkpoint(path)
        load_unet_state(self.model, state.get("model", state), f"{path} (UNET.WEIGHTS)")
        logger.info("initialised the U-Net from %s", path)

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp)

    # ----------------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> float:
        """One pass over the training loader; returns the mean loss per tile."""
        self.model.train()
        total, n = 0.0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1} train", leave=False, disable=None)
        for b, (images, targets) in enumerate(bar):
            images, targets = to_device(images, targets, self.device)
            with self._autocast():
                loss = self.loss_fn(self.model(images), targets)
            if not torch.isfinite(loss):
                raise ConfigError(
                    f"Training loss became {loss.item()} at epoch {epoch + 1}, batch {b + 1}; lower "
                    f"UNET.SOLVER.BASE_LR (now {self.cfg.UNET.SOLVER.BASE_LR}) or check the tiles in "
                    f"{self.cfg.UNET.DATA.TRAIN_H5 or 'the training data'} for NaN/inf values"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            total += loss.item() * len(images)
            n += len(images)
            bar.set_postfix(loss=f"{total / n:.4f}")
        if n == 0:
            raise DataError("The training loader yielded no tiles")
        return total / n

    @torch.no_grad()
    def validate(self) -> tuple[float, SegmentationMetrics]:
        """Validation loss (mean per tile) and the filled metric accumulator."""
        self.model.eval()
        metrics = SegmentationMetrics(
            self.cfg.UNET.CLASSES, self.cfg.UNET.MODE, self.cfg.UNET.EVAL.PR_THRESHOLDS, str(self.device)
        )
        total, n = 0.0, 0
        for images, targets in tqdm(self.val_loader, desc="validation", leave=False, disable=None):
            images, targets = to_device(images, targets, self.device)
            with self._autocast():
                logits = self.model(images)
            logits = logits.float()
            total += self.loss_fn(logits, targets).item() * len(images)
            n += len(images)
            metrics.update(logits, targets)
        if n == 0:
            raise DataError("The validation loader yielded no tiles")
        return total / n, metrics

    @torch.no_grad()
    def overlay(self, epoch: int) -> Path | None:
        """Write ``overlays/epoch_XXXX.png`` of the fixed validation tiles."""
        if self.overlay_batch is None:
            return None
        self.model.eval()
        images, targets = self.overlay_batch
        with self._autocast():
            logits = self.model(images.to(self.device)).float()
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
        tiles = [
            viz.error_overlay(i.numpy(), t.numpy(), p) for i, t, p in zip(images, targets, pred.cpu().numpy())
        ]
        grid = viz.tile_grid(tiles, caption=f"epoch {epoch + 1}")
        return viz.write_png(self.out / "overlays" / f"epoch_{epoch + 1:04d}.png", grid)

    # ----------------------------------------------------------------------------------------
    def checkpoint_state(self, epochs_done: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict(),
            "epoch": epochs_done,
            "seed": self.seed,
            "rng": get_rng_state(),
            "best": self.best,
            "history": self.history,
            "config": self.cfg.dump(),
        }

    def save(self, name: str, epochs_done: int) -> Path:
        """Write a checkpoint atomically to ``OUTPUT_DIR/name``."""
        path = self.out / name
        with atomic_path(path) as tmp:
            torch.save(self.checkpoint_state(epochs_done), tmp)
        return path

    def resume(self) -> bool:
        """Restore everything from ``OUTPUT_DIR/last_checkpoint.pth``; False when there is none."""
        path = self.out / LAST
        if not path.is_file():
            logger.warning("--resume: no %s yet; starting from scratch", path)
            return False
        ck = read_checkpoint(path)
        if not isinstance(ck.get("model"), dict):
            raise WeightsError(
                f"Checkpoint {path} holds no 'model' state; it is not a U-Net training checkpoint"
            )
        load_unet_state(self.model, ck["model"], f"{path} (--resume)")
        try:
            self.optimizer.load_state_dict(ck["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(ck["scheduler"])
            self.scaler.load_state_dict(ck["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise WeightsError(f"Checkpoint {path} does not match this config: {exc}") from None
        self.start_epoch = int(ck["epoch"])
        self.best = float(ck["best"])
        self.history = list(ck["history"])
        set_rng_state(ck["rng"])
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)
        return True

    def _drop_later_overlays(self) -> None:
        """Remove overlay frames of epochs after ``start_epoch`` (a killed run wrote them after its
        last checkpoint; the resumed run redoes them), so the video never mixes two runs."""
        stale = [p for p in (self.out / "overlays").glob("epoch_*.png") if _epoch_of(p) > self.start_epoch]
        for p in stale:
            p.unlink()
        if stale:
            logger.info("removed %d overlay frames of epochs after %d", len(stale), self.start_epoch)

    def _write_metrics(self) -> None:
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        write_text_atomic(self.out / "metrics.json", lines)

    # ----------------------------------------------------------------------------------------
    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run the remaining epochs; returns the summary written to ``summary.json``."""
        self.out.mkdir(parents=True, exist_ok=True)
        remove_leftovers(self.out / "overlays")
        save_config(self.cfg, self.out / "config.yaml")
        if resume:
            self.resume()
            self._drop_later_overlays()
        epochs = int(self.cfg.UNET.SOLVER.EPOCHS)
        period = max(1, int(self.cfg.UNET.SOLVER.CHECKPOINT_PERIOD))
        overlay_period = max(1, int(self.cfg.UNET.EVAL.OVERLAY_PERIOD))
        metrics = None
        t_start = time.perf_counter()
        for epoch in range(self.start_epoch, epochs):
            sampler = getattr(self.train_loader, "batch_sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            elif hasattr(getattr(self.train_loader, "sampler", None), "set_epoch"):
                self.train_loader.sampler.set_epoch(epoch)
            if hasattr(self.train_loader.dataset, "set_epoch"):  # per-epoch augmentation seeding
                self.train_loader.dataset.set_epoch(epoch)
            t0 = time.perf_counter()
            lr = current_lr(self.optimizer)
            train_loss = self.train_one_epoch(epoch)
            val_loss, metrics = self.validate()
            rec: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": train_loss,
                "val_loss": val_loss,
            }
            rec.update(metrics.compute())
            rec["seconds"] = time.perf_counter() - t0
            value = float(rec[self.monitor])
            scheduler_step(self.scheduler, value)
            self.history.append(rec)
            improved = value < self.best if self.mode == "min" else value > self.best
            if improved:
                self.best = value
                self.save("model_best.pth", epoch + 1)
            if (epoch + 1) % overlay_period == 0 or epoch + 1 == epochs:
                self.overlay(epoch)
            self._write_metrics()
            if (epoch + 1) % period == 0 or epoch + 1 == epochs:
                self.save(LAST, epoch + 1)
            logger.info(
                "epoch %d/%d lr %.3g train %.4f val %.4f %s %.4f (%.1fs)", epoch + 1, epochs, lr,
                train_loss, val_loss, self.monitor, value, rec["seconds"],
            )  # fmt: skip
        self.save("model_final.pth", epochs)
        return self.finish(metrics, time.perf_counter() - t_start)

    def finish(self, metrics: SegmentationMetrics | None, seconds: float) -> dict[str, Any]:
        """Plots, PR curves, the overlay video and ``summary.json``."""
        classes = list(self.cfg.UNET.CLASSES)
        if metrics is None:  # resumed after the last epoch: re-validate for the final curves
            _, metrics = self.validate()
        if self.history:
            viz.plot_history(self.history, self.out, classes)
            monitored = [float(r[self.monitor]) for r in self.history if self.monitor in r]
            if len(monitored) > 1:  # what each scheduler would have done with this run's curve
                viz.plot_lr_curves(
                    simulate_schedules(self.cfg, monitored), monitored, self.out / "lr_schedules.png"
                )
        last = self.history[-1] if self.history else {}
        aucs = {c: last.get(f"pr_auc/{c}", float("nan")) for c in classes}
        viz.plot_pr_curves(metrics.pr_curves(), self.out / "pr_curves.png", aucs)
        frames = sorted((self.out / "overlays").glob("epoch_*.png"))
        video = None
        if frames:
            imgs = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in frames]
            video = viz.write_video(imgs, self.out / "overlays.mp4", fps=self.cfg.UNET.EVAL.VIDEO_FPS)
        summary = {
            "epochs": len(self.history),
            "best": {self.monitor: self.best},
            "final": last,
            "train_seconds_this_run": seconds,
            "video": str(Path(self.cfg.OUTPUT_DIR) / video.name) if video else None,
            "confusion_matrix": metrics.confusion().tolist(),
        }
        write_json_atomic(self.out / "summary.json", summary, indent=2)
        return summary


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
    """Train (or resume) a U-Net as configured; returns the run summary (see ``summary.json``).

    ``OUTPUT_DIR`` is checked first (refused when non-empty without ``resume``/``overwrite``),
    then the data and model are built, then the run writes into the folder (or, with
    ``overwrite``, into a staging folder swapped in at the end; see the module docstring).
    """
    final = Path(cfg.OUTPUT_DIR)
    mode = check_output_folder(final, overwrite=overwrite, resume=resume, can_resume=True)
    if resume and mode == "new":
        logger.info("--resume: %s is empty or missing; starting a new run", final)
    trainer = UNetTrainer(cfg, loaders, class_counts)
    has_checkpoint = lambda d: (d / LAST).is_file()  # noqa: E731  (a failed start leaves nothing)
    with output_folder(
        final, overwrite=overwrite, resume=resume, can_resume=True, keep_partial=has_checkpoint
    ) as folder:
        trainer.out = folder
        summary = trainer.train(resume=resume and mode == "resume")
    trainer.out = final
    return summary
