"""Hyperparameter sweeps over either trainer (or whole campaigns), one directory per trial.

A sweep file (YAML, paths relative to it; examples in ``configs/sweeps/``) has ``name``,
``trainer`` (``unet`` | ``train_net`` | ``campaign``), ``base`` (the config or campaign file),
``opts`` (fixed ``KEY: value`` overrides), ``output_dir``, ``metric`` and ``mode`` (``max`` |
``min``), ``grid`` (``KEY: [values]``, every combination), ``random`` (``samples``, ``seed``,
``axes: {KEY: {uniform|loguniform|randint: [lo, hi]} | {choice: [values]}}``; each draw is
crossed with the grid), ``resources`` per trial (``cpus``, ``gpus``, ``memory``, ``walltime``)
and ``executor`` (``kind: local|dask``, ``workers``, ``address``, ``cluster``: see
:mod:`pcna_seg.campaign.executors` and :class:`pcna_seg.campaign.cluster.ClusterSpec`).

Every trial is the base config with its axis values as ``KEY VALUE`` overrides, in
``output_dir/trials/<hash>``: the hash of the trainer and of the resolved config's values that
differ from the project defaults (``OUTPUT_DIR`` aside), so axis combinations that resolve to
the same config are one trial, a re-run finds its trials again (finished: skipped; interrupted
or failed: continued with ``--resume`` from their checkpoint) and a key added to the project
later moves nothing. The folder holds ``config.yaml`` (resolved, ``OUTPUT_DIR`` = ``run/``),
``trial.json`` (values, status, metrics, wall time, error, input-file fingerprint), ``log.txt``
and ``run/``. A finished trial is *stale* when its input files (tiles, datasets, starting
weights) or one of its config values (a changed default) changed: the sweep stops before any
trial runs unless ``overwrite``, which retrains it from scratch.

Everything a user can get wrong (unknown keys with the closest valid one, empty axes, a metric
the trainer does not report, a missing dask / dask-jobqueue install) is a ConfigError raised
before any trial starts.
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pcna_seg.campaign import executors as ex
from pcna_seg.campaign.cluster import ClusterSpec
from pcna_seg.config import load_config
from pcna_seg.config.config import load_yaml_with_bases
from pcna_seg.config.defaults import get_default_config
from pcna_seg.errors import ConfigError, OutputExistsError
from pcna_seg.utils_io import file_stats, fingerprint, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)
TRAINERS = ("unet", "train_net", "campaign")
SPEC_KEYS = tuple("name trainer base opts output_dir metric mode grid random resources executor".split())
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")
PLACEHOLDER = "<trial>"  # OUTPUT_DIR while hashing: the hash cannot depend on the folder it names
MARKER = "sweep.json"


@dataclass
class Resources:
    """Per trial: CPU threads, GPUs (used when present; 0 = CPU only), memory, walltime."""

    cpus: int = 1
    gpus: int = 1
    memory: str = "4GB"
    walltime: str | None = None


@dataclass
class ExecutorSpec:
    """``local`` (``workers`` trials at once here) or ``dask`` (a LocalCluster of ``workers``,
    a running scheduler at ``address``, or a dask-jobqueue ``cluster``)."""

    kind: str = "local"
    workers: int = 1
    address: str = ""
    cluster: ClusterSpec | None = None


@dataclass
class Trial:
    """One point of the sweep: its axis values, their overrides and its folder."""

    id: str
    values: dict[str, Any]
    opts: list[str]
    dir: Path
    config_text: str = ""
    test_datasets: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"


@dataclass
class SweepSpec:
    """A parsed and checked sweep file (see the module docstring)."""

    file: Path
    name: str
    trainer: str
    base: Path
    opts: list[str]
    output_dir: Path
    metric: str
    mode: str
    grid: dict[str, list[Any]]
    random_axes: dict[str, dict[str, Any]]
    samples: int
    seed: int
    resources: Resources
    executor: ExecutorSpec

    @property
    def axes(self) -> list[str]:
        return list(self.grid) + [k for k in self.random_axes if k not in self.grid]


# ------------------------------------------------------------------------------------------------
# parsing and checks
def token(value: Any) -> str:
    """A YAML value as the ``VALUE`` of a ``KEY VALUE`` override (parsed back by the config)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return repr([token(v) if isinstance(v, str) else v for v in value])
    return repr(value)


