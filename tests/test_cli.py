"""The CLI skeleton: every subcommand has --help; unbuilt ones say so and exit 2."""

from __future__ import annotations

import pytest

from launch import cli


@pytest.mark.parametrize("words", [w for w, _, _ in cli.COMMANDS], ids=lambda w: " ".join(w))
def test_every_subcommand_has_help(words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([*words, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pretrain " + " ".join(words))


def test_unbuilt_subcommand_says_so_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(cli, "COMMANDS", [(("frobnicate",), "launch.no_such_module", "not a thing")])
    assert cli.main(["frobnicate", "anything", "--flag"]) == 2
    assert "pretrain frobnicate: not built yet" in capsys.readouterr().err


def test_broken_command_module_is_not_hidden(monkeypatch):
    """A module that exists but fails to import must raise, not pose as 'not built yet'."""
    monkeypatch.setattr(cli, "COMMANDS", [(("x",), "launch.cli_broken_for_test", "x")])
    def finder(name, *a, **k):
        raise ModuleNotFoundError("No module named 'some_missing_dependency'", name="some_missing_dependency")

    monkeypatch.setattr(cli.importlib, "import_module", finder)
    with pytest.raises(ModuleNotFoundError):
        cli.main(["x"])
