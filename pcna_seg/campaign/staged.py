"""Run a staged fine-tuning campaign (e.g. Kaggle nuclei → DeepCell nuclei → PCNA phases).

A campaign file is an ordinary config whose ``CAMPAIGN`` node lists stage config files::

    CAMPAIGN:
      NAME: pcna_staged
      STAGES: ["../pcna/stage1_kaggle_R101.yaml", "../pcna/stage2_deepcell_R101.yaml", ...]
      STAGE_OPTS: ["", "", "SOLVER.MAX_ITER 5000"]   # optional, one string per stage
      STAGE_NAMES: ["kaggle", "deepcell", "pcna"]     # optional labels (folders, tables)
      START_FROM: ["", "", ""]                        # optional: "", "none", "<k>" or a file
      SEEDS: [0, 1, 2]                                # optional: repeat the campaign per seed
    OUTPUT_DIR: output/campaigns/pcna_staged

Stage ``k`` writes to ``OUTPUT_DIR/<k>_<name>`` (``OUTPUT_DIR/seed<s>/<k>_<name>`` with
``SEEDS``, each seed's run getting ``SEED s``; an ``OUTPUT_DIR`` in its STAGE_OPTS wins) and,
with ``CHAIN_WEIGHTS``, starts from stage ``k-1``'s ``model_final.pth`` (class-specific layers
are re-initialised by the weight loader when the class count changes). ``START_FROM``
overrides that per stage: ``"none"`` = random init, ``"<j>"`` = stage ``j``'s final weights
(``j < k``), anything else = a weights file.

Each stage runs in its own process, ``tools/train_net.py --num-gpus N`` (the project's
launcher), so it logs only into its own folder and can use several GPUs.

Each stage folder carries ``stage_fingerprint.json`` (see :mod:`.fingerprint`), written when
the stage starts. A re-run compares it with what the campaign would run now: unchanged and
finished → skipped; unchanged and unfinished → resumed (a killed campaign loses no work);
changed (config keys, the weights it starts from, a dataset file) → the stage is *stale* and
the campaign stops before training anything, naming the stage and what changed, unless
``overwrite``: then stale stages are retrained (``train_net.py --overwrite``: built aside,
swapped in when done), and so is every stage that starts from a retrained one.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcna_seg.campaign.fingerprint import (
    FINGERPRINT,
    describe_changes,
    read_fingerprint,
    stage_fingerprint,
    write_fingerprint,
)
from pcna_seg.config import load_config
from pcna_seg.errors import ConfigError, PcnaSegError
from pcna_seg.utils_io import is_leftover, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)
FINAL = "model_final.pth"
TIMING = "stage_time.json"  # wall time of the run that made the stage (kept when it is skipped)
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Stage:
    """One stage run: its config file, output folder, overrides and (with SEEDS) its seed."""

    index: int
    name: str
    config_file: Path
    output_dir: Path
    opts: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def final_weights(self) -> Path:
        return self.output_dir / FINAL

    @property
    def start_weights(self) -> str:
        """The MODEL.WEIGHTS this stage starts from (last one among its overrides), or ""."""
        idx = [i for i, t in enumerate(self.opts[:-1]) if t == "MODEL.WEIGHTS"]
        return self.opts[idx[-1] + 1] if idx else ""

    @property
    def label(self) -> str:
        """``"3_pcna"`` or, with seeds, ``"seed1/3_pcna"``."""
        return (f"seed{self.seed}/" if self.seed is not None else "") + self.output_dir.name

    def status(self) -> str:
        """ "done" (final weights exist), "partial" (checkpoints exist) or "todo"."""
        if self.final_weights.is_file():
            return "done"
        if (self.output_dir / "last_checkpoint").is_file():
            return "partial"
        return "todo"

    def has_output(self) -> bool:
        """True when the stage folder holds anything (leftovers of killed runs aside)."""
        return self.output_dir.is_dir() and any(not is_leftover(p) for p in self.output_dir.iterdir())


@dataclass
class Decision:
    """What a run does with a stage: ``skip``, ``resume``, ``train`` (new), ``retrain`` or
    ``stale`` (changed, and no ``overwrite``); ``reason`` says why."""

    action: str
    reason: str


def decide_stage(stage: Stage, upstream: str, overwrite: bool) -> Decision:
    """Compare the stage's saved fingerprint with the current one (see the module docstring).

    ``upstream`` is non-empty when the weights this stage starts from are (re)made by this run
    (it says by which stage), which makes a stage with output stale whatever its fingerprint.
    """
    if not stage.has_output():
        return Decision("train", "new stage")
    saved = read_fingerprint(stage.output_dir)
    if saved is None:
        changes = [f"its folder holds output but no {FINGERPRINT} saying what made it"]
    else:
        changes = describe_changes(saved, stage_fingerprint(stage.config_file, stage.opts))
    if upstream:
        changes = [c for c in changes if not c.startswith("the weights it starts from")] + [upstream]
    if not changes:
        done = stage.status() == "done"
        return Decision("skip" if done else "resume", "unchanged: " + ("skipping" if done else "resuming"))
    return Decision("retrain" if overwrite else "stale", "; ".join(changes))


def plan_decisions(stages: list[Stage], overwrite: bool, strict: bool = True) -> list[Decision]:
    """A decision per stage, in order, before anything trains; with ``strict``, ConfigError for
    stale stages (no ``overwrite``), naming the first, what changed, and the way out."""
    remade: dict[str, Stage] = {}  # final weights this run (re)makes → the stage making them
    decisions = []
    for st in stages:
        up = remade.get(st.start_weights)
        upstream = f"it starts from stage {up.label}'s weights, which this run retrains" if up else ""
        d = decide_stage(st, upstream, overwrite)
        if d.action != "skip":
            remade[str(st.final_weights)] = st
        decisions.append(d)
    stale = [(st, d) for st, d in zip(stages, decisions) if d.action == "stale"]
    if stale and strict:
        st, d = stale[0]
        also = ", ".join(f"{s.label}" for s, _ in stale[1:])
        raise ConfigError(
            f"Stage {st.index} ({st.name}) in {st.output_dir} is stale: {d.reason}"
            + (f" (also stale: stage {also})" if also else "")
            + "; pass --overwrite to retrain it and the stages after it"
        )
    return decisions


def _per_stage(ccfg: Any, key: str, n: int, campaign_file: Path) -> list[Any]:
    """CAMPAIGN.<key> as one entry per stage ([] → n empty strings); ConfigError on a bad length."""
    values = list(getattr(ccfg.CAMPAIGN, key))
    if values and len(values) != n:
        raise ConfigError(
            f"CAMPAIGN.{key} has {len(values)} entries but CAMPAIGN.STAGES has {n} ({campaign_file})"
        )
    return values or [""] * n


def check_seeds(seeds: list[Any], where: str) -> list[int]:
    """Seeds as ints; ConfigError for a non-integer or a repeated seed (``where`` names the source)."""
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be integers, got {list(seeds)!r}") from None
    dup = sorted({s for s in out if out.count(s) > 1})
    if dup:
        raise ConfigError(f"{where} lists seed {dup[0]} more than once ({out}); each seed runs once")
    return out


def _start_opts(spec: Any, k: int, previous: list[Stage], chain: bool, where: str) -> list[str]:
    """MODEL.WEIGHTS override of stage ``k`` (1-based) from its START_FROM entry (module docstring)."""
    spec = str(spec).strip()
    if spec == "":
        return ["MODEL.WEIGHTS", str(previous[-1].final_weights)] if chain and previous else []
    if spec.lower() == "none":
        return ["MODEL.WEIGHTS", ""]
    if spec.isdigit():
        j = int(spec)
        if not 1 <= j < k:
            raise ConfigError(
                f"CAMPAIGN.START_FROM entry {k} of {where} is {spec!r}: a stage can start only from an "
                f"earlier stage (1..{k - 1})"
            )
        return ["MODEL.WEIGHTS", str(previous[j - 1].final_weights)]
    return ["MODEL.WEIGHTS", spec]


def plan_campaign(
    campaign_file: str | os.PathLike, opts: list[str] | None = None, seeds: list[int] | None = None
) -> tuple[Any, list[Stage]]:
    """Read a campaign file and return (campaign config, stage runs with their full overrides).

    ``opts`` (``KEY VALUE`` pairs) apply to every stage, before the stage's own STAGE_OPTS;
    ``seeds`` (e.g. from ``--seeds``) replaces ``CAMPAIGN.SEEDS``. With seeds, the list holds
    every stage once per seed, seed by seed. ConfigError for a missing stage config, a wrong
    key, a repeated seed or two stages writing into one folder, before anything trains.
    """
    campaign_file = Path(campaign_file)
    ccfg = load_config(campaign_file, list(opts or []))
    if not ccfg.CAMPAIGN.STAGES:
        raise ConfigError(f"CAMPAIGN.STAGES is empty in {campaign_file}; list the stage config files")
    n = len(ccfg.CAMPAIGN.STAGES)
    stage_opts = _per_stage(ccfg, "STAGE_OPTS", n, campaign_file)
    names = _per_stage(ccfg, "STAGE_NAMES", n, campaign_file)
    starts = _per_stage(ccfg, "START_FROM", n, campaign_file)
    if ccfg.CAMPAIGN.EXECUTOR not in ("local", "pbs"):
        raise ConfigError(f"CAMPAIGN.EXECUTOR must be 'local' or 'pbs', got {ccfg.CAMPAIGN.EXECUTOR!r}")
    if seeds is not None:
        seed_list: list[int | None] = list(check_seeds(seeds, "--seeds"))
    else:
        seed_list = list(check_seeds(ccfg.CAMPAIGN.SEEDS, f"CAMPAIGN.SEEDS of {campaign_file}"))
    seed_list = seed_list or [None]
    stages: list[Stage] = []
    for seed in seed_list:
        root = Path(ccfg.OUTPUT_DIR) / (f"seed{seed}" if seed is not None else "")
        run: list[Stage] = []
        for i, rel in enumerate(ccfg.CAMPAIGN.STAGES):
            run.append(
                _plan_stage(
                    campaign_file, ccfg, i, rel, stage_opts[i], names[i], starts[i], root, run, opts, seed
                )
            )
        stages += run
    folders: dict[Path, Stage] = {}
    for st in stages:
        key = st.output_dir.resolve()
        if key in folders:
            first = folders[key]
            raise ConfigError(
                f"Stages {first.index} ({first.name}) and {st.index} ({st.name}) of {campaign_file} "
                f"would both write into {st.output_dir} (an OUTPUT_DIR in CAMPAIGN.STAGE_OPTS is shared by "
                "every seed and must differ between stages); give each stage its own folder"
            )
        folders[key] = st
    return ccfg, stages


def _plan_stage(
    campaign_file: Path,
    ccfg: Any,
    i: int,
    rel: str,
    stage_opt: Any,
    name: Any,
    start: Any,
    root: Path,
    previous: list[Stage],
    opts: list[str] | None,
    seed: int | None,
) -> Stage:
    path = Path(rel) if Path(rel).is_absolute() else campaign_file.parent / rel
    if not path.is_file():
        raise ConfigError(
            f"Stage config {rel!r} listed in CAMPAIGN.STAGES of {campaign_file} not found ({path})"
        )
    if not isinstance(stage_opt, str):
        raise ConfigError(
            f"CAMPAIGN.STAGE_OPTS entry {i + 1} of {campaign_file} must be one string "
            f'"KEY VALUE KEY VALUE", got {stage_opt!r}'
        )
    label = str(name).strip() or path.stem
    if "/" in label or label in (".", ".."):
        raise ConfigError(
            f"CAMPAIGN.STAGE_NAMES entry {i + 1} of {campaign_file} is not a folder name: {label!r}"
        )
    own = split_opts(stage_opt)
    own_out = [own[j + 1] for j in range(len(own) - 1) if own[j] == "OUTPUT_DIR"]
    out = Path(own_out[-1]) if own_out else root / f"{i + 1}_{label}"  # a stage's own folder wins
    full = list(opts or []) + own
    if "MODEL.WEIGHTS" not in own or str(start).strip():
        full += _start_opts(start, i + 1, previous, bool(ccfg.CAMPAIGN.CHAIN_WEIGHTS), str(campaign_file))
    full += (["SEED", str(seed)] if seed is not None else []) + ["OUTPUT_DIR", str(out)]
    try:  # fail now, before any stage trains, if a stage config is wrong
        load_config(path, full)
    except ConfigError as exc:
        raise ConfigError(f"Stage {i + 1} ({path.name}) of {campaign_file}: {exc}") from None
    return Stage(i + 1, label, path, out, full, seed)


def split_opts(text: str) -> list[str]:
    """Split ``"KEY VALUE KEY VALUE"`` on spaces outside brackets/quotes; Python literals stay whole.

    ``"INPUT.CHANNELS ['pcna', 'dic'] SOLVER.STEPS (5,)"`` → 4 tokens; a token wholly in
    quotes loses them (``'a b'`` → ``a b``).
    """
    out: list[str] = []
    cur, quote, depth = "", "", 0
    for ch in text.strip() + " ":
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch.isspace() and depth == 0:
            if cur:
                out.append(cur)
            cur = ""
            continue
        cur += ch
    return [t[1:-1] if len(t) > 1 and t[0] == t[-1] and t[0] in "'\"" else t for t in out]


def write_pbs_scripts(ccfg: Any, stages: list[Stage]) -> Path:
    """Write one qsub script per stage and ``submit.sh`` chaining them with afterok.

    Each script is rendered by :func:`pcna_seg.campaign.cluster.job_script` from the cluster
    description ``CAMPAIGN.PBS_RESOURCES`` makes (the template dask-jobqueue's PBS workers of a
    sweep use too): ``#PBS -N``, ``-l`` resources, ``-l walltime``, ``-j oe``, ``cd`` to the repo.
    """
    from pcna_seg.campaign.cluster import job_script, pbs_spec_from_resources

    root = Path(ccfg.OUTPUT_DIR) / "pbs"
    repo = Path(__file__).resolve().parents[2]
    lines = [
        "#!/usr/bin/env bash",
        "# Submit the campaign's stages; each waits for the previous one.",
        "set -e",
    ]
    prev = ""
    for st in stages:
        cmd = [
            sys.executable,
            str(repo / "tools" / "train_net.py"),
            "--config-file",
            str(st.config_file.resolve()),
            "--resume",
            *st.opts,
        ]
        name = f"{ccfg.CAMPAIGN.NAME or 'campaign'}_{st.index}"
        spec = pbs_spec_from_resources(ccfg.CAMPAIGN.PBS_RESOURCES, name, [f"cd {shlex.quote(str(repo))}"])
        script = root / f"stage{st.index}_{st.name}.pbs"
        write_text_atomic(script, job_script(spec, cmd))
        dep = f"-W depend=afterok:${prev} " if prev else ""
        lines.append(f"J{st.index}=$(qsub {dep}{script})")
        prev = f"J{st.index}"
    lines.append('echo "submitted: ' + " ".join(f"${{J{s.index}}}" for s in stages) + '"')
    submit = write_text_atomic(root / "submit.sh", "\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit


def stage_command(stage: Stage, action: str, num_gpus: int = 1) -> list[str]:
    """The ``tools/train_net.py`` command line that runs ``stage`` (``--overwrite`` to retrain)."""
    mode = "--overwrite" if action == "retrain" else "--resume"
    return [
        sys.executable,
        str(REPO / "tools" / "train_net.py"),
        "--config-file",
        str(stage.config_file),
        mode,
        "--num-gpus",
        str(num_gpus),
        *stage.opts,
    ]


def run_stage_process(stage: Stage, action: str, num_gpus: int = 1) -> float:
    """Train one stage in its own ``train_net.py`` process; returns its wall time in seconds.

    The child's output passes through (its log also lands in the stage's own ``log.txt``);
    a failure is a PcnaSegError naming the stage and the child's last error line.
    """
    cmd = stage_command(stage, action, num_gpus)
    logger.debug("running %s", shlex.join(cmd))
    t0 = time.perf_counter()
    tail: deque[str] = deque(maxlen=30)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip())
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        errors = [ln for ln in tail if ln.startswith("error:")]
        why = errors[-1][len("error:") :].strip() if errors else (tail[-1] if tail else "no output")
        raise PcnaSegError(
            f"Stage {stage.label} ({stage.config_file.name}) failed (exit {proc.returncode}): {why}"
        )
    write_json_atomic(stage.output_dir / TIMING, {"wall_s": round(wall, 2), "action": action}, indent=1)
    return wall


def run_campaign(
    campaign_file: str | os.PathLike,
    opts: list[str] | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    seeds: list[int] | None = None,
    num_gpus: int = 1,
    report: bool = True,
) -> dict[str, Any]:
    """Run (or, for the PBS executor / ``dry_run``, only plan) every stage in order.

    Before anything trains: every stage config loads, every dataset resolves, no two stages
    share a folder, no chained class list shrinks (:func:`~pcna_seg.campaign.checks.check_campaign`),
    and stages are skipped, resumed, trained or (``overwrite``) retrained as their fingerprints
    say (module docstring); a stale stage without ``overwrite`` is a ConfigError. Each stage
    trains in its own ``train_net.py`` process (``num_gpus`` per stage). Returns the summary
    also written to ``OUTPUT_DIR/campaign_summary.json`` (per stage run: ``was``, ``action``,
    ``reason``, ``data``, ``iterations``, ``wall_s``, ``final_losses``, ``metrics``), and, with
    ``report``, writes ``campaign_report.md`` and its PNGs (:mod:`.report`).
    """
    from pcna_seg.campaign.checks import check_campaign
    from pcna_seg.campaign.report import stage_row, write_report

    if num_gpus < 1:
        raise ConfigError(f"--num-gpus must be >= 1, got {num_gpus}")
    ccfg, stages = plan_campaign(campaign_file, opts, seeds)
    if ccfg.CAMPAIGN.EXECUTOR == "pbs":
        dry_run = True
    data = check_campaign(stages, strict=not dry_run)
    decisions = plan_decisions(stages, overwrite, strict=not dry_run)
    root = Path(ccfg.OUTPUT_DIR)
    summary: dict[str, Any] = {
        "campaign": ccfg.CAMPAIGN.NAME or Path(campaign_file).stem,
        "campaign_file": str(campaign_file),
        "seeds": sorted({st.seed for st in stages if st.seed is not None}),
        "stages": [],
    }
    if ccfg.CAMPAIGN.EXECUTOR == "pbs":
        summary["pbs_submit"] = str(write_pbs_scripts(ccfg, stages))
        logger.info("PBS scripts written; submit with %s", summary["pbs_submit"])
    t_start = time.perf_counter()
    for st, decision in zip(stages, decisions):
        row: dict[str, Any] = {
            "index": st.index,
            "name": st.name,
            "seed": st.seed,
            "label": st.label,
            "output_dir": str(st.output_dir),
            "was": st.status(),
            "action": decision.action,
            "reason": decision.reason,
        }
        where = f"Stage {st.label} ({len(stages)} stage runs)"
        if dry_run:
            row["command"] = shlex.join(stage_command(st, decision.action, num_gpus)[1:])
        elif decision.action == "skip":
            logger.info("%s %s", where, decision.reason)
        else:  # the fingerprint first, so a kill can be resumed
            logger.info(
                "%s %s",
                where,
                {"train": "new: training", "retrain": "changed: retraining"}.get(
                    decision.action, decision.reason
                ),
            )
            if decision.action != "retrain":
                write_fingerprint(st.output_dir, stage_fingerprint(st.config_file, st.opts))
            run_stage_process(st, decision.action, num_gpus)
            if decision.action == "retrain":
                write_fingerprint(st.output_dir, stage_fingerprint(st.config_file, st.opts))
        row.update(stage_row(st, data.get(st.label, {})))
        summary["stages"].append(row)
        if not dry_run:
            write_json_atomic(root / "campaign_summary.json", summary, indent=2)
    if not dry_run:
        summary["wall_s_this_run"] = round(time.perf_counter() - t_start, 1)
        if report:
            summary.update(write_report(root, summary))
        write_json_atomic(root / "campaign_summary.json", summary, indent=2)
    return summary
