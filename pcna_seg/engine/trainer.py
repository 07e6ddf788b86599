"""The Mask R-CNN trainer (a client of :mod:`pcna_seg.engine.base`) and the ``train_net`` entry point.

One iteration = one batch of ``SOLVER.IMS_PER_BATCH`` images over all processes → model losses
(torchvision contract: ``model(images, targets) -> {"loss_*": scalar}``) → backward (AMP on CUDA
when ``SOLVER.AMP.ENABLED``) → optional gradient clipping → SGD step → hooks (LR schedule,
evaluation, writers, curves, checkpoint last). A non-finite loss stops training before the
optimizer step, so no checkpoint is ever written from a diverged model.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from pcna_seg.data.catalog import get_metadata
from pcna_seg.engine import hooks as H
from pcna_seg.engine.base import SimpleTrainer
from pcna_seg.engine.checkpoint import (
    Checkpointer,
    checkpoint_files,
    load_model_weights,
    read_checkpoint,
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
from pcna_seg.engine.launch import get_world_size, is_main_process, resolve_device, seed_all
from pcna_seg.engine.lr_scheduler import build_lr_scheduler, build_optimizer
from pcna_seg.engine.run import log_to_folder, main_decides, training_folder
from pcna_seg.engine.writers import ConsoleWriter, EventStorage, JSONWriter, TensorboardWriter
from pcna_seg.errors import ConfigError, PcnaSegError, WeightsError
from pcna_seg.utils_io import check_output_folder, output_folder, write_text_atomic

logger = logging.getLogger("pcna_seg.engine")

OOM_HINT = (
    "GPU out of memory{where}; lower SOLVER.IMS_PER_BATCH, INPUT.SCALE.FACTOR (INPUT.MIN_SIZE_TRAIN / "
    "INPUT.MAX_SIZE_TRAIN with short_edge), MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE or INPUT.CROP.SIZE "
    "(with INPUT.CROP.ENABLED True)"
)


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


class Trainer(SimpleTrainer):
    """The Mask R-CNN trainer: builds model, optimizer, schedule, data and hooks from ``cfg``.

    Each part comes from an overridable method (``build_model``, ``build_optimizer``,
    ``build_lr_scheduler``, ``build_train_loader``, ``build_evaluator``, ``build_hooks``), as
    in detectron2's default trainer; the loop itself is :class:`pcna_seg.engine.base.SimpleTrainer`.
    ``model``/``train_mapper``/``test_mapper`` may be given (tests, custom models).
    ``output_dir`` is where files go (default ``cfg.OUTPUT_DIR``; ``run_train_net --overwrite``
    passes a staging folder while the config keeps naming the final folder).

    A resumed run is bit-identical to an uninterrupted one: the checkpoint holds model,
    optimizer, schedule, every process's RNG states, the metric windows and hook states, the
    data order depends only on (seed, iteration), and nothing draws from the global RNGs
    between the restore and the first resumed iteration.
    """

    diverged_hint = (
        "Lower SOLVER.BASE_LR, raise SOLVER.WARMUP_ITERS or set SOLVER.CLIP_GRADIENTS.ENABLED True"
    )
    oom_hint = OOM_HINT

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
        device = resolve_device(cfg.MODEL.DEVICE)
        self.seed = seed_all(int(cfg.SEED))
        torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
        if is_main_process():
            write_text_atomic(self.output_dir / "config.yaml", cfg.dump())
        records = self.train_records(cfg)
        self.scale = training_scale(cfg, records)  # stored in every checkpoint ("scale")
        self.test_mapper = test_mapper or default_mapper(cfg, False, self.scale.train_diameter)
        model = (model if model is not None else self.build_model(cfg)).to(device)
        model.train()
        self.class_names = dataset_class_names(cfg)
        if hasattr(model, "class_names") and self.class_names:
            model.class_names = self.class_names
        super().__init__(
            model, self.build_optimizer(cfg, model), device, cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.CLIP_GRADIENTS
        )
        self.scheduler = self.build_lr_scheduler(cfg, self.optimizer)
        self.checkpointer = Checkpointer(
            self.model,
            self.output_dir,
            cfg,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
        )
        self.start_iter = self.iter = self.checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume)
        self.resumed_rng = self.checkpointer.resumed_rng
        self.seed = int(self.checkpointer.resumed.get("seed", self.seed))
        self.max_iter = cfg.SOLVER.MAX_ITER
        if get_world_size() > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        mapper = train_mapper or default_mapper(cfg, True, self.scale.train_diameter)
        self.data_loader = self.build_train_loader(cfg, mapper, records, self.seed, self.start_iter)
        self.storage = EventStorage(self.start_iter)
        self.storage.load_state_dict(self.checkpointer.resumed.get("storage", {}))
        self.eval_hook: H.EvalHook | None = None
        # the checkpoint hook runs last, so a checkpoint holds the state at the end of its iteration
        checkpoint = H.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD)
        self.register_hooks([*self.build_hooks(), *(extra_hooks or []), checkpoint])
        self.load_hook_states(self.checkpointer.resumed.get("hooks", {}))

    # ------------------------------------------------------------------ overridable builders
    @classmethod
    def train_records(cls, cfg: CfgNode) -> list[dict[str, Any]]:
        """``DATASETS.TRAIN`` records, checked; images without annotations dropped when
        ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``."""
        records = load_records(cfg.DATASETS.TRAIN, cfg.DATASETS.ROOT, "DATASETS.TRAIN")
        check_train_records(cfg, records)
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            records = [r for r in records if r.get("annotations")]
        return records

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        return default_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer) -> Any:
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(
        cls, cfg: CfgNode, mapper: Any, records: list[dict[str, Any]], seed: int, start_iter: int
    ) -> Any:
        return build_train_loader(cfg, mapper, records, seed, start_iter)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset: str, folder: Path | None) -> Any:
        """``TEST.EVALUATORS`` for ``dataset`` (:func:`pcna_seg.evaluation.evaluator.build_evaluator`)."""
        from pcna_seg.evaluation.evaluator import build_evaluator

        return build_evaluator(cfg, dataset, folder)

    def build_hooks(self) -> list[H.HookBase]:
        """Timer, LR schedule, evaluation (when ``DATASETS.TEST``), writers and curves; the
        trainer appends the checkpoint hook after these and any extra hooks."""
        cfg = self.cfg
        out: list[H.HookBase] = [H.IterationTimer(), H.LRScheduler(self.optimizer, self.scheduler)]
        if cfg.DATASETS.TEST:
            self.eval_hook = H.EvalHook(
                cfg.TEST.EVAL_PERIOD,
                lambda: self.test(cfg, self.model, self.test_mapper, output_dir=self.output_dir),
            )
            out.append(self.eval_hook)
        if is_main_process():
            writers: list[Any] = [ConsoleWriter(self.max_iter)]
            writers.append(JSONWriter(self.output_dir / "metrics.json", self.start_iter))
            if TensorboardWriter.available():
                writers.append(TensorboardWriter(self.output_dir, self.start_iter))
            out.append(H.PeriodicWriter(writers, cfg.SOLVER.LOG_PERIOD))
            out.append(H.TrainingCurves(self.output_dir / "metrics.json"))
        return out

    def checkpoint_extra(self) -> dict[str, Any]:
        return super().checkpoint_extra() | {
            "seed": self.seed,
            "class_names": list(self.class_names),
            "scale": self.scale.as_dict(),
        }

    def losses(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [d["image"].to(self.device, non_blocking=True) for d in batch]
        targets = [_to_target(d, self.device) for d in batch]
        losses = self.model(images, targets)
        scalars = getattr(unwrap(self.model), "last_scalars", None)  # e.g. the detectron2 engine's
        if scalars:
            self.storage.put_scalars(**scalars)
        return losses

    def data_iterator(self) -> Any:
        return _clean_errors(iter(self.data_loader))

    # ----------------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Run iterations ``start_iter .. MAX_ITER-1``; returns the last evaluation results
        (``{dataset: {task: {metric: value}}}``, {} without ``DATASETS.TEST``)."""
        if self.start_iter >= self.max_iter:
            logger.info("Nothing to do: checkpoint is at iteration %d of %d", self.start_iter, self.max_iter)
            return {}
        logger.info("Starting training at iteration %d of %d", self.start_iter, self.max_iter)
        super().train()
        return self.eval_hook.results if self.eval_hook is not None else {}

    # ----------------------------------------------------------------------------------------
    @classmethod
    def test(
        cls,
        cfg: CfgNode,
        model: nn.Module,
        mapper: Any = None,
        output_dir: str | Path | None = None,
        overwrite: bool = True,
        write_config: bool = False,
    ) -> dict[str, Any]:
        """Evaluate ``model`` with ``build_evaluator`` on every ``DATASETS.TEST`` dataset.

        Writes ``<output_dir>/eval/<dataset>/`` (main process; ``output_dir`` defaults to
        ``cfg.OUTPUT_DIR``). A non-empty eval folder is replaced as a whole (built aside, swapped
        in when complete) when ``overwrite`` — the trainer's periodic evaluations do that —
        and refused (OutputExistsError) otherwise. ``write_config`` adds the config as
        ``config.yaml``. Returns ``{dataset: {task: {metric: value}}}``, whatever the number
        of datasets.
        """
        from pcna_seg.evaluation.evaluator import inference_on_dataset

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
                evaluator = cls.build_evaluator(cfg, name, Path(folder))
                try:
                    loader = build_test_loader(cfg, mapper, records)
                    amp = cfg.SOLVER.AMP.ENABLED
                    out[name] = inference_on_dataset(bare, loader, evaluator, device, amp)
                except PcnaSegError as exc:
                    raise clean_worker_error(exc) from None
                if write_config and is_main_process():
                    write_text_atomic(Path(folder) / "config.yaml", cfg.dump())
        return out