def _config_keys() -> list[str]:
    return list(_flat(yaml.safe_load(get_default_config().dump())))


def check_key(key: Any, where: str) -> str:
    """ConfigError unless ``key`` is a config key (value, not group), with the closest one."""
    keys = _config_keys()
    if isinstance(key, str) and key in keys:
        return key
    close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"{where}: {key!r} is not a config key{hint}")


def _mapping(data: Any, where: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    for key in data if allowed else ():
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(allowed)}"
            raise ConfigError(f"Unknown key {key!r} in {where}{hint}")
    return data


def _positive_int(value: Any, where: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where} must be an integer >= {low}, got {value!r}")
    return value


def _random_axes(data: Any, src: str) -> tuple[dict[str, dict[str, Any]], int, int]:
    rnd = _mapping(data, f"random in {src}", ("samples", "seed", "axes"))
    if not rnd:
        return {}, 0, 0
    axes = _mapping(rnd.get("axes"), f"random.axes in {src}")
    if not axes:
        raise ConfigError(f"random in {src} has no axes; give random.axes: {{KEY: {{uniform: [lo, hi]}}}}")
    samples = _positive_int(rnd.get("samples", 1), f"random.samples in {src}")
    seed = _positive_int(rnd.get("seed", 0), f"random.seed in {src}", 0)
    for key, dist in axes.items():
        where = f"random axis {key} in {src}"
        check_key(key, where)
        dist = _mapping(dist, where, DISTRIBUTIONS)
        if len(dist) != 1:
            raise ConfigError(f"{where} needs one distribution ({', '.join(DISTRIBUTIONS)}), got {dist!r}")
        ((kind, arg),) = dist.items()
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{where}: {kind} needs a non-empty list, got {arg!r}")
        if kind != "choice":
            ok = len(arg) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg)
            if not ok or arg[0] > arg[1] or (kind == "loguniform" and arg[0] <= 0):
                raise ConfigError(
                    f"{where}: {kind} needs [low, high] with low <= high (> 0 for log), got {arg}"
                )
    return axes, samples, seed


def _executor(data: Any, resources: Resources, src: str) -> ExecutorSpec:
    d = _mapping(data, f"executor in {src}", ("kind", "workers", "address", "cluster"))
    spec = ExecutorSpec(
        kind=d.get("kind", "local"), workers=d.get("workers", 1), address=d.get("address") or ""
    )
    if spec.kind not in ("local", "dask"):
        raise ConfigError(f"executor.kind in {src} must be 'local' or 'dask', got {spec.kind!r}")
    _positive_int(spec.workers, f"executor.workers in {src}")
    if d.get("cluster") is not None:
        if spec.kind != "dask" or spec.address:
            raise ConfigError(f"executor.cluster in {src} needs executor.kind dask and no executor.address")
        raw = dict(_mapping(d["cluster"], f"executor.cluster in {src}"))
        for key, value in (("cores", resources.cpus), ("memory", resources.memory), ("jobs", spec.workers),
                           ("walltime", resources.walltime), ("gpus", resources.gpus)):  # fmt: skip
            raw.setdefault(key, value)
        spec.cluster = ClusterSpec.from_dict(raw, f"executor.cluster in {src}")
    return spec


