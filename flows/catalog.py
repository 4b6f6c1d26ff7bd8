"""The list-backups flow: the catalog (tasks/catalog.py) as a table in the UI."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from config.model import Stack
from flows.common import resolve_stack
from tasks.catalog import scan
from tasks.repositories import open_repository


@flow(name="list-backups")
def list_backups(stack: str = "") -> list[dict]:
    """List the backups of the stack's repository (id, kind, dates, components, size, status).

    Args:
        stack: the stack file's path; empty: $THEHIVE_BACKUP_STACK or the Prefect Variable
            thehive-backup-stack.
    """
    st: Stack = resolve_stack(stack)
    with open_repository(st) as repo:
        found = scan(repo)
    logger = get_run_logger()
    for note in found.notes():
        logger.warning(note)
    create_table_artifact(found.rows, key="backup-catalog", description=f"backups of {st.name}")
    logger.info("%d backup(s) in %s", len(found.rows), st.repository)
    return found.rows
