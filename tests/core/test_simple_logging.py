"""collab_core.simple_logging: one-call logging set-up (NVFlare's collab.simple_logging)."""

from __future__ import annotations

import logging

import pytest

from collab_core import simple_logging


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def test_shows_records_at_the_level_with_site_and_logger(clean_root, capsys):
    handler = simple_logging()
    logging.getLogger("my.script").info("ready %d", 3)
    logging.getLogger("my.script").debug("hidden")
    err = capsys.readouterr().err
    assert "INFO [-] my.script: ready 3" in err and "hidden" not in err
    assert handler in clean_root.handlers and clean_root.level == logging.INFO


def test_calling_again_changes_the_level_without_a_second_handler(clean_root, capsys):
    first = simple_logging(logging.WARNING)
    logging.getLogger("x").info("quiet")
    second = simple_logging("debug")
    logging.getLogger("x").debug("loud")
    err = capsys.readouterr().err
    assert first is second
    assert sum(1 for h in clean_root.handlers if h is first) == 1
    assert "quiet" not in err and err.count("DEBUG [-] x: loud") == 1


def test_bad_levels_are_clear_errors(clean_root):
    with pytest.raises(ValueError, match="unknown level 'LOUD'"):
        simple_logging("LOUD")
    with pytest.raises(TypeError, match="level must be a logging level"):
        simple_logging(2.5)
