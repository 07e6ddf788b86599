"""Checkpoints: atomic writes, last_checkpoint, weights_only loading, RNG round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pcna_seg.config import get_default_config
from pcna_seg.engine import checkpoint as ck
from pcna_seg.errors import WeightsError


def _checkpointer(out: Path) -> ck.Checkpointer:
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return ck.Checkpointer(model, out, get_default_config(), optimizer=opt)


def test_save_writes_checkpoint_and_marker(tmp_path: Path) -> None:
    c = _checkpointer(tmp_path)
    path = c.save("model_0000004", 4, seed=7)
    assert path == tmp_path / "model_0000004.pth"
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    data = torch.load(path, weights_only=True)  # plain tensors/values only
    assert data["iteration"] == 4 and data["seed"] == 7
    assert "SOLVER:" in data["config"] and set(data["rng"]) >= {"python", "numpy", "torch"}
    assert not list(tmp_path.glob(".*tmp*"))


def test_failure_while_saving_leaves_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = _checkpointer(tmp_path)
    c.save("model_0000001", 1)

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        c.save("model_0000003", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert c.last_checkpoint() == tmp_path / "model_0000001.pth"


def test_resume_restores_state_and_rng(tmp_path: Path) -> None:
    c = _checkpointer(tmp_path)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    c.save("model_final", 9)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    with torch.no_grad():
        c.model.weight.zero_()
    c2 = _checkpointer(tmp_path)
    assert c2.resume_or_load("", resume=True) == 10
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]["weight"]
    assert torch.equal(c2.model.weight.detach(), saved)


def test_corrupt_and_missing_files_are_weights_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="bad.pth"):
        ck.read_checkpoint(bad)
    with pytest.raises(WeightsError, match="not found"):
        ck.read_checkpoint(tmp_path / "missing.pth")


def test_resume_never_silently_starts_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """last_checkpoint naming a missing/corrupt file → the newest readable checkpoint (logged);
    checkpoints that all fail to read → WeightsError naming them; no checkpoint → a new run."""
    c = _checkpointer(tmp_path)
    for it in (2, 5, 8):
        c.save(f"model_{it:07d}", it)
    (tmp_path / "model_0000008.pth").unlink()  # last_checkpoint names a file that is gone
    with caplog.at_level("WARNING"):
        assert _checkpointer(tmp_path).resume_or_load("", resume=True) == 6
    assert "model_0000005.pth" in caplog.text and "model_0000008.pth" in caplog.text
    (tmp_path / "model_0000005.pth").write_bytes(b"truncated")  # the newest remaining one is corrupt
    (tmp_path / "last_checkpoint").write_text("model_0000005.pth")
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert _checkpointer(tmp_path).resume_or_load("", resume=True) == 3
    assert "cannot be read" in caplog.text and "model_0000002.pth" in caplog.text
    (tmp_path / "model_0000002.pth").write_bytes(b"")
    (tmp_path / "last_checkpoint").unlink()
    with pytest.raises(
        WeightsError, match=r"no checkpoint there can be read \(model_0000005.pth, model_0000002"
    ):
        _checkpointer(tmp_path).resume_or_load("", resume=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "last_checkpoint").write_text("model_final.pth")  # names a file that never got written
    with caplog.at_level("INFO"):
        assert _checkpointer(empty).resume_or_load("", resume=True) == 0
    assert "starting a new run" in caplog.text


def test_strict_loading_refuses_what_would_not_come_from_the_file(tmp_path: Path) -> None:
    """load_model_weights(strict=True) (evaluation): a parameter missing from the file or of
    another shape is a WeightsError naming it and the shapes; nothing is copied."""
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    partial = tmp_path / "partial.pth"
    torch.save({"model": {"0.weight": src[0].weight, "0.bias": src[0].bias}}, partial)
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    before = model[0].weight.detach().clone()
    with pytest.raises(
        WeightsError, match=r"parameter 1\.weight is not in the file \(the model expects shape \[1, 2\]\)"
    ):
        ck.load_model_weights(model, partial, strict=True)
    assert torch.equal(model[0].weight, before)
    ck.load_model_weights(model, partial)  # fine-tuning: the missing layer keeps its init
    assert torch.equal(model[0].weight, src[0].weight)
