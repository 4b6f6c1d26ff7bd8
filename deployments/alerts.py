"""Alerts: Prefect automations that tell the operator when a run failed and when backups stopped.

Two automations, both sending to one notification block of the operator's choice (Slack, Teams,
e-mail, PagerDuty, a custom webhook: any Prefect notification block, made in the UI or in Python):

- ``thehive-backup: a run failed`` — a backup, restore, drill, verify or node rebuild run ended
  Failed or Crashed (reactive, one notification per run);
- ``thehive-backup: no complete backup`` — no hot or cold backup completed for ``stale_after``
  (26 hours by default: a nightly schedule plus slack; proactive, so it fires on silence, which a
  dead worker or a paused schedule also produces).

Made or replaced by ``ensure_alerts`` (``thehive-backup alerts BLOCK``, or prefect.yaml's deploy
step when ``THEHIVE_BACKUP_ALERT_BLOCK`` names a block). Replacing keeps one copy of each.
"""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.automations import Automation
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import EventTrigger, Posture

#: The flows whose failure someone must hear about (prune, list and unlock can wait for the next run).
WATCHED_FLOWS = ["hot-backup", "cold-backup", "restore", "cold-restore", "restore-drill",
                 "verify-backup", "node-rebuild"]
BACKUP_FLOWS = ["hot-backup", "cold-backup"]
FAILED_RUN = "thehive-backup: a run failed"
NO_BACKUP = "thehive-backup: no complete backup"
BLOCK_ENV = "THEHIVE_BACKUP_ALERT_BLOCK"

_FAILED_BODY = (
    "{{ flow.name }} run {{ flow_run.name }} ended {{ flow_run.state.name }}: "
    "{{ flow_run.state.message }}\n{{ flow_run|ui_url }}")
_NO_BACKUP_BODY = ("No hot or cold backup of TheHive completed in the last {hours:g} hours. "
                   "Check the worker, the schedule and the last backup runs.")


class AlertSetupError(RuntimeError):
    pass


def _flows(names: list[str]) -> dict[str, object]:
    """match_related: a flow run's event names its flow as a related resource with role 'flow'."""
    return {"prefect.resource.role": "flow", "prefect.resource.name": names}


def alert_automations(block_document_id: UUID, stale_after: timedelta = timedelta(hours=26),
                      ) -> list[Automation]:
    """The automations, not yet created (pure: what ``ensure_alerts`` would make)."""
    failed = Automation(
        name=FAILED_RUN,
        description="A thehive-backup run ended Failed or Crashed.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_flows(WATCHED_FLOWS),
            posture=Posture.Reactive, threshold=1, within=timedelta(0)),
        actions=[SendNotification(block_document_id=block_document_id,
                                  subject="thehive-backup: {{ flow.name }} {{ flow_run.state.name }}",
                                  body=_FAILED_BODY)])
    stale = Automation(
        name=NO_BACKUP,
        description=f"No hot or cold backup completed within "
                    f"{stale_after.total_seconds() / 3600:g} hours.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Completed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=_flows(BACKUP_FLOWS),
            posture=Posture.Proactive, threshold=1, within=stale_after),
        actions=[SendNotification(block_document_id=block_document_id,
                                  subject="thehive-backup: no complete backup",
                                  body=_NO_BACKUP_BODY.format(
                                      hours=stale_after.total_seconds() / 3600))])
    return [failed, stale]


def notification_block_id(block: str) -> UUID:
    """The document id of a saved notification block, named ``<type-slug>/<name>``."""
    if "/" not in block:
        raise AlertSetupError(f"notification block {block!r}: give it as <block-type-slug>/<name>, "
                              "e.g. slack-webhook/soc-alerts (see `prefect block ls`)")
    try:
        loaded: Any = Block.load(block)
    except ValueError as exc:
        raise AlertSetupError(f"notification block {block!r} not found: {exc}") from exc
    if not hasattr(loaded, "notify"):
        raise AlertSetupError(f"block {block!r} is not a notification block")
    block_id = loaded._block_document_id
    if block_id is None:
        raise AlertSetupError(f"block {block!r} has no saved document")
    return block_id


def ensure_alerts(block: str, stale_after_hours: float = 26) -> list[str]:
    """Create (or replace) both automations, sending to ``block``; the names made."""
    if stale_after_hours <= 0:
        raise AlertSetupError("stale_after_hours must be positive")
    wanted = alert_automations(notification_block_id(block),
                               timedelta(hours=stale_after_hours))
    with get_client(sync_client=True) as client:
        for automation in wanted:
            for old in client.read_automations_by_name(name=automation.name):
                client.delete_automation(old.id)
    return [a.name for a in wanted if a.create() is not None]


def ensure_alerts_from_env() -> list[str]:
    """The deploy step: set the alerts up when ``$THEHIVE_BACKUP_ALERT_BLOCK`` names a block."""
    block = os.environ.get(BLOCK_ENV, "").strip()
    return ensure_alerts(block) if block else []


if __name__ == "__main__":  # prefect.yaml's deploy step
    made = ensure_alerts_from_env()
    print(f"alerts: {', '.join(made)}" if made else f"alerts: none (${BLOCK_ENV} is not set)")
