"""Staged fine-tuning campaigns: several stage configs run as one command, weights chained."""

from pcna_seg.campaign.fingerprint import FINGERPRINT, describe_changes, stage_fingerprint
from pcna_seg.campaign.staged import Decision, Stage, plan_campaign, plan_decisions, run_campaign

__all__ = [
    "FINGERPRINT",
    "Decision",
    "Stage",
    "describe_changes",
    "plan_campaign",
    "plan_decisions",
    "run_campaign",
    "stage_fingerprint",
]