def _clean_errors(batches: Any) -> Any:
    """The loader's batches, with a data error from a worker process shown as its one line."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except PcnaSegError as exc:
            raise clean_worker_error(exc) from None
        yield batch


def _evaluate(cfg: CfgNode, resume: bool, overwrite: bool) -> dict[str, Any]:
    """``--eval-only``: strict weights; results in OUTPUT_DIR/eval/<dataset>/ (a non-empty one needs
    ``overwrite``)."""
    if not cfg.DATASETS.TEST:
        raise ConfigError("--eval-only needs at least one dataset in DATASETS.TEST")
    out = Path(cfg.OUTPUT_DIR)
    for name in cfg.DATASETS.TEST:
        main_decides(lambda name=name: check_output_folder(out / "eval" / name, overwrite=overwrite))
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
    with log_to_folder(out):
        return Trainer.test(cfg, model, mapper, output_dir=out, overwrite=overwrite, write_config=True)


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
        has_checkpoint = lambda d: bool(checkpoint_files(d))  # noqa: E731 (a failed start leaves nothing)
        with training_folder(out, resume, overwrite, has_checkpoint) as (folder, _):
            with log_to_folder(folder, out):
                return Trainer(cfg, resume=resume, output_dir=folder).train()
    except torch.cuda.OutOfMemoryError:
        raise PcnaSegError(OOM_HINT.format(where="")) from None
