"""The output rule: lines reach the user through sftlab.console, from the main process only."""

import sys

import pytest
from rich.table import Table

from sftlab import console


@pytest.fixture
def rank(monkeypatch):
    """Set this process's rank by the launcher's variables (accelerate's state, if another test set it up, hidden)."""
    monkeypatch.delitem(sys.modules, "accelerate.state", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def set_rank(r: int | None, local: int | None = None):
        for name, value in (("RANK", r), ("LOCAL_RANK", local)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))

    return set_rank


def test_main_process_by_rank(rank):
    rank(None)
    assert console.is_main_process()
    rank(0)
    assert console.is_main_process()
    rank(1)
    assert not console.is_main_process()
    rank(None, local=2)  # a launcher that sets only LOCAL_RANK
    assert not console.is_main_process()
    rank(3, local=0)  # the first process of the second machine: RANK decides
    assert not console.is_main_process()


def test_lines_on_their_streams(rank, capsys):
    rank(0)
    console.say("plain")
    console.say("to err", stderr=True)
    console.warn("on stdout")
    console.warn("on stderr", stderr=True)
    console.error("error: failed")
    out, err = capsys.readouterr()
    assert out == "plain\nwarning: on stdout\n"
    assert err == "to err\nwarning: on stderr\nerror: failed\n"


def test_other_ranks_say_nothing_but_errors(rank, capsys):
    rank(1)
    console.say("plain")
    console.warn("careful", stderr=True)
    table = Table("a")
    table.add_row("1")
    console.show(table)
    console.show("line", stderr=True)
    console.error("error: on rank 1")
    assert capsys.readouterr() == ("", "error: on rank 1\n")


def test_show_follows_the_current_stream(rank, capsys):
    """The shared console writes to whatever sys.stdout is now (each test's capture), like a fresh Console."""
    rank(0)
    table = Table("metric", "value")
    table.add_row("accuracy", "0.9")
    console.show(table)
    first = capsys.readouterr().out
    assert "accuracy" in first and "0.9" in first
    console.show(table)
    assert capsys.readouterr().out == first
    console.show("[eval] x", stderr=True, markup=False, highlight=False)
    assert capsys.readouterr().err == "[eval] x\n"
