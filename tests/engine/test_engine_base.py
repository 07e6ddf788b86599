"""The shared loop: hooks by weak reference, after_train in finally, hook state in checkpoints,
checkpoint pruning, and the evaluator interface chosen by config."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from torch import nn

from pcna_seg.config import load_config
from pcna_seg.engine import hooks as H
from pcna_seg.engine.base import SimpleTrainer
from pcna_seg.engine.checkpoint import Checkpointer, checkpoint_files
from pcna_seg.errors import ConfigError, PcnaSegError, WeightsError
from pcna_seg.evaluation.evaluator import DatasetEvaluator, DatasetEvaluators, build_evaluator


class _Linear(SimpleTrainer):
    """y = w·x fitted to y = 2x; ``nan_at`` makes one batch's loss NaN."""

    def __init__(self, max_iter: int, nan_at: int = -1) -> None:
        model = nn.Linear(1, 1, bias=False)
        super().__init__(model, torch.optim.SGD(model.parameters(), lr=0.5), torch.device("cpu"))
        self.max_iter, self.nan_at = max_iter, nan_at

    def data_iterator(self):
        g = torch.Generator().manual_seed(0)
        while True:
            yield torch.rand(4, 1, generator=g)

    def losses(self, x):
        y = self.model(x)
        if self.iter == self.nan_at:
            y = y * float("nan")
        return {"loss": ((y - 2 * x) ** 2).mean()}


class _Record(H.HookBase):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.count = 0

    def after_step(self) -> None:
        self.count += 1

    def after_train(self) -> None:
        self.events.append(f"after_train completed={self.trainer.completed}")

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state) -> None:
        self.count = state["count"]


def test_loop_runs_hooks_and_after_train_runs_even_when_training_fails() -> None:
    ok, rec = _Linear(20), _Record()
    ok.register_hooks([rec, None])
    ok.train()
    assert rec.count == 20 and rec.events == ["after_train completed=True"]
    assert abs(ok.model.weight.item() - 2.0) < 0.05  # it does optimise
    assert ok.hook_states() == {"_Record": {"count": 20}}

    bad, rec2 = _Linear(20, nan_at=3), _Record()
    bad.register_hooks([rec2])
    with pytest.raises(PcnaSegError, match=r"diverged at iteration 3: loss is not finite \(loss=nan\)"):
        bad.train()
    assert rec2.events == ["after_train completed=False"] and rec2.count == 3


def test_hooks_hold_the_trainer_weakly() -> None:
    trainer, hook = _Linear(1), _Record()
    trainer.register_hooks([hook])
    assert hook.trainer is trainer
    del trainer
    gc.collect()
    with pytest.raises(RuntimeError, match="not registered with a live trainer"):
        _ = hook.trainer


def test_hook_states_round_trip_by_class_name() -> None:
    trainer, hook = _Linear(1), _Record()
    trainer.register_hooks([hook])
    trainer.load_hook_states({"_Record": {"count": 7}, "Other": {"x": 1}})
    assert hook.count == 7


def test_checkpointer_prunes_periodic_files_and_names_a_misfit(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    ck = Checkpointer(model, tmp_path)
    for it in (4, 9, 14):
        ck.save(f"model_{it:07d}", it)
        ck.prune(1)
    assert [p.name for p in checkpoint_files(tmp_path)] == ["model_0000014.pth"]
    ck.save("model_best", 14, mark_last=False)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000014.pth"
    ck.save("model_final", 15)
    ck.prune(0)
    assert [p.name for p in checkpoint_files(tmp_path)] == ["model_final.pth"]
    other = Checkpointer(nn.Linear(3, 2), tmp_path)
    with pytest.raises(WeightsError, match=r"do not fit the model.*size mismatch for weight"):
        other.resume_or_load("", resume=True)


class _Const(DatasetEvaluator):
    def __init__(self, task: str) -> None:
        self.task, self.seen = task, 0

    def reset(self) -> None:
        self.seen = 0

    def process(self, inputs, outputs) -> None:
        self.seen += len(outputs)

    def evaluate(self):
        return {self.task: {"n": self.seen}}


def test_evaluators_combine_and_refuse_a_task_reported_twice() -> None:
    both = DatasetEvaluators([_Const("a"), _Const("b")])
    both.reset()
    both.process([{}, {}], [1, 2])
    assert both.evaluate() == {"a": {"n": 2}, "b": {"n": 2}}
    with pytest.raises(ConfigError, match="both report 'a'"):
        DatasetEvaluators([_Const("a"), _Const("a")]).evaluate()


def test_unknown_or_empty_evaluator_names_are_config_errors() -> None:
    cfg = load_config(opts=["TEST.EVALUATORS", "['coco', 'lvis']"])
    with pytest.raises(
        ConfigError, match=r"TEST.EVALUATORS has unknown \['lvis'\]; known evaluators: \['coco'"
    ):
        build_evaluator(cfg, "any")
    with pytest.raises(ConfigError, match="TEST.EVALUATORS is empty"):
        build_evaluator(load_config(opts=["TEST.EVALUATORS", "[]"]), "any")


def test_config_version_other_than_2_is_refused() -> None:
    with pytest.raises(ConfigError, match="VERSION"):
        load_config(opts=["VERSION", "1"])


def test_one_reader_for_every_weights_file(tmp_path: Path) -> None:
    from pcna_seg.engine.checkpoint import read_checkpoint

    pkl = next((Path(__file__).resolve().parents[1] / "fixtures" / "d2").glob("*.pkl"))
    state = read_checkpoint(pkl)["model"]  # detectron2 model zoo format, without detectron2
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(WeightsError, match="holds Python objects besides tensors"):
        read_checkpoint(tmp_path / "module.pth")
    assert set(read_checkpoint(tmp_path / "module.pth", allow_pickle=True)["model"]) == {"weight", "bias"}


def test_input_format_other_than_chw_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"INPUT.FORMAT 'BGR' is not supported.*INPUT.CHANNELS"):
        load_config(opts=["INPUT.FORMAT", "BGR"])


def test_unsupported_train_sampler_is_refused() -> None:
    with pytest.raises(
        ConfigError, match="DATALOADER.SAMPLER_TRAIN 'RepeatFactorTrainingSampler' is not supported"
    ):
        load_config(opts=["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"])
