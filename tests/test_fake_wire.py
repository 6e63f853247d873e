"""QMP framing: JSON values split anyhow across reads, junk, 0xFF resets, encoding."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rawqmp import RawQMP

from balloonctl.fake import FakeVM
from balloonctl.fake.wire import JSONStream, ParseError, encode, event, timestamp

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
_messages = st.lists(st.dictionaries(st.text(max_size=8), _json, max_size=4), max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    messages=_messages, cuts=st.lists(st.integers(0, 10_000), max_size=12), compact=st.booleans()
)
def test_any_chunking_yields_the_same_messages(
    messages: list[dict[str, Any]], cuts: list[int], compact: bool
) -> None:
    seps = (",", ":") if compact else (", ", ": ")
    data = "".join(json.dumps(m, separators=seps) for m in messages).encode()
    points = sorted({c % (len(data) + 1) for c in cuts})
    stream = JSONStream()
    out: list[Any] = []
    start = 0
    for point in [*points, len(data)]:
        out += stream.feed(data[start:point])
        start = point
    assert out == messages


def test_strings_with_braces_and_escapes() -> None:
    msg = {"execute": "x", "arguments": {"s": 'a } { ] [ \\" "'}, "id": "é"}
    data = json.dumps(msg).encode()
    stream = JSONStream()
    out = [v for b in data for v in stream.feed(bytes([b]))]
    assert out == [msg]


def test_junk_between_messages_is_reported_and_skipped() -> None:
    out = JSONStream().feed(b'garbage {"a": 1} ] {"b": tru} {"c": 2}')
    assert isinstance(out[0], ParseError)
    assert out[1] == {"a": 1}
    assert isinstance(out[2], ParseError)
    assert isinstance(out[3], ParseError)
    assert out[4] == {"c": 2}


def test_0xff_resets_a_half_message() -> None:
    stream = JSONStream()
    assert stream.feed(b'{"a": 1}{"half": ') == [{"a": 1}]
    assert stream.feed(b'\xff{"b": 2}') == [{"b": 2}]


def test_encode_uses_qemu_separators_and_ends_lines() -> None:
    assert encode({"return": {"actual": 1}}) == b'{"return": {"actual": 1}}\r\n'
    assert encode({"return": {}}, crlf=False) == b'{"return": {}}\n'


def test_event_timestamp() -> None:
    assert timestamp(1700000000.25) == {"seconds": 1700000000, "microseconds": 250000}
    assert event("SHUTDOWN", {"guest": True}, wall=5.5) == {
        "event": "SHUTDOWN",
        "data": {"guest": True},
        "timestamp": {"seconds": 5, "microseconds": 500000},
    }


def test_top_level_scalars_are_values_and_tokens_may_be_split() -> None:
    stream = JSONStream()
    assert stream.feed(b"12") == []  # the number may go on
    assert stream.feed(b'3 "s" tr') == [123, "s"]
    assert stream.feed(b"ue ") == [True]
    out = stream.feed(b"garbage\n")
    assert len(out) == 1 and isinstance(out[0], ParseError)
    assert out[0].text == "invalid keyword 'garbage'"


async def test_bare_values_are_not_commands(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        qmp.send(b'5 "x" ')
        for _ in range(2):
            assert (await qmp.recv())["error"] == {
                "class": "GenericError",
                "desc": "QMP input must be a JSON object",
            }
        qmp.send(b"bogus ")
        assert (await qmp.recv())["error"]["desc"] == "JSON parse error, invalid keyword 'bogus'"
