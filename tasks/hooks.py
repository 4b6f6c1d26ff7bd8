"""Operator hooks: commands the stack file runs on a node at fixed points of a stop/start
(``before_stop``, ``after_stop``, ``before_start``, ``after_start``), e.g. a volume snapshot.

``{node}``, ``{backup_id}`` and ``{stack}`` in a hook's argv are replaced; the argv runs through
the node's Host (never a shell). A failing hook raises; flows/lifecycle.run_hooks decides what
that means for the run.
"""
from __future__ import annotations

from config.model import Hook, Stack
from tasks.hosts import host_for
from tasks.retry import side_effect_task
from tasks.services import event


def hook_argv(stack: Stack, hook: Hook, backup_id: str) -> list[str]:
    return [a.replace("{node}", hook.node).replace("{backup_id}", backup_id).replace("{stack}", stack.name)
            for a in hook.argv]


def run_hook(stack: Stack, step: str, index: int, backup_id: str) -> list[dict]:
    hook: Hook = getattr(stack.hooks, step)[index]
    argv = hook_argv(stack, hook, backup_id)
    started = event("hook", None, hook.node, step=step, argv=argv)
    with host_for(stack, hook.node) as host:
        result = host.run(argv, timeout=hook.timeout)
    return [started, event("hook-done", None, hook.node, step=step,
                           output=result.text.strip()[-2000:])]


@side_effect_task(name="hook", task_run_name="hook {step}[{index}]", retry=False)
def hook_task(stack: Stack, step: str, index: int, backup_id: str) -> list[dict]:
    return run_hook(stack, step, index, backup_id)
