"""A dense 2048² field with 2,000+ detections predicts in bounded memory (peak RSS < 3 GB).

Run in a subprocess so the peak resident size belongs to this prediction alone. The quick
model has random weights; score threshold 0, no NMS and 2,000 detections per image make it
return exactly 2,000 instances, each with a mask, all written into one label image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHILD = r"""
import json, resource, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from pcna_seg.config import load_config
from pcna_seg.inference.predictor import Predictor
from pcna_seg.modeling import build_model
cfg = load_config(sys.argv[1] + "/configs/quick_schedules/quick_stage3_pcna.yaml", [
    "MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "2000", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST", "1.0", "MODEL.RPN.NMS_THRESH", "1.0",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "3000", "MODEL.RPN.POST_NMS_TOPK_TEST", "3000"])
torch.manual_seed(0)
path = sys.argv[2]
torch.save({"model": build_model(cfg).state_dict(), "class_names": ["G1/G2", "S", "M"]}, path)
pred = Predictor(cfg, path)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:2048, 0:2048]
img = rng.normal(300, 30, (2048, 2048))
for cy in range(22, 2048, 44):  # 2,116 nuclei on a jittered grid
    for cx in range(22, 2048, 44):
        y, x = cy + rng.uniform(-5, 5), cx + rng.uniform(-5, 5)
        sl = (slice(int(y) - 20, int(y) + 21), slice(int(x) - 20, int(x) + 21))
        img[sl][(yy[sl] - y) ** 2 + (xx[sl] - x) ** 2 <= 18 ** 2] = rng.uniform(1500, 4000)
chans = {"pcna": img.astype(np.uint16), "dic": rng.integers(0, 1000, (2048, 2048)).astype(np.uint16)}
p = pred.predict_arrays(chans)
labels = p.to_label_image()
print(json.dumps({"n": len(p), "labels": int(labels.max()),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@pytest.mark.slow
def test_dense_field_predicts_in_bounded_memory(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(tmp_path / "w.pth")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 2000 and out["labels"] > 1000  # every instance kept a mask
    assert out["peak_mb"] < 3000, out  # N x H x W float masks would need 31 GB
