"""Run a staged fine-tuning campaign (e.g. Kaggle nuclei → DeepCell nuclei → PCNA phases).

A campaign file is an ordinary config whose ``CAMPAIGN`` node lists stage config files::

    CAMPAIGN:
      NAME: pcna_staged
      STAGES: ["../pcna/stage1_kaggle_R101.yaml", "../pcna/stage2_deepcell_R101.yaml", ...]
      STAGE_OPTS: ["", "", "SOLVER.MAX_ITER 5000"]
    OUTPUT_DIR: output/campaigns/pcna_staged

Stage ``k`` writes to ``OUTPUT_DIR/<k>_<stage file stem>`` and, with ``CHAIN_WEIGHTS``,
starts from stage ``k-1``'s ``model_final.pth`` (class-specific layers are re-initialised by
the weight loader when the class count changes).

Each stage folder carries ``stage_fingerprint.json`` (see :mod:`.fingerprint`), written when
the stage starts. A re-run compares it with what the campaign would run now: unchanged and
finished → skipped; unchanged and unfinished → resumed (a killed campaign loses no work);
changed (config keys, the weights it starts from, a dataset file) → the stage is *stale* and
the campaign stops before training anything, naming the stage and what changed, unless
``overwrite``: then stale stages are retrained (``run_train_net(..., overwrite=True)``: built
aside, swapped in when done), and so is every stage that starts from a retrained one.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
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
from pcna_seg.errors import ConfigError
from pcna_seg.utils_io import is_leftover, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)
FINAL = "model_final.pth"


@dataclass
class Stage:
    """One stage: its config file, output folder and the overrides it runs with."""

    index: int
    name: str
    config_file: Path
    output_dir: Path
    opts: list[str] = field(default_factory=list)

    @property
    def final_weights(self) -> Path:
        return self.output_dir / FINAL

    @property
    def start_weights(self) -> str:
        """The MODEL.WEIGHTS this stage starts from (last one among its overrides), or ""."""
        idx = [i for i, t in enumerate(self.opts[:-1]) if t == "MODEL.WEIGHTS"]
        return self.opts[idx[-1] + 1] if idx else ""

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
        upstream = (
            f"it starts from stage {up.index} ({up.name})'s weights, which this run retrains" if up else ""
        )
        d = decide_stage(st, upstream, overwrite)
        if d.action != "skip":
            remade[str(st.final_weights)] = st
        decisions.append(d)
    stale = [(st, d) for st, d in zip(stages, decisions) if d.action == "stale"]
    if stale and strict:
        st, d = stale[0]
        also = ", ".join(f"{s.index} ({s.name})" for s, _ in stale[1:])
        raise ConfigError(
            f"Stage {st.index} ({st.name}) in {st.output_dir} is stale: {d.reason}"
            + (f" (also stale: stage {also})" if also else "")
            + "; pass --overwrite to retrain it and the stages after it"
        )
    return decisions


def plan_campaign(campaign_file: str | os.PathLike, opts: list[str] | None = None) -> tuple[Any, list[Stage]]:
    """Read a campaign file and return (campaign config, stages with their full overrides).

    ``opts`` (``KEY VALUE`` pairs) apply to every stage, before the stage's own STAGE_OPTS.
    """
    campaign_file = Path(campaign_file)
    ccfg = load_config(campaign_file, list(opts or []))
    if not ccfg.CAMPAIGN.STAGES:
        raise ConfigError(f"CAMPAIGN.STAGES is empty in {campaign_file}; list the stage config files")
    stage_opts = list(ccfg.CAMPAIGN.STAGE_OPTS)
    if stage_opts and len(stage_opts) != len(ccfg.CAMPAIGN.STAGES):
        raise ConfigError(
            f"CAMPAIGN.STAGE_OPTS has {len(stage_opts)} entries but CAMPAIGN.STAGES has "
            f"{len(ccfg.CAMPAIGN.STAGES)} ({campaign_file})"
        )
    if ccfg.CAMPAIGN.EXECUTOR not in ("local", "pbs"):
        raise ConfigError(f"CAMPAIGN.EXECUTOR must be 'local' or 'pbs', got {ccfg.CAMPAIGN.EXECUTOR!r}")
    root = Path(ccfg.OUTPUT_DIR)
    stages: list[Stage] = []
    for i, rel in enumerate(ccfg.CAMPAIGN.STAGES):
        path = Path(rel) if Path(rel).is_absolute() else campaign_file.parent / rel
        if not path.is_file():
            raise ConfigError(
                f"Stage config {rel!r} listed in CAMPAIGN.STAGES of {campaign_file} not found ({path})"
            )
        out = root / f"{i + 1}_{path.stem}"
        if stage_opts and not isinstance(stage_opts[i], str):
            raise ConfigError(
                f"CAMPAIGN.STAGE_OPTS entry {i + 1} of {campaign_file} must be one string "
                f'"KEY VALUE KEY VALUE", got {stage_opts[i]!r}'
            )
        stage_opts_i = split_opts(stage_opts[i]) if stage_opts else []
        full = list(opts or []) + stage_opts_i + ["OUTPUT_DIR", str(out)]
        if ccfg.CAMPAIGN.CHAIN_WEIGHTS and stages and "MODEL.WEIGHTS" not in stage_opts_i:
            full += ["MODEL.WEIGHTS", str(stages[-1].final_weights)]
        try:  # fail now, before any stage trains, if a stage config is wrong
            load_config(path, full)
        except ConfigError as exc:
            raise ConfigError(f"Stage {i + 1} ({path.name}) of {campaign_file}: {exc}") from None
        stages.append(Stage(i + 1, path.stem, path, out, full))
    return ccfg, stages


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


def _stage_results(stage: Stage) -> dict[str, Any]:
    """Evaluation results a finished stage wrote (OUTPUT_DIR/eval/<dataset>/results.json)."""
    out = {}
    for res in sorted((stage.output_dir / "eval").glob("*/results.json")):
        with open(res, encoding="utf-8") as fh:
            out[res.parent.name] = json.load(fh)
    return out


def _headline(results: dict[str, Any]) -> dict[str, float]:
    """Pick segm/bbox AP and AP50 from a results.json, whatever its nesting."""
    flat: dict[str, float] = {}
    for task in ("segm", "bbox"):
        block = results.get(task, {})
        for key in ("AP", "AP50"):
            if isinstance(block.get(key), (int, float)):
                flat[f"{task}/{key}"] = float(block[key])
    return flat


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


def plot_campaign(rows: list[dict[str, Any]], out_png: Path) -> Path | None:
    """Bar chart of segm/bbox AP50 per stage and test dataset (what people look at first)."""
    from pcna_seg.evaluation.report import pyplot, save_figure

    plt = pyplot()

    bars = [(f"{r['index']}_{r['name']}\n{ds}", m) for r in rows for ds, m in r.get("metrics", {}).items()]
    if not bars:
        return None
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(bars)), 3.6))
    xs = range(len(bars))
    for off, key, color in ((-0.2, "segm/AP50", "tab:blue"), (0.2, "bbox/AP50", "tab:orange")):
        ax.bar([x + off for x in xs], [m.get(key, 0.0) for _, m in bars], width=0.4, label=key, color=color)
    ax.set_xticks(list(xs), [label for label, _ in bars], fontsize=7)
    ax.set_ylim(0, 1 if all(v <= 1 for _, m in bars for v in m.values()) else None)
    ax.set_ylabel("AP50")
    ax.legend(fontsize=8)
    ax.set_title("campaign: held-out AP50 after each stage", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=110)


def run_campaign(
    campaign_file: str | os.PathLike,
    opts: list[str] | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run (or, for the PBS executor / ``dry_run``, only plan) every stage in order.

    Stages are skipped, resumed, trained or (``overwrite``) retrained as their fingerprints
    say (module docstring); a stale stage without ``overwrite`` is a ConfigError raised before
    any stage trains. Returns the summary also written to ``OUTPUT_DIR/campaign_summary.json``
    (per stage: ``was`` = status found, ``action``, ``reason``, ``metrics``).
    """
    from pcna_seg.engine.trainer import run_train_net

    ccfg, stages = plan_campaign(campaign_file, opts)
    if ccfg.CAMPAIGN.EXECUTOR == "pbs":
        dry_run = True
    decisions = plan_decisions(stages, overwrite, strict=not dry_run)
    root = Path(ccfg.OUTPUT_DIR)
    summary: dict[str, Any] = {"campaign": ccfg.CAMPAIGN.NAME or Path(campaign_file).stem, "stages": []}
    if ccfg.CAMPAIGN.EXECUTOR == "pbs":
        summary["pbs_submit"] = str(write_pbs_scripts(ccfg, stages))
        logger.info("PBS scripts written; submit with %s", summary["pbs_submit"])
        dry_run = True
    for st, decision in zip(stages, decisions):
        status = st.status()
        row: dict[str, Any] = {
            "index": st.index,
            "name": st.name,
            "output_dir": str(st.output_dir),
            "was": status,
            "action": decision.action,
            "reason": decision.reason,
        }
        where = f"Stage {st.index}/{len(stages)} ({st.name})"
        if dry_run:
            row["command"] = f"tools/train_net.py --config-file {st.config_file} " + shlex.join(st.opts)
        elif decision.action == "skip":
            logger.info("%s %s", where, decision.reason)
        elif decision.action == "retrain":
            logger.info("%s changed (%s): retraining it (--overwrite)", where, decision.reason)
            run_train_net(str(st.config_file), st.opts, overwrite=True)
            write_fingerprint(st.output_dir, stage_fingerprint(st.config_file, st.opts))
        else:  # new, or unchanged and unfinished: the fingerprint first, so a kill can be resumed
            logger.info("%s %s", where, "new: training" if decision.action == "train" else decision.reason)
            write_fingerprint(st.output_dir, stage_fingerprint(st.config_file, st.opts))
            run_train_net(str(st.config_file), st.opts, resume=True)
        results = _stage_results(st)
        row["metrics"] = {ds: _headline(r) for ds, r in results.items()}
        summary["stages"].append(row)
        if not dry_run:
            write_json_atomic(root / "campaign_summary.json", summary, indent=2)
    if not dry_run:
        png = plot_campaign(summary["stages"], root / "campaign_summary.png")
        summary["plot"] = str(png) if png else None
        write_json_atomic(root / "campaign_summary.json", summary, indent=2)
    return summary