def load_sweep(path: str | Path, executor: str | None = None, workers: int | None = None) -> SweepSpec:
    """Read and check a sweep file; ``executor`` / ``workers`` override its executor section."""
    path = Path(path)
    data = _mapping(load_yaml_with_bases(path), f"sweep file {path}", SPEC_KEYS)
    src = str(path)
    trainer = data.get("trainer", "unet")
    if trainer not in TRAINERS:
        raise ConfigError(f"trainer in {src} must be one of {', '.join(TRAINERS)}, got {trainer!r}")
    if not data.get("base"):
        raise ConfigError(
            f"{src} needs base: the config file{' (campaign)' if trainer == 'campaign' else ''}"
        )
    base = Path(os.path.normpath(path.parent / os.path.expanduser(str(data["base"]))))
    if not base.is_file():
        raise ConfigError(f"base config {data['base']!r} named in {src} not found ({base})")
    opts: list[str] = []
    for key, value in _mapping(data.get("opts"), f"opts in {src}").items():
        opts += [check_key(key, f"opts in {src}"), token(value)]
    grid = dict(_mapping(data.get("grid"), f"grid in {src}"))
    for key, values in grid.items():
        check_key(key, f"grid axis in {src}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid axis {key} in {src} has no values; give a non-empty list")
    random_axes, samples, seed = _random_axes(data.get("random"), src)
    if not grid and not random_axes:
        raise ConfigError(f"{src} has no axes: give grid (KEY: [values]) and/or random.axes")
    for key in set(grid) & set(random_axes):
        raise ConfigError(f"{key} in {src} is both a grid axis and a random axis; keep one")
    mode = data.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode in {src} must be 'max' or 'min', got {mode!r}")
    res = _mapping(data.get("resources"), f"resources in {src}", ("cpus", "gpus", "memory", "walltime"))
    resources = Resources(**res)
    _positive_int(resources.cpus, f"resources.cpus in {src}")
    _positive_int(resources.gpus, f"resources.gpus in {src}", 0)
    spec_exec = dict(_mapping(data.get("executor"), f"executor in {src}"))
    if executor:
        spec_exec["kind"] = executor
        if executor == "local" and spec_exec.pop("cluster", None) is not None:
            spec_exec["workers"] = 1  # workers counted batch jobs there; one trial at a time here
        if executor == "local":
            spec_exec.pop("address", None)
    if workers:
        spec_exec["workers"] = workers
    out = Path(data.get("output_dir") or f"output/sweeps/{data.get('name') or path.stem}")
    metric = data.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"{src} needs metric: the reported value to rank trials by (e.g. pr_auc_mean)")
    return SweepSpec(
        path,
        str(data.get("name") or path.stem),
        trainer,
        base,
        opts,
        out,
        metric,
        mode,
        grid,
        random_axes,
        samples,
        seed,
        resources,
        _executor(spec_exec, resources, src),
    )


# ------------------------------------------------------------------------------------------------
# trials
def _draw(dist: dict[str, Any], rng: np.random.Generator) -> Any:
    ((kind, arg),) = dist.items()
    if kind == "choice":
        return arg[int(rng.integers(len(arg)))]
    if kind == "randint":
        return int(rng.integers(int(arg[0]), int(arg[1]) + 1))
    lo, hi = (math.log(arg[0]), math.log(arg[1])) if kind == "loguniform" else (arg[0], arg[1])
    x = float(rng.uniform(lo, hi))
    x = math.exp(x) if kind == "loguniform" else x
    return float(f"{x:.4g}")  # readable values in configs and tables; same draw, same value


