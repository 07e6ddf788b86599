"""Iteration-based Mask R-CNN trainer: a small loop plus hooks, and the ``train_net`` entry point.

One iteration = one batch of ``SOLVER.IMS_PER_BATCH`` images over all processes → model losses
(torchvision contract: ``model(images, targets) -> {"loss_*": scalar}``) → backward (AMP on CUDA
when ``SOLVER.AMP.ENABLED``) → optional gradient clipping → SGD step → hooks (LR schedule,
checkpoint, evaluation, writers). A non-finite loss stops training before the optimizer step,
so no checkpoint is ever written from a diverged model.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from pcna_seg.data.catalog import get_metadata
from pcna_seg.engine import hooks as H
from pcna_seg.engine.checkpoint import (
    Checkpointer,
    checkpoint_files,
    load_model_weights,
    read_checkpoint,
    set_rng_state,
    unwrap,
)
from pcna_seg.engine.data import (
    build_test_loader,
    build_train_loader,
    check_train_records,
    clean_worker_error,
    dataset_class_names,
    load_records,
)
from pcna_seg.engine.launch import (
    broadcast_object,
    get_rank,
    get_world_size,
    is_main_process,
    resolve_device,
    synchronize,
)
from pcna_seg.engine.lr_scheduler import build_lr_scheduler, build_optimizer
from pcna_seg.engine.writers import ConsoleWriter, EventStorage, JSONWriter, TensorboardWriter
from pcna_seg.errors import ConfigError, PcnaSegError, WeightsError
from pcna_seg.utils_io import STAGING, check_output_folder, output_folder, write_text_atomic

logger = logging.getLogger("pcna_seg.engine")

OOM_HINT = (
    "GPU out of memory{where}; lower SOLVER.IMS_PER_BATCH, INPUT.SCALE.FACTOR (INPUT.MIN_SIZE_TRAIN / "
    "INPUT.MAX_SIZE_TRAIN with short_edge), MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE or INPUT.CROP.SIZE "
    "(with INPUT.CROP.ENABLED True)"
)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_mapper(cfg: CfgNode, is_train: bool, train_diameter: float = 0.0) -> Any:
    from pcna_seg.data.mapper import DatasetMapper

    return DatasetMapper.from_config(cfg, is_train=is_train, train_diameter=train_diameter)


def training_scale(cfg: CfgNode, records: list[dict[str, Any]]) -> Any:
    """The run's ScalePolicy with the training set's median nucleus diameter; checks it is usable."""
    from pcna_seg.data.scale import ScalePolicy, dataset_diameter

    scale = ScalePolicy.from_config(cfg, train_diameter=dataset_diameter(records))
    scale.check_object_size(scale.train_diameter, f"DATASETS.TRAIN {', '.join(cfg.DATASETS.TRAIN)}")
    logger.info(
        "Pixel scale INPUT.SCALE.MODE %s: training nuclei have a median diameter of %.1f px, %s",
        scale.mode,
        scale.train_diameter,
        f"{scale.model_diameter():.1f} px for the model" if scale.model_diameter() else "per image",
    )
    return scale


def default_model(cfg: CfgNode) -> nn.Module:
    from pcna_seg.modeling import build_model

    return build_model(cfg)


def _to_target(d: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    inst = d["instances"]
    return {k: inst[k].to(device, non_blocking=True) for k in ("boxes", "labels", "masks") if k in inst}


class Trainer:
    """Builds model, optimizer, schedule, data and hooks from ``cfg``; ``train()`` runs the loop.

    ``model``/``train_mapper``/``test_mapper`` may be given (tests, custom models); by default
    they come from ``pcna_seg.modeling.build_model`` and ``DatasetMapper.from_config``.
    ``output_dir`` is where files go (default ``cfg.OUTPUT_DIR``; ``run_train_net --overwrite``
    passes a staging folder while the config keeps naming the final folder).

    A resumed run is bit-identical to an uninterrupted one: the checkpoint holds model,
    optimizer, schedule, every process's RNG states and the metric windows, the data order
    depends only on (seed, iteration), and nothing draws from the global RNGs between the
    restore and the first resumed iteration.
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: nn.Module | None = None,
        train_mapper: Any = None,
        test_mapper: Any = None,
        resume: bool = False,
        extra_hooks: list[H.HookBase] | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.output_dir = Path(output_dir if output_dir is not None else cfg.OUTPUT_DIR)
        self.device = resolve_device(cfg.MODEL.DEVICE)
        self.max_iter = cfg.SOLVER.MAX_ITER
        seed = cfg.SEED if cfg.SEED >= 0 else int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        self.seed = int(broadcast_object(seed))
        seed_all(self.seed + get_rank())
        self.test_mapper = test_mapper
        self.amp = bool(cfg.SOLVER.AMP.ENABLED)
        if self.amp and self.device.type != "cuda":
            logger.info("SOLVER.AMP.ENABLED is ignored on %s (mixed precision needs CUDA)", self.device)
            self.amp = False

        if is_main_process():
            write_text_atomic(self.output_dir / "config.yaml", cfg.dump())
        records = load_records(cfg.DATASETS.TRAIN, cfg.DATASETS.ROOT, "DATASETS.TRAIN")
        check_train_records(cfg, records)
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            records = [r for r in records if r.get("annotations")]
        self.scale = training_scale(cfg, records)  # stored in every checkpoint ("scale")
        if test_mapper is None:
            self.test_mapper = default_mapper(cfg, False, self.scale.train_diameter)
        self.model = (model if model is not None else default_model(cfg)).to(self.device)
        self.model.train()
        self.class_names = dataset_class_names(cfg)
        if hasattr(self.model, "class_names") and self.class_names:
            self.model.class_names = self.class_names
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.checkpointer = Checkpointer(
            self.model,
            self.output_dir,
            cfg,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
        )
        self.start_iter = self.checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume)
        if "seed" in self.checkpointer.resumed:
            self.seed = int(self.checkpointer.resumed["seed"])
        self.iter = self.start_iter
        if get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        mapper = (
            train_mapper if train_mapper is not None else default_mapper(cfg, True, self.scale.train_diameter)
        )
        self.data_loader = build_train_loader(cfg, mapper, records, self.seed, self.start_iter)
        self.storage = EventStorage(self.start_iter)
        self.storage.load_state_dict(self.checkpointer.resumed.get("storage", {}))
        self.hooks: list[H.HookBase] = []
        hooks = self.build_hooks() + list(extra_hooks or [])
        last = [h for h in hooks if isinstance(h, H.PeriodicCheckpointer)]  # after every other hook
        self.register_hooks([h for h in hooks if not isinstance(h, H.PeriodicCheckpointer)] + last)

    # ----------------------------------------------------------------------------------------
    def build_hooks(self) -> list[H.HookBase]:
        cfg = self.cfg
        out: list[H.HookBase] = [
            H.IterationTimer(),
            H.LRScheduler(self.optimizer, self.scheduler),
            H.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD),
        ]
        if cfg.DATASETS.TEST:
            out.append(
                H.EvalHook(
                    cfg.TEST.EVAL_PERIOD,
                    lambda: self.test(cfg, self.model, self.test_mapper, output_dir=self.output_dir),
                )
            )
        if is_main_process():
            writers: list[Any] = [ConsoleWriter(self.max_iter)]
            writers.append(JSONWriter(self.output_dir / "metrics.json", self.start_iter))
            if TensorboardWriter.available():
                writers.append(TensorboardWriter(self.output_dir, self.start_iter))
            out.append(H.PeriodicWriter(writers, cfg.SOLVER.LOG_PERIOD))
        return out

    def register_hooks(self, hooks: list[H.HookBase]) -> None:
        for h in hooks:
            h.trainer = self
        self.hooks.extend(hooks)

    # ----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run iterations ``start_iter .. MAX_ITER-1``; returns the last evaluation results."""
        if self.start_iter >= self.max_iter:
            logger.info("Nothing to do: checkpoint is at iteration %d of %d", self.start_iter, self.max_iter)
            return {}
        logger.info("Starting training at iteration %d of %d", self.start_iter, self.max_iter)
        self._data_iter = iter(self.data_loader)
        try:
            for h in self.hooks:
                h.before_train()
            if self.checkpointer.resumed_rng:  # exactly the state at the end of the checkpoint's iteration
                set_rng_state(self.checkpointer.resumed_rng)
            it = self.start_iter
            while it < self.max_iter:  # a hook may lower max_iter (e.g. a time budget)
                self.iter = self.storage.iter = it
                for h in self.hooks:
                    h.before_step()
                self.run_step()
                for h in self.hooks:
                    h.after_step()
                it += 1
            for h in self.hooks:
                h.after_train()
        except FloatingPointError as exc:
            last = self.checkpointer.last_checkpoint()
            keep = f"the last good checkpoint is {last}" if last else "no checkpoint was written"
            raise PcnaSegError(
                f"Training diverged at iteration {self.iter}: {exc}; {keep}. Lower SOLVER.BASE_LR, "
                "raise SOLVER.WARMUP_ITERS or set SOLVER.CLIP_GRADIENTS.ENABLED True"
            ) from None
        except torch.cuda.OutOfMemoryError:
            raise PcnaSegError(OOM_HINT.format(where=f" at training iteration {self.iter}")) from None
        finally:
            for h in self.hooks:
                if isinstance(h, H.PeriodicWriter):
                    h.close()
            self._data_iter = None
        self._plot_curves()
        for h in self.hooks:
            if isinstance(h, H.EvalHook):
                return h.results
        return {}

    def _plot_curves(self) -> None:
        """Loss, LR and AP over iterations as OUTPUT_DIR/curves.png (main process)."""
        metrics = self.output_dir / "metrics.json"
        if is_main_process() and metrics.is_file():
            from pcna_seg.evaluation.report import plot_training_curves

            png = plot_training_curves(metrics, metrics.parent / "curves.png")
            logger.info("Training curves: %s", png)

    def _next_batch(self) -> list[dict[str, Any]]:
        try:
            return next(self._data_iter)
        except PcnaSegError as exc:
            raise clean_worker_error(exc) from None

    def run_step(self) -> None:
        t0 = time.perf_counter()
        batch = self._next_batch()
        data_time = time.perf_counter() - t0
        images = [d["image"].to(self.device, non_blocking=True) for d in batch]
        targets = [_to_target(d, self.device) for d in batch]
        with torch.autocast(device_type=self.device.type, enabled=self.amp):
            loss_dict = self.model(images, targets)
        losses = sum(loss_dict.values())
        names = sorted(loss_dict)
        values = torch.stack([loss_dict[n].detach().float() for n in names])
        if get_world_size() > 1:
            torch.distributed.all_reduce(values)
            values /= get_world_size()
        values = values.cpu().tolist()
        total = float(sum(values))
        if not np.isfinite(total):
            shown = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values))
            raise FloatingPointError(f"loss is not finite ({shown})")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(losses).backward()
            self.scaler.unscale_(self.optimizer)
            self._clip()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            losses.backward()
            self._clip()
            self.optimizer.step()
        self.storage.put_scalars(total_loss=total, data_time=data_time, **dict(zip(names, values)))

    def _clip(self) -> None:
        clip = self.cfg.SOLVER.CLIP_GRADIENTS
        if not clip.ENABLED:
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if clip.CLIP_TYPE == "value":
            nn.utils.clip_grad_value_(params, clip.CLIP_VALUE)
        elif clip.CLIP_TYPE == "norm":
            nn.utils.clip_grad_norm_(params, clip.CLIP_VALUE, clip.NORM_TYPE)
        else:
            raise ConfigError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be 'value' or 'norm', got {clip.CLIP_TYPE!r}"
            )

    # ----------------------------------------------------------------------------------------
    @staticmethod
    def test(
        cfg: CfgNode,
        model: nn.Module,
        mapper: Any = None,
        output_dir: str | Path | None = None,
        overwrite: bool = True,
        write_config: bool = False,
    ) -> dict[str, Any]:
        """COCO-evaluate ``model`` on every ``DATASETS.TEST`` dataset.

        Writes ``<output_dir>/eval/<dataset>/`` (main process; ``output_dir`` defaults to
        ``cfg.OUTPUT_DIR``). A non-empty eval folder is replaced as a whole (built aside, swapped
        in when complete) when ``overwrite`` — the trainer's periodic evaluations do that —
        and refused (OutputExistsError) otherwise. ``write_config`` adds the config as
        ``config.yaml``. Returns the dataset's results (``{"bbox": {...}, "segm": {...}}``)
        for one dataset, else ``{dataset: results}``.
        """
        from pcna_seg.evaluation.coco_eval import COCOEvaluator, inference_on_dataset

        mapper = mapper if mapper is not None else default_mapper(cfg, False)
        bare = unwrap(model)
        device = next(bare.parameters()).device
        out: dict[str, Any] = {}
        root = Path(output_dir if output_dir is not None else cfg.OUTPUT_DIR)
        for name in cfg.DATASETS.TEST:
            records = load_records([name], cfg.DATASETS.ROOT, "DATASETS.TEST")
            target = root / "eval" / name
            place = (
                output_folder(target, overwrite=overwrite)
                if is_main_process()
                else contextlib.nullcontext(target)  # only the main process writes
            )
            with place as folder:
                evaluator = COCOEvaluator(
                    name,
                    folder,
                    max_dets=cfg.TEST.MAX_DETS,
                    root=cfg.DATASETS.ROOT,
                    confusion_iou=cfg.TEST.CONFUSION_IOU,
                    confusion_score=cfg.TEST.CONFUSION_SCORE_THRESH,
                )
                try:
                    out[name] = inference_on_dataset(
                        bare,
                        build_test_loader(cfg, mapper, records),
                        evaluator,
                        device,
                        cfg.SOLVER.AMP.ENABLED,
                    )
                except PcnaSegError as exc:
                    raise clean_worker_error(exc) from None
                if write_config and is_main_process():
                    write_text_atomic(Path(folder) / "config.yaml", cfg.dump())
        return next(iter(out.values())) if len(out) == 1 else out


