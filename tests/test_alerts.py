"""Alerts on the real Prefect server: a failed hot backup and a silence both reach a webhook.

The notification block is Prefect's own custom webhook, pointed at an HTTP server on loopback;
the automations are the ones ``thehive-backup alerts`` makes (deployments/alerts.py), with the
"no complete backup" window shortened to seconds so that its silence can be waited for.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client

from deployments.alerts import FAILED_RUN, NO_BACKUP, ensure_alerts
from deployments.cli import main as cli
from flows.hot_backup import hot_backup

BLOCK = "thb-alerts-test"


class WebhookCatcher:
    """An HTTP server on loopback that queues every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: queue.Queue[dict] = queue.Queue()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.put(json.loads(body or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, wanted, timeout: float) -> dict:
        """The first message ``wanted`` accepts; the others seen are kept for the error."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.received.get(timeout=1)
            except queue.Empty:
                continue
            if wanted(msg):
                return msg
            seen.append(msg)
        raise AssertionError(f"no matching webhook call in {timeout:.0f}s; got {seen}")

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def webhook(prefect_server):
    catcher = WebhookCatcher()
    CustomWebhookNotificationBlock(
        name="thehive-backup alerts test", url=catcher.url, allow_private_urls=True,
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save(BLOCK, overwrite=True)
    yield catcher
    catcher.close()
    with get_client(sync_client=True) as client:
        for name in (FAILED_RUN, NO_BACKUP):
            for automation in client.read_automations_by_name(name=name):
                client.delete_automation(automation.id)


def test_a_failed_backup_and_a_silence_both_fire_the_webhook(webhook, make_stack, real_stack, capsys):
    # Made through the CLI, as an operator would; the silence window shortened to 30 s.
    assert cli(["alerts", f"custom-webhook/{BLOCK}", "--stale-after-hours", str(30 / 3600)]) == 0
    assert FAILED_RUN in capsys.readouterr().out
    path, _ = make_stack("local", cluster=real_stack.cassandra1)
    with pytest.raises(Exception, match="no_such_keyspace"):
        hot_backup(stack=str(path), keyspaces=["no_such_keyspace"])

    failed = webhook.wait_for(lambda m: "hot-backup" in m.get("subject", ""), timeout=120)
    assert "Failed" in failed["subject"]
    assert "no_such_keyspace" in failed["body"]  # the state message: why it failed

    silence = webhook.wait_for(lambda m: "no complete backup" in m.get("subject", ""), timeout=150)
    assert "No hot or cold backup" in silence["body"]


def test_alerts_refuse_a_block_that_does_not_exist(prefect_server):
    from deployments.alerts import AlertSetupError

    with pytest.raises(AlertSetupError, match="not found"):
        ensure_alerts("custom-webhook/no-such-block")
    with pytest.raises(AlertSetupError, match="<block-type-slug>/<name>"):
        ensure_alerts("no-slash")
