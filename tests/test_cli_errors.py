"""Bad command lines get one line on stderr and the README's exit code, never a traceback."""

import pytest

from pipeline.orchestrate.cli import main

from conftest import free_ports


def _one_line_error(capsys, argv, code):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmpipe: "), err
    return err[0]


@pytest.mark.parametrize("flags, message", [
    (["--method", "top_k", "--k", "0"], "--k: k must be in [1, 2147483647], got 0"),
    (["--method", "sample", "--temperature", "nan"], "--temperature: temperature must be in [1e-06, 1000000.0], got nan"),
    (["--method", "beam_search", "--beam-width", "65"], "--beam-width: beam_width must be in [1, 64], got 65"),
])
def test_generate_refuses_knobs_out_of_range(capsys, tmp_path, flags, message):
    line = _one_line_error(capsys, ["generate", "--export-dir", str(tmp_path), *flags, "the"], 2)
    assert message.split(": ", 1)[1] in line


def test_generate_without_a_saved_model_is_missing_input(capsys, tmp_path):
    line = _one_line_error(capsys, ["generate", "--export-dir", str(tmp_path / "nope"), "the"], 3)
    assert "no SavedModel in" in line and "saved_model.pb missing" in line


def test_generate_with_a_url_without_scheme_is_a_usage_error(capsys):
    line = _one_line_error(capsys, ["generate", "--url", "localhost:8501", "the"], 2)
    assert "must start with http://, https:// or grpc://" in line


def test_generate_against_an_unreachable_server(capsys):
    (port,) = free_ports()
    line = _one_line_error(capsys, ["generate", "--url", f"http://127.0.0.1:{port}", "the"], 4)
    assert f"cannot reach the model server at http://127.0.0.1:{port}" in line


def test_check_export_of_a_missing_folder(capsys, tmp_path):
    line = _one_line_error(capsys, ["check-export", str(tmp_path / "lm" / "7")], 3)
    assert "no export version folder" in line
