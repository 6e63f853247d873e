"""The automatic-ballooning policy: VM snapshots, the host's memory and settings in, one
decision per VM out, each with its reason in words. Pure: no I/O, no clock (snapshot times
and stats ages come in with the snapshots), so ``plan`` and ``auto`` can call it alike:

    rates = rates_between(previous_state, state)
    decisions = decide([VmInput(state, rates, owned=...)], host_memory, settings)

Rules, in the order they apply (docs/policy.md shows every reason format):

1. Left alone, with the cause in the reason: unreachable or busy socket, no balloon device,
   no or missing stats, stale stats, unknown size, moved by another writer (not owned), or
   the cache-first hint needs qga and qga is unreachable.
2. Bounds, at once: a target is never below the VM's floor (its minimum) and never above its
   maximum or guest RAM.
3. Emergency: a guest whose available memory is below ``emergency_free`` is deflated at once
   (no deadband, no step limit) up to its free reserve.
4. Thrashing: a guest whose swap-in or major-fault rate is above its threshold is never shrunk
   and is given one step back first, whatever the host's state.
5. The host is short when its available memory is below ``target_available`` of its RAM, or
   its PSI ``some avg10`` is above ``psi_threshold``: what it needs (and what rules 2-4 gave)
   is reclaimed from the other VMs in inverse proportion to their shares, clean page cache
   above the cache reserve first (hint on), then free memory above the free reserve.
6. The host has spare memory when available is above target + ``hysteresis``: balloons
   deflate toward guest RAM, guests below their free reserve first (least free first), the
   rest in proportion to their shares. In between, nothing moves.
7. Every move but rules 2-3 is at most ``max_step`` and is skipped when under ``deadband``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from balloonctl.policy.inputs import Action, Decision, VmInput, VmRates, rates_between
    from balloonctl.policy.rules import decide
    from balloonctl.policy.settings import PolicySettings, VmPolicy, policy_for

# Loaded on first use: the config imports ``policy.settings`` on every CLI call (status
# included), and the rules are needed only by plan, auto and the dashboard.
_HOME = {"Action": "inputs", "Decision": "inputs", "VmInput": "inputs", "VmRates": "inputs",
         "rates_between": "inputs", "decide": "rules", "PolicySettings": "settings",
         "VmPolicy": "settings", "policy_for": "settings"}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'balloonctl.policy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"balloonctl.policy.{home}"), name)

__all__ = [
    "Action",
    "Decision",
    "PolicySettings",
    "VmInput",
    "VmPolicy",
    "VmRates",
    "decide",
    "policy_for",
    "rates_between",
]
