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


def test_every_output_flag_is_out_and_old_names_still_work(tmp_path):
    """One name for the output directory; the old ones are aliases to the same destination."""
    parser = cli.build_parser()
    for flag in ("--out", "--output", "-o"):
        args = parser.parse_args(["data", "commoncrawl", "--input", "x.warc", flag, "o"])
        assert args.output == "o", flag
    assert parser.parse_args(["data", "imagenet", "--input", "x", "--out", "o"]).out == "o"
    assert parser.parse_args(["export", "ckpt", "--out", "o"]).out == "o"
    assert parser.parse_args(["import-hf", "hf", "--out", "o"]).out == "o"
    # train: --out is train.run_dir, applied before the config is validated and ranks are spawned
    from launch import train_cli
    from pretrain.config import load_config

    args = parser.parse_args(["train", "default", "train.steps=0", "--out", str(tmp_path / "run")])
    assert train_cli.run(args) == 2  # refused (steps=0) before anything starts
    rest = [o for o in args.overrides if not o.startswith("train.steps")]
    assert load_config(None, rest).train.run_dir == str(tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("words", list(cli.EXAMPLES), ids=lambda w: " ".join(w))
def test_help_shows_examples_that_parse(words, capsys):
    """`pretrain train --help`, `pretrain data * --help`, `pretrain export --help` end with examples,
    and every example is a command line the parser accepts."""
    import shlex

    with pytest.raises(SystemExit):
        cli.main([*words, "--help"])
    out = capsys.readouterr().out
    assert "examples:\n  pretrain " + " ".join(words) in out
    parser = cli.build_parser()
    for line in cli.EXAMPLES[words].splitlines():
        argv = shlex.split(line.split("  #")[0])[1:]
        args, extra = parser.parse_known_args(argv)
        assert all("=" in x for x in extra), line
