"""Bad input that ``decoding-bench`` and ``decoding-eval`` handle alike (one shared implementation each): output
paths whose folder is missing or is a file, and Ctrl-C. Each gives one line on stderr and a nonzero exit status,
never a traceback, before any model is built."""

from __future__ import annotations

import pytest

from decoding.evals.bench import cli as bench
from decoding.evals.quality import cli as quality

# Each command's entry point as an exit status (decoding-eval's main exits on failure, decoding-bench's returns),
# a fast command line, and a function it calls once the command line is checked, before any model is built.
COMMANDS = {
    "decoding-bench": (bench.main, ["--synthetic", "layers=2,hidden=32,vocab=96", "--device", "cpu", "--quiet"],
                       "_load"),
    "decoding-eval": (quality.main, ["--synthetic", "--encoder", "none", "--quiet"], "load_models"),
}
MODULES = {"decoding-bench": bench, "decoding-eval": quality}
OUTPUTS = [("decoding-bench", "--json"), ("decoding-bench", "--plot"), ("decoding-eval", "--json"),
           ("decoding-eval", "--save-generations")]


def status_and_line(prog: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run ``prog``'s entry point; its exit status and the one line it printed on stderr."""
    main, base, _ = COMMANDS[prog]
    try:
        status = main([*base, *argv])
    except SystemExit as exit_info:
        status = exit_info.code
    except KeyboardInterrupt:  # caught here, or it would stop the test session
        pytest.fail(f"{prog} let Ctrl-C through: a traceback")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return status, lines[0]


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if a command gets as far as loading models."""
    for prog, (_, _, loader) in COMMANDS.items():
        monkeypatch.setattr(MODULES[prog], loader, lambda *a, prog=prog, **k: pytest.fail(f"{prog} loaded models"))


@pytest.mark.parametrize("prog, option", OUTPUTS)
def test_an_output_folder_must_exist_and_is_never_created(prog, option, tmp_path, capsys, no_models):
    missing = tmp_path / "no-such-folder"
    path = missing / "out.png"
    status, line = status_and_line(prog, [option, str(path)], capsys)
    assert status == 2
    assert line.startswith(f"{prog}: error: {option} {path} cannot be written: folder {missing} does not exist: "
                           "create it first, or choose another path")
    assert not missing.exists()


@pytest.mark.parametrize("prog, option", OUTPUTS)
def test_an_output_folder_that_is_a_file_is_named(prog, option, tmp_path, capsys, no_models):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for path in (afile / "out.png", afile / "below" / "out.png"):
        status, line = status_and_line(prog, [option, str(path)], capsys)
        assert status == 2
        assert f"{option} {path} cannot be written: {afile} is a file, not a folder: choose another path" in line
        assert "File exists" not in line
    assert afile.read_text() == "keep"


@pytest.mark.parametrize("prog", COMMANDS)
def test_ctrl_c_prints_interrupted_and_exits_130(prog, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    _, _, loader = COMMANDS[prog]
    monkeypatch.setattr(MODULES[prog], loader, interrupted)
    assert status_and_line(prog, [], capsys) == (130, f"{prog}: interrupted")