def axis_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every axis combination: the grid product, each crossed with the seeded random draws."""
    grid = [dict(zip(spec.grid, combo)) for combo in itertools.product(*spec.grid.values())]
    if not spec.random_axes:
        return grid
    rng = np.random.default_rng(spec.seed)
    draws = [{k: _draw(d, rng) for k, d in spec.random_axes.items()} for _ in range(spec.samples)]
    return [{**g, **r} for g in grid for r in draws]


def _inputs(cfg: Any, trainer: str, config_file: Path, opts: list[str]) -> dict[str, Any]:
    """Fingerprint of the files a trial reads besides its config (tiles, datasets, weights)."""
    if trainer == "unet":
        files = [f for f in (cfg.UNET.DATA.TRAIN_H5, cfg.UNET.DATA.VAL_H5, cfg.UNET.WEIGHTS) if f]
        return {"files": file_stats(f for f in files if Path(f).is_file())}
    if trainer == "train_net":
        from pcna_seg.campaign.fingerprint import stage_fingerprint

        fp = stage_fingerprint(config_file, opts)
        return {k: fp[k] for k in ("weights", "datasets", "images")}
    return {}  # a campaign checks its stages' fingerprints itself


def _resolve(spec: SweepSpec, axis_opts: list[str], where: str) -> tuple[str, str, list[str], Any]:
    """(hash text, config YAML, test datasets, cfg) of one trial, OUTPUT_DIR = placeholder."""
    opts = [*spec.opts, *axis_opts, "OUTPUT_DIR", PLACEHOLDER]
    try:
        if spec.trainer == "campaign":
            from pcna_seg.campaign.staged import plan_campaign

            ccfg, stages = plan_campaign(spec.base, opts)
            dumps = [load_config(s.config_file, s.opts).dump() for s in stages]
            last = load_config(stages[-1].config_file, stages[-1].opts)
            return "\n---\n".join([ccfg.dump(), *dumps]), ccfg.dump(), list(last.DATASETS.TEST), ccfg
        cfg = load_config(spec.base, opts)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg.dump(), cfg.dump(), list(cfg.DATASETS.TEST), cfg


def expand_trials(spec: SweepSpec) -> list[Trial]:
    """The sweep's distinct trials (every config checked now; equal configs merged)."""
    trials: dict[str, Trial] = {}
    for values in axis_points(spec):
        axis_opts = [t for k, v in values.items() for t in (k, token(v))]
        where = f"Trial {values} of {spec.file}"
        text, config_text, tests, cfg = _resolve(spec, axis_opts, where)
        parts = [yaml.safe_load(x) for x in text.split("\n---\n")]
        ident = {"trainer": spec.trainer, "config": [_non_default(p) for p in parts]}
        tid = fingerprint(ident)[:12]
        if tid in trials:
            logger.info("Trial %s resolves to the same config as %s: run once", values, trials[tid].values)
            continue
        tdir = spec.output_dir / "trials" / tid
        run = str((tdir / "run").resolve())
        trial = Trial(tid, values, axis_opts, tdir, config_text.replace(PLACEHOLDER, run), tests)
        if spec.trainer != "campaign":
            trial.inputs = _inputs(cfg, spec.trainer, spec.base, [*spec.opts, *axis_opts])
        trials[tid] = trial
    return list(trials.values())


def trial_status(trial: Trial) -> str:
    """``done``, ``running`` (its lock is held), ``interrupted``, ``failed``, ``stale`` (done, but
    :func:`changes` finds something) or ``pending``."""
    rec = ex.read_record(trial.dir)
    status = rec.get("status", "pending")
    if ex.is_locked(trial.dir):
        return "running"
    if status == "running":
        return "interrupted"
    if status == "done" and changes(trial, rec):
        return "stale"
    return status if status in ("done", "failed") else "pending"


def changes(trial: Trial, rec: dict[str, Any]) -> list[str]:
    """What changed since a finished trial ran: its input files, or config keys it had whose
    value differs now (a changed project default; keys added since are not a change)."""
    out = []
    if rec.get("inputs", {}) != json.loads(json.dumps(trial.inputs, default=str)):
        out.append("its input files (tiles, datasets or starting weights) changed")
    try:
        saved = _flat(yaml.safe_load((trial.dir / "config.yaml").read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError):
        saved = {}
    now = _flat(yaml.safe_load(trial.config_text) or {})
    keys = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k])
    if keys:
        out.append("config " + ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in keys[:3]))
    return out


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"A": {"B": 1}}`` -> ``{"A.B": 1}``."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _non_default(cfg: dict[str, Any]) -> dict[str, Any]:
    """The values of a resolved config that differ from the project defaults: a trial's identity,
    so a key added to the project later (with its default) leaves every trial where it is."""
    defaults = _flat(yaml.safe_load(get_default_config().dump()))
    return {k: v for k, v in _flat(cfg).items() if k not in defaults or defaults[k] != v}


