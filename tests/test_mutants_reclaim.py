"""The reclaim script's parser and its words: the cases `./dev mutate` found untested.

Oracles: the module docstring (``key=value`` lines, KiB figures, the script's keys),
``ReclaimReport``'s (``result`` is ok, short or failed), ``explain``'s ("the code itself
when unknown") and docs/cli.md (the reasons ``hint`` shows for the drop method).
"""

from __future__ import annotations

import pytest

from balloonctl.errors import AgentError
from balloonctl.model import HintMethod
from balloonctl.reclaim import explain, parse_reclaim_output
from balloonctl.units import KiB

# The output of one good run (as tests/test_reclaim.py's GOOD).
GOOD = {
    "balloonctl-reclaim": "1",
    "before_free": "100000", "before_buffers": "20", "before_cached": "213408",
    "after_free": "165536", "after_buffers": "20", "after_cached": "147872",
    "method": "reclaim", "why": "no-swappiness-key", "mounted": "1", "result": "ok",
}


def render(fields: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in fields.items()).encode()


def error(output: bytes) -> str:
    with pytest.raises(AgentError) as info:
        parse_reclaim_output(output, vm="vm1")
    return str(info.value)


def test_a_report_without_a_mount() -> None:
    report = parse_reclaim_output(render({**GOOD, "mounted": "0"}))
    assert report.mounted is False
    assert "mounted cgroup2" not in report.explanation


def test_blank_lines_anywhere_are_skipped() -> None:
    lines = render(GOOD).split(b"\n")
    padded = b"\n".join([*lines[:3], b"", b"   ", *lines[3:]])
    report = parse_reclaim_output(padded)
    assert report.free_after == 165536 * KiB and report.result == "ok"


def test_a_value_with_an_equals_sign_is_named_with_its_key() -> None:
    # the key is what comes before the first '=': the rest is the (wrong) value
    message = error(render({**GOOD, "before_cached": "12=3"}))
    assert "before_cached '12=3' is not a size in KiB" in message


def test_every_missing_key_is_named() -> None:
    message = error(render({k: v for k, v in GOOD.items() if k not in ("result", "after_free")}))
    assert message.endswith("missing after_free, result")


def test_a_wrong_result_lists_the_results_there_are() -> None:
    assert error(render({**GOOD, "result": "maybe"})).endswith(
        "result 'maybe' (expected ok, short, failed)")


def test_non_ascii_output_says_so() -> None:
    assert error("why=é\n".encode()).endswith(
        "printed something unexpected: output that is not ASCII")


@pytest.mark.parametrize(("method", "why", "starts"), [
    (HintMethod.DROP, "no-memory-reclaim", "memory.reclaim missing (kernel < 5.19"),
    (HintMethod.DROP, "no-cgroup2",
     "cgroup2 not mounted at /sys/fs/cgroup (set hint_mount_cgroup to mount it)"),
    (HintMethod.RECLAIM, "file-pages", "memory.reclaim, file pages only"),
])
def test_explain_gives_the_words_of_a_known_method(method: HintMethod, why: str,
                                                   starts: str) -> None:
    assert explain(method, why).startswith(starts)


def test_explain_gives_the_code_itself_when_the_pair_is_unknown() -> None:
    assert explain(HintMethod.DROP, "file-pages") == "file-pages"  # a reclaim reason
    assert explain(HintMethod.RECLAIM, "from-the-future") == "from-the-future"
