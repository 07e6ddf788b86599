"""Staged fine-tuning campaigns: several stage configs run as one command, weights chained."""

from pcna_seg.campaign.staged import Stage, plan_campaign, run_campaign

__all__ = ["Stage", "plan_campaign", "run_campaign"]
