"""One description of a batch cluster (PBS or SLURM) for every job the project submits.

A cluster section (in a sweep YAML, or built from ``CAMPAIGN.PBS_RESOURCES``) becomes a
:class:`ClusterSpec`. Its :meth:`ClusterSpec.jobqueue_kwargs` are the keyword arguments of
``dask_jobqueue.PBSCluster`` / ``SLURMCluster``; the same keywords build dask-jobqueue's job
object, whose header (``#PBS`` / ``#SBATCH`` lines) and prologue are the job-script template
for both the dask workers of a sweep and the campaign runner's per-stage qsub scripts
(:func:`job_script`). dask-jobqueue is imported only here and only when a script or cluster
is made; without it, :func:`require_jobqueue` says how to install it.
"""

from __future__ import annotations

import difflib
import importlib
import shlex
from dataclasses import dataclass, field, fields
from typing import Any

from pcna_seg.errors import ConfigError

KINDS = {
    "pbs": ("dask_jobqueue.pbs", "PBSJob", "PBSCluster"),
    "slurm": ("dask_jobqueue.slurm", "SLURMJob", "SLURMCluster"),
}
SCHEDULER_PLACEHOLDER = "tcp://SCHEDULER-ADDRESS:8786"  # shown in dry-run worker scripts
INSTALL_HINT = "pip install 'pcna_seg[cluster]' (dask, distributed, dask-jobqueue)"


@dataclass
class ClusterSpec:
    """What a batch job asks for; keys of a sweep's ``executor.cluster`` section.

    ``kind``: ``pbs`` or ``slurm``; ``jobs``: how many worker jobs a sweep scales to (each runs
    one trial at a time); ``cores`` / ``memory`` (``"16GB"``) / ``walltime`` (``"HH:MM:SS"``)
    per job; ``resource_spec``: PBS ``-l`` selection (``select=1:ncpus=8:ngpus=1``, default
    from cores/memory); ``gpus``: per job (SLURM: ``--gres=gpu:N``; PBS: put ``ngpus`` in
    ``resource_spec``); ``job_extra_directives``: more ``#PBS`` / ``#SBATCH`` lines, without
    the prefix; ``job_script_prologue``: shell lines run before the command (module loads,
    ``cd``); ``local_directory``: worker scratch space; ``python``: interpreter on the nodes.
    """

    kind: str = "pbs"
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    cores: int = 1
    memory: str = "4GB"
    gpus: int = 0
    resource_spec: str | None = None
    job_extra_directives: list[str] = field(default_factory=list)
    job_script_prologue: list[str] = field(default_factory=list)
    local_directory: str | None = None
    log_directory: str | None = None
    python: str | None = None
    job_name: str = "pcna-sweep"
    jobs: int = 1

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ClusterSpec:
        """Build and check a spec from a YAML mapping; ``where`` names it in errors."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"{where} must be a mapping (kind: pbs|slurm, queue, walltime, ...), got {data!r}"
            )
        names = [f.name for f in fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(names)}"
                raise ConfigError(f"Unknown key {key!r} in {where}{hint}")
        spec = cls(**data)
        if spec.kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {spec.kind!r}")
        for key in ("cores", "jobs", "gpus"):
            value = getattr(spec, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "gpus" else 1):
                raise ConfigError(
                    f"{where}: {key} must be an integer >= {0 if key == 'gpus' else 1}, got {value!r}"
                )
        for key in ("job_extra_directives", "job_script_prologue"):
            value = getattr(spec, key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {key} must be a list of strings, got {value!r}")
        return spec

    def jobqueue_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for dask-jobqueue's cluster and job classes (one process per job)."""
        extra = list(self.job_extra_directives)
        if self.kind == "slurm" and self.gpus and not any("gres" in d for d in extra):
            extra.append(f"--gres=gpu:{self.gpus}")
        kw: dict[str, Any] = {
            "cores": self.cores,
            "memory": self.memory,
            "processes": 1,
            "job_name": self.job_name,
            "queue": self.queue,
            "account": self.account,
            "walltime": self.walltime,
            "job_extra_directives": extra,
            "job_script_prologue": list(self.job_script_prologue),
            "local_directory": self.local_directory,
            "log_directory": self.log_directory,
            "python": self.python,
            # one trial at a time per job, whatever its cores (tasks ask for trial=1)
            "worker_extra_args": ["--resources", "trial=1"],
        }
        if not self.walltime:  # no walltime line rather than dask-jobqueue's default of 30 minutes
            kw["job_directives_skip"] = ["-l walltime=" if self.kind == "pbs" else "-t "]
        if self.kind == "pbs":
            kw["resource_spec"] = self.resource_spec
        elif self.resource_spec:
            raise ConfigError(
                "resource_spec is a PBS key; for SLURM use cores, memory, gpus, job_extra_directives"
            )
        return {k: v for k, v in kw.items() if v is not None}


def require_jobqueue(kind: str) -> tuple[Any, Any]:
    """(job class, cluster class) of dask-jobqueue for ``kind``; ConfigError when not installed."""
    module, job, cluster = KINDS[kind]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"A {kind.upper()} cluster needs dask-jobqueue, which cannot be imported here ({exc}); "
            f"install it: {INSTALL_HINT}"
        ) from None
    return getattr(mod, job), getattr(mod, cluster)


def _job(spec: ClusterSpec, scheduler: str) -> Any:
    job_cls, _ = require_jobqueue(spec.kind)
    try:
        return job_cls(scheduler=scheduler, name="worker", **spec.jobqueue_kwargs())
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"Cannot describe a {spec.kind.upper()} job from this cluster section: {exc}"
        ) from None


def job_script(
    spec: ClusterSpec, command: list[str] | None = None, scheduler: str = SCHEDULER_PLACEHOLDER
) -> str:
    """The batch script for one job: dask-jobqueue's shebang, directives and prologue, then
    ``command`` (argv, shell-quoted) or, when None, the dask worker command it would run."""
    job = _job(spec, scheduler)
    if command is None:
        return job.job_script()
    prologue = "\n".join(filter(None, job._job_script_prologue))
    return f"{job.shebang}\n\n{job.job_header}\n{prologue}\n{shlex.join(command)}\n".replace("\n\n\n", "\n\n")


def make_cluster(spec: ClusterSpec) -> Any:
    """Start a dask-jobqueue cluster (its scheduler runs here) scaled to ``spec.jobs`` jobs."""
    _, cluster_cls = require_jobqueue(spec.kind)
    cluster = cluster_cls(**spec.jobqueue_kwargs())
    cluster.scale(jobs=spec.jobs)
    return cluster


def pbs_spec_from_resources(resources: str, job_name: str, prologue: list[str]) -> ClusterSpec:
    """The spec a campaign's ``CAMPAIGN.PBS_RESOURCES`` (one ``#PBS -l`` value such as
    ``select=1:ncpus=8:ngpus=1,walltime=24:00:00``) describes: walltime split off, ncpus read."""
    parts = [p.strip() for p in resources.split(",") if p.strip()]
    walltime = next((p.split("=", 1)[1] for p in parts if p.startswith("walltime=")), None)
    rest = ",".join(p for p in parts if not p.startswith("walltime="))
    cores = 1
    for item in rest.replace(",", ":").split(":"):
        if item.startswith("ncpus=") and item[6:].isdigit():
            cores = int(item[6:])
    return ClusterSpec(
        kind="pbs",
        walltime=walltime,
        cores=cores,
        resource_spec=rest or None,
        job_extra_directives=["-j oe"],
        job_script_prologue=prologue,
        job_name=job_name,
    )
