"""User errors: one hierarchy, re-exported where callers import it, caught by the CLI by type."""

import pytest

from fairhpc import errors


def test_one_class_per_kind_re_exported():
    from fairhpc.config import ConfigError
    from fairhpc.data import DataError
    from fairhpc.report import ReportError

    assert ConfigError is errors.ConfigError and DataError is errors.DataError
    assert ReportError is errors.ReportError
    for cls in (errors.ConfigError, errors.DataError, errors.ModelPathError, errors.ReportError):
        assert issubclass(cls, errors.FairhpcError) and issubclass(cls, ValueError)
    assert issubclass(errors.ModelPathError, errors.ConfigError)
    assert errors.DataError("x", "identical").reason == "identical"
    with pytest.raises(ValueError, match="unknown reason 'typo'"):
        errors.DataError("x", "typo")


def _main(argv, capsys):
    from fairhpc.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_prints_kind_and_exits_2(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q"}\n')
    out = tmp_path / "out"
    # a hub-style model name is not checked locally; the data error comes before any model is loaded
    code, err = _main(["eval-rm", "--model", "someone/rm", "--data", data, "--out", out], capsys)
    assert code == 2 and err.startswith(f"fairhpc: data error: {data}: line 2: field 'chosen': missing"), err
    code, err = _main(["eval-rm", "--model", "someone/rm", "--data", data, "--out", out, "--taus=1"], capsys)
    assert code == 2 and err.startswith("fairhpc: configuration error: --taus: tau = 1"), err
    code, err = _main(["eval-rm", "--model", tmp_path / "nope", "--data", data, "--out", out], capsys)
    assert code == 2 and err.startswith(f"fairhpc: model path error: --model {tmp_path / 'nope'}: no such"), err
    code, err = _main(["report", "--runs", tmp_path / "nope", "--out", out], capsys)
    assert code == 2 and err.startswith(f"fairhpc: report error: {tmp_path / 'nope'}: not a run directory"), err
    assert not out.exists()