# ------------------------------------------------------------------------------------------------
# running
def _prepare_output(spec: SweepSpec) -> None:
    out = spec.output_dir
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise OutputExistsError(
            f"Output folder {out} is not empty and holds no sweep; choose another output_dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / MARKER, {"name": spec.name, "file": str(spec.file.resolve())}, indent=1)


def payload(spec: SweepSpec, trial: Trial) -> dict[str, Any]:
    """What a worker needs to run a trial (plain data, picklable)."""
    tool = {"unet": "train_unet.py", "train_net": "train_net.py", "campaign": "run_campaign.py"}[spec.trainer]
    args = ["--config-file", str(spec.base.resolve())] + ([] if spec.trainer == "campaign" else ["--resume"])
    if spec.trainer == "train_net" and spec.resources.gpus > 1:  # one process per GPU (DDP)
        args += ["--num-gpus", str(spec.resources.gpus)]
    opts = [*spec.opts, *trial.opts, "OUTPUT_DIR", str(trial.run_dir.resolve())]
    return {
        "id": trial.id,
        "dir": str(trial.dir.resolve()),
        "trainer": spec.trainer,
        "tool": tool,
        "args": [*args, *opts],
        "values": trial.values,
        "inputs": trial.inputs,
        "test_datasets": trial.test_datasets,
        "cpus": spec.resources.cpus,
        "cwd": str(Path.cwd()),  # relative paths in configs mean what they mean here
    }


def plan(spec: SweepSpec) -> tuple[list[Trial], dict[str, str], Any]:
    """Trials, their status and the executor, every check done (nothing is written)."""
    trials = expand_trials(spec)
    ex.check_metric(
        spec,
        trials[0],
        load_config(spec.base, [*spec.opts, *trials[0].opts]) if spec.trainer == "unet" else None,
    )
    executor = ex.make_executor(spec.executor, spec.resources)
    return trials, {t.id: trial_status(t) for t in trials}, executor


def run_sweep(spec: SweepSpec, overwrite: bool = False) -> dict[str, Any]:
    """Run every trial that is not done (stale ones only with ``overwrite``); write the results.

    Returns ``{"ran": n, "skipped": n, "failed": n, "results": {...paths}}``.
    """
    from pcna_seg.campaign.sweep_report import write_results

    trials, status, executor = plan(spec)
    stale = [t for t in trials if status[t.id] == "stale"]
    if stale and not overwrite:
        raise ConfigError(
            f"{len(stale)} finished trial(s) of {spec.file} changed since they ran (first: {stale[0].dir}, "
            f"{stale[0].values}: {'; '.join(changes(stale[0], ex.read_record(stale[0].dir)))}); "
            "pass --overwrite to retrain them"
        )
    busy = [t for t in trials if status[t.id] == "running"]
    if busy:
        logger.warning("%d trial(s) are running elsewhere; leaving them alone", len(busy))
    _prepare_output(spec)
    for t in stale:
        shutil.rmtree(t.run_dir, ignore_errors=True)
        logger.info("Trial %s is stale: retraining it from scratch (--overwrite)", t.id)
    todo = [t for t in trials if status[t.id] not in ("done", "running")]
    for t in todo:
        t.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(t.dir / "config.yaml", t.config_text)
    records = {t.id: ex.read_record(t.dir) for t in trials}
    logger.info(
        "Sweep %s: %d trials, %d to run (%s executor)", spec.name, len(trials), len(todo), executor.describe()
    )
    failed = 0

    def done(rec: dict[str, Any]) -> None:
        nonlocal failed
        records[rec["id"]] = rec
        failed += rec.get("status") == "failed"
        logger.info("Trial %s %s %s", rec["id"], rec.get("status"), rec.get("error", "") or rec.get("values"))
        write_results(spec, trials, records, final=False)

    if todo:
        executor.run([payload(spec, t) for t in todo], done)
    results = write_results(spec, trials, records, final=True)
    return {"ran": len(todo), "skipped": len(trials) - len(todo), "failed": failed, "results": results}
