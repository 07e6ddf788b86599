"""Where sweep trials run: ``local`` (a thread pool here) or ``dask`` (LocalCluster, a running
scheduler, or a dask-jobqueue PBS/SLURM cluster).

Every trial runs as a subprocess of the project's own tool (``tools/train_unet.py``,
``tools/train_net.py`` or ``tools/run_campaign.py``) launched by :func:`execute_trial`, on
whatever machine the executor picked. A separate process per trial means a crash of one trial
(a segfault, CUDA out of memory, a kill) is recorded as that trial's failure and cannot take
the sweep or a dask worker down; no state (dataset catalog, torch threads, CUDA memory) leaks
from one trial into the next; ``CUDA_VISIBLE_DEVICES`` can pin a trial to its GPU before CUDA
starts; and the trial runs exactly what a user would type (the tool's ``--resume`` continues
an interrupted trial from its checkpoint). The cost is an interpreter start (~2 s) per trial.

:func:`execute_trial` holds an exclusive lock on ``<trial>/.trial.lock`` while the trial runs,
so ``--status`` can tell a running trial from one whose process died (``interrupted``).
dask is imported only by :class:`DaskExecutor`.
"""

from __future__ import annotations

import difflib
import fcntl
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from pcna_seg.campaign.cluster import INSTALL_HINT, job_script, make_cluster, require_jobqueue
from pcna_seg.errors import ConfigError
from pcna_seg.utils_io import write_json_atomic

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
RECORD, LOCK, LOG = "trial.json", ".trial.lock", "log.txt"
OnDone = Callable[[dict[str, Any]], None]