def setup_output(cfg: CfgNode, folder: str | Path | None = None) -> logging.Handler | None:
    """Create ``folder`` (default OUTPUT_DIR) and log to ``folder/log.txt`` (main process).

    Returns the file handler (the caller removes it when the run ends), or None.
    """
    if not is_main_process():
        logging.getLogger("pcna_seg").setLevel(logging.WARNING)
        return None
    out = Path(folder if folder is not None else cfg.OUTPUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("pcna_seg")
    log_file = str((out / "log.txt").resolve())
    if any(getattr(h, "baseFilename", None) == log_file for h in root.handlers):
        return None
    fh = logging.FileHandler(log_file)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    root.setLevel(logging.INFO)
    logger.info("Output folder %s; world size %d", cfg.OUTPUT_DIR, get_world_size())
    return fh


def _close_log(handler: logging.Handler | None) -> None:
    if handler is not None:
        logging.getLogger("pcna_seg").removeHandler(handler)
        handler.close()


def _main_decides(decide: Callable[[], Any]) -> Any:
    """Run ``decide`` on the main process only and give every process its result (or its error)."""
    result, error = None, None
    if is_main_process():
        try:
            result = decide()
        except PcnaSegError as exc:
            error = exc
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def _evaluate(cfg: CfgNode, resume: bool, overwrite: bool) -> dict[str, Any]:
    """``--eval-only``: strict weights; results in OUTPUT_DIR/eval/<dataset>/ (a non-empty one needs
    ``overwrite``)."""
    if not cfg.DATASETS.TEST:
        raise ConfigError("--eval-only needs at least one dataset in DATASETS.TEST")
    out = Path(cfg.OUTPUT_DIR)
    for name in cfg.DATASETS.TEST:
        _main_decides(lambda name=name: check_output_folder(out / "eval" / name, overwrite=overwrite))
    model = default_model(cfg).to(resolve_device(cfg.MODEL.DEVICE))
    found = Checkpointer(model, out).find_resumable() if resume else None
    weights = str(found[0]) if found else cfg.MODEL.WEIGHTS
    if not weights:
        raise ConfigError("--eval-only needs MODEL.WEIGHTS (a checkpoint path) or --resume with a checkpoint")
    stored = read_checkpoint(weights)  # the model's classes and training scale travel in it
    names = list(stored.get("class_names") or dataset_class_names(cfg, eval_only=True))
    for name in cfg.DATASETS.TEST:
        have = list(get_metadata(name, cfg.DATASETS.ROOT or None).get("thing_classes") or [])
        if sorted(have) != sorted(names):
            raise ConfigError(
                f"Weights {weights} were trained on classes {names} but DATASETS.TEST dataset {name} has "
                f"{have}; evaluate on data with the same classes"
            )
    load_model_weights(model, weights, strict=True)
    model.class_names = names
    mapper = default_mapper(cfg, False, float((stored.get("scale") or {}).get("train_diameter", 0.0)))
    handler = setup_output(cfg, out)
    try:
        return Trainer.test(cfg, model, mapper, output_dir=out, overwrite=overwrite, write_config=True)
    finally:
        _close_log(handler)


def run_train_net(
    config_file: str, opts: list[str], resume: bool = False, eval_only: bool = False, overwrite: bool = False
) -> Any:
    """Entry point of ``tools/train_net.py`` in every process: load config, train or evaluate.

    The output folder rule (:func:`pcna_seg.utils_io.output_folder`) is applied before anything
    is written: a non-empty OUTPUT_DIR needs ``resume`` (continue it) or ``overwrite`` (the new
    run is built in a hidden staging folder and swapped in when training ends; a failed run
    leaves the old one intact). Only the main process touches the folder; every process
    trains into the same (deterministic) place.
    """
    from pcna_seg.config import load_config

    cfg = load_config(config_file, opts)
    out = Path(cfg.OUTPUT_DIR)
    has_ckpt = (out / "last_checkpoint").is_file() or bool(checkpoint_files(out))
    if cfg.MODEL.WEIGHTS and not Path(cfg.MODEL.WEIGHTS).is_file() and not (resume and has_ckpt):
        what = "is a folder, not a weights file" if Path(cfg.MODEL.WEIGHTS).is_dir() else "file not found"
        raise WeightsError(
            f"MODEL.WEIGHTS {what}: {cfg.MODEL.WEIGHTS} (give a checkpoint or torchvision .pth path, "
            "or MODEL.WEIGHTS '' for random initialisation)"
        )
    for name in [*cfg.DATASETS.TEST, *([] if eval_only else cfg.DATASETS.TRAIN)]:
        get_metadata(name, cfg.DATASETS.ROOT or None)  # unknown dataset: fail before OUTPUT_DIR is made
    dataset_class_names(cfg, eval_only)  # one class list across datasets, checked before anything is written
    try:
        if eval_only:
            return _evaluate(cfg, resume, overwrite)
        mode = _main_decides(
            lambda: check_output_folder(out, overwrite=overwrite, resume=resume, can_resume=True)
        )
        staging = out.parent / STAGING.format(name=out.name)
        place = (
            output_folder(
                out,
                overwrite=overwrite,
                resume=resume,
                can_resume=True,
                keep_partial=lambda d: bool(checkpoint_files(d)),  # a failed start leaves nothing
            )
            if is_main_process()
            else contextlib.nullcontext(staging if mode == "replace" else out)
        )
        with place as folder:
            synchronize()  # the folder is ready before any process reads or writes in it
            if mode == "replace":
                logger.info(
                    "--overwrite: building the new run in %s; it replaces %s when training ends", folder, out
                )
            handler = setup_output(cfg, folder)
            try:
                return Trainer(cfg, resume=resume, output_dir=folder).train()
            finally:
                _close_log(handler)
    except torch.cuda.OutOfMemoryError:
        raise PcnaSegError(OOM_HINT.format(where="")) from None
