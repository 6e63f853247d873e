"""The config's ``[journal]`` table: where the journal goes, every wrong shape named."""

from __future__ import annotations

from pathlib import Path

import pytest

from balloonctl.config import load_config
from balloonctl.errors import UsageError
from balloonctl.journal import journal_path


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_journal_path_comes_from_the_config_after_the_option_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = load_config(config(tmp_path, '[journal]\npath = "/var/log/bc.jsonl"\n'))
    assert cfg.journal == "/var/log/bc.jsonl"
    monkeypatch.delenv("BALLOONCTL_JOURNAL", raising=False)
    assert journal_path(None, configured=cfg.journal) == Path("/var/log/bc.jsonl")
    monkeypatch.setenv("BALLOONCTL_JOURNAL", "/tmp/env.jsonl")
    assert journal_path(None, configured=cfg.journal) == Path("/tmp/env.jsonl")
    assert journal_path("/tmp/arg.jsonl", configured=cfg.journal) == Path("/tmp/arg.jsonl")
    assert load_config(config(tmp_path, "")).journal is None


@pytest.mark.parametrize(("text", "message"), [
    ("[journal]\npath = 3\n", "journal.path: expected a file path, got 3"),
    ('[journal]\npath = "  "\n', "journal.path: expected a file path, got '  '"),
    ('[journal]\nfile = "x"\n', "journal.file: unknown setting 'file'"),
    ('journal = "x"\n', "[journal] must be a table"),
])
def test_a_wrong_journal_setting_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = config(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_config(path)
    assert str(caught.value) == f"config {path}: {message}"