# ------------------------------------------------------------------------------------------------
# one trial
def read_record(trial_dir: str | Path) -> dict[str, Any]:
    """A trial's ``trial.json`` ({} when missing or unreadable)."""
    try:
        with open(Path(trial_dir) / RECORD, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_locked(trial_dir: str | Path) -> bool:
    """True while some process runs the trial (holds its lock), on any machine sharing the file."""
    path = Path(trial_dir) / LOCK
    if not path.is_file():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _flatten(node: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}/"))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        out[prefix[:-1]] = float(node)
    return out


def _eval_metrics(run_dir: Path, test_datasets: list[str]) -> dict[str, float]:
    """Numbers of ``eval/<dataset>/results.json``: the first test dataset's plain, others prefixed."""
    out: dict[str, float] = {}
    files = {p.parent.name: p for p in (run_dir / "eval").glob("*/results.json")}
    order = [d for d in test_datasets if d in files] + sorted(d for d in files if d not in test_datasets)
    for i, name in enumerate(order):
        with open(files[name], encoding="utf-8") as fh:
            flat = _flatten({k: v for k, v in json.load(fh).items() if k not in ("max_dets",)})
        out.update({(k if i == 0 else f"{name}/{k}"): v for k, v in flat.items()})
    return out


def collect_metrics(trainer: str, run_dir: Path, test_datasets: list[str]) -> dict[str, float]:
    """The numbers a finished trial reports (U-Net: last epoch of ``summary.json`` and ``best/*``;
    Mask R-CNN: its evaluation; campaign: its last stage's evaluation)."""
    if trainer == "unet":
        with open(run_dir / "summary.json", encoding="utf-8") as fh:
            summary = json.load(fh)
        out = {k: v for k, v in _flatten(summary.get("final", {})).items() if k != "seconds"}
        out.update({f"best/{k}": v for k, v in _flatten(summary.get("best", {})).items()})
        return out
    if trainer == "campaign":
        with open(run_dir / "campaign_summary.json", encoding="utf-8") as fh:
            stages = json.load(fh).get("stages", [])
        return _eval_metrics(Path(stages[-1]["output_dir"]), test_datasets) if stages else {}
    return _eval_metrics(run_dir, test_datasets)


# metrics a trainer can report (checked before any trial starts)
_NET_METRIC = re.compile(
    r"^((segm|bbox|segm_any_class)/(AP|AP50|AP75|APs|APm|APl|AR@\d+|AP-.+)"
    r"|cells/[\w@.\-]+|phases/(accuracy|balanced_accuracy))$"
)


def check_metric(spec: Any, trial: Any, cfg: Any) -> None:
    """ConfigError when the trainer never reports ``spec.metric`` (naming what it reports);
    ``cfg``: a U-Net trial's resolved config (its classes name the metrics)."""
    m = spec.metric
    if spec.trainer == "unet":
        from pcna_seg.unet.train import metric_keys

        known = [*metric_keys(cfg), "lr", "epoch"]
        if m in known or (m.startswith("best/") and m[5:] in known):
            return
        close = difflib.get_close_matches(m, known, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"metric {m!r} in {spec.file} is not reported by U-Net training; {hint}"
            f"it reports {', '.join(known)} (and best/<UNET.SOLVER.MONITOR>)"
        )
    plain = m.split("/", 1)[1] if m.split("/", 1)[0] in trial.test_datasets[1:] else m
    if not _NET_METRIC.match(plain):
        raise ConfigError(
            f"metric {m!r} in {spec.file} is not reported by Mask R-CNN evaluation; use e.g. segm/AP50, "
            "bbox/AP, cells/f1@0.5, cells/pq@0.5, phases/accuracy (a later test dataset: <name>/segm/AP50)"
        )


def _error_from_log(log: Path, rc: int) -> str:
    """One line saying why a trial failed: the tool's ``error:`` line, or the last log line."""
    if rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    try:
        lines = [
            ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()
        ]
    except OSError:
        lines = []
    errors = [ln for ln in lines if ln.startswith("error:")]
    last = errors[-1] if errors else (lines[-1] if lines else "no output")
    return f"exit code {rc}: {last[:300]}"


def _worker_gpus(pool: list[str] | None) -> str | None:
    """The GPU group of this dask worker (LocalCluster workers are named 0..N-1), if any."""
    if not pool:
        return None
    try:
        from distributed import get_worker

        name = get_worker().name
        return pool[int(name) % len(pool)] if str(name).isdigit() else None
    except (ImportError, ValueError):
        return None


def execute_trial(p: dict[str, Any]) -> dict[str, Any]:
    """Run one trial (``p`` from :func:`pcna_seg.campaign.sweep.payload`) in a subprocess.

    Never raises for a failing trial: the returned record (also ``trial.json``) has
    ``status`` ``done`` (with ``metrics``) or ``failed`` (with ``error``), ``wall_s`` (all
    attempts), ``attempts``, ``host``. ``p["gpus"]``: CUDA_VISIBLE_DEVICES for the trial
    ("" = CPU only; None = inherit, or this dask worker's group of ``p["gpu_pool"]``).
    """
    tdir = Path(p["dir"])
    tdir.mkdir(parents=True, exist_ok=True)
    with open(tdir / LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {
                "id": p["id"],
                "values": p["values"],
                "status": "running",
                "error": "run by another process",
            }
        prev = read_record(tdir)
        rec: dict[str, Any] = {
            "id": p["id"],
            "values": p["values"],
            "status": "running",
            "inputs": p["inputs"],
            "attempts": int(prev.get("attempts", 0)) + 1,
            "wall_s": float(prev.get("wall_s", 0.0)),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        env = dict(os.environ, OMP_NUM_THREADS=str(p.get("cpus", 1)), PYTHONUNBUFFERED="1")
        gpus = p.get("gpus") if p.get("gpus") is not None else _worker_gpus(p.get("gpu_pool"))
        if gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpus
            rec["gpus"] = gpus
        cmd = [sys.executable, str(REPO / "tools" / p["tool"]), *p["args"]]
        t0 = time.perf_counter()
        try:
            with open(tdir / LOG, "ab") as log:
                log.write(f"\n=== attempt {rec['attempts']} on {rec['host']}: {cmd}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=p.get("cwd") or REPO
                )
                rec["pid"] = proc.pid
                write_json_atomic(tdir / RECORD, rec, indent=1)
                rc = proc.wait()
            rec["wall_s"] += time.perf_counter() - t0
            if rc == 0:
                rec["metrics"] = collect_metrics(p["trainer"], tdir / "run", p.get("test_datasets", []))
                rec["status"], rec["error"] = "done", ""
            else:
                rec["status"], rec["error"] = "failed", _error_from_log(tdir / LOG, rc)
        except Exception as exc:  # a trial's failure never stops the sweep
            rec["wall_s"] += time.perf_counter() - t0
            rec["status"], rec["error"] = "failed", f"{type(exc).__name__}: {exc}"
        rec["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        rec.pop("pid", None)
        write_json_atomic(tdir / RECORD, rec, indent=1)
        return rec


# ------------------------------------------------------------------------------------------------
# executors
def _gpu_groups(per_trial: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES values, one per concurrent trial ([] without GPUs or per_trial 0)."""
    if per_trial <= 0:
        return []
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # noqa: BLE001  (no usable CUDA: CPU trials)
        n = 0
    ids = [str(i) for i in range(n)]
    return [",".join(ids[i : i + per_trial]) for i in range(0, n - per_trial + 1, per_trial)]


class LocalExecutor:
    """``workers`` trials at once on this machine, each on its own GPU(s) when there are any."""

    def __init__(self, workers: int, gpus_per_trial: int) -> None:
        self.workers, self.gpus_per_trial = workers, gpus_per_trial

    def describe(self) -> str:
        return f"local, {self.workers} at once"

    def job_script(self) -> str | None:
        return None

    def run(self, payloads: list[dict[str, Any]], on_done: OnDone) -> None:
        groups = _gpu_groups(self.gpus_per_trial)
        workers = min(self.workers, len(groups)) if groups else self.workers
        if self.gpus_per_trial and not groups:
            logger.info("No GPU here: trials run on the CPU")
        free: queue.Queue[str] = queue.Queue()
        for g in groups:
            free.put(g)

        def one(p: dict[str, Any]) -> dict[str, Any]:
            gpu = free.get() if groups else ("" if self.gpus_per_trial == 0 else None)
            try:
                return execute_trial({**p, "gpus": gpu})
            finally:
                if groups:
                    free.put(gpu)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for fut in as_completed([pool.submit(one, p) for p in payloads]):
                on_done(fut.result())


class DaskExecutor:
    """Trials as dask tasks: a LocalCluster of ``workers``, the scheduler at ``address``, or a
    dask-jobqueue cluster (one trial at a time per job, via the worker resource ``trial=1``)."""

    def __init__(self, spec: Any, gpus_per_trial: int) -> None:
        self.spec, self.gpus_per_trial = spec, gpus_per_trial
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"executor.kind dask needs dask.distributed ({exc}); install it: {INSTALL_HINT}"
            ) from None
        if spec.cluster is not None:
            require_jobqueue(spec.cluster.kind)

    def describe(self) -> str:
        if self.spec.cluster is not None:
            c = self.spec.cluster
            return f"dask-jobqueue {c.kind.upper()} cluster, {c.jobs} job(s)"
        if self.spec.address:
            return f"dask scheduler at {self.spec.address}"
        return f"dask LocalCluster, {self.spec.workers} workers"

    def job_script(self) -> str | None:
        """The batch script each worker job runs (cluster executors only)."""
        if self.spec.cluster is None:
            return None
        return job_script(self._cluster_spec())

    def _cluster_spec(self) -> Any:
        from dataclasses import replace

        c = self.spec.cluster
        return replace(c, job_script_prologue=[f"cd {REPO}", *c.job_script_prologue])

    def run(self, payloads: list[dict[str, Any]], on_done: OnDone) -> None:
        from distributed import Client, LocalCluster
        from distributed import as_completed as completed

        logging.getLogger("distributed").setLevel(logging.WARNING)  # its INFO lines drown the trials'

        cluster, resources, pool = None, None, None
        if self.spec.cluster is not None:
            cluster, resources = make_cluster(self._cluster_spec()), {"trial": 1}
            client = Client(cluster)
        elif self.spec.address:
            client = Client(self.spec.address, timeout="30s")
        else:  # trials are subprocesses: thread workers suffice and start in well under a second
            pool = _gpu_groups(self.gpus_per_trial) or None
            n = min(self.spec.workers, len(pool)) if pool else self.spec.workers
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=False, dashboard_address=None)
            client = Client(cluster)
        try:
            futures: dict[str, tuple[Any, dict[str, Any]]] = {}
            for p in payloads:
                q = (
                    {**p, "gpu_pool": pool}
                    if pool
                    else ({**p, "gpus": ""} if self.gpus_per_trial == 0 else p)
                )
                fut = client.submit(
                    execute_trial, q, key=f"trial-{p['id']}-{time.time_ns()}", pure=False, resources=resources
                )
                futures[fut.key] = (fut, p)
            for fut in completed([f for f, _ in futures.values()]):
                p = futures[fut.key][1]
                try:
                    rec = fut.result()
                except Exception as exc:  # the worker died (walltime, node lost): a failed trial
                    rec = {"id": p["id"], "values": p["values"], "status": "failed", "error": f"dask: {exc}"}
                on_done(rec)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def make_executor(spec: Any, resources: Any) -> LocalExecutor | DaskExecutor:
    """The executor a sweep's ``executor`` section describes (dask checked importable now)."""
    if spec.kind == "local":
        return LocalExecutor(spec.workers, resources.gpus)
    return DaskExecutor(spec, resources.gpus)
