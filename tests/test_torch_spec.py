"""tools/torch_spec.py, which `make` runs first: the venv's torch must satisfy TORCH_SPEC."""

import os

import pytest
import torch
from helpers import load_script


@pytest.fixture(scope="module")
def torch_spec():
    return load_script("tools/torch_spec.py")


def _never_install(spec):
    raise AssertionError(f"tried to install {spec}")


def test_satisfied_spec_records_it_dated_at_torch_install(torch_spec, tmp_path):
    stamp = tmp_path / "stamp"
    version = torch.__version__.split("+")[0]
    assert torch_spec.main([f"torch=={version}", str(stamp)], install=_never_install) == 0
    assert stamp.read_text() == f"torch=={version}\n"
    record = torch_spec.install_time(torch_spec.installed_torch())
    assert os.stat(stamp).st_mtime == record  # the extension is rebuilt only when torch changes


def test_unsatisfied_spec_installs_it(torch_spec, tmp_path, capsys):
    asked = []

    def fake_install(spec):
        asked.append(spec)
        return 0  # "installed", yet the venv still has the old torch

    stamp = tmp_path / "stamp"
    assert torch_spec.main(["torch==0.0.1", str(stamp)], install=fake_install) == 1
    assert asked == ["torch==0.0.1"]
    err = capsys.readouterr().err
    assert f"the venv has torch {torch_spec.installed_torch().version}, which does not satisfy" in err
    assert "it does not satisfy the spec" in err
    assert not stamp.exists()


def test_failed_install_fails_clearly(torch_spec, tmp_path, capsys):
    assert torch_spec.main(["torch==0.0.1", str(tmp_path / "stamp")], install=lambda spec: 1) == 1
    assert "installing 'torch==0.0.1' failed; the venv still has torch" in capsys.readouterr().err


@pytest.mark.parametrize("spec,message", [("numpy==1.0", "must name torch"), ("torch===", "is not a pip requirement")])
def test_bad_spec(torch_spec, tmp_path, capsys, spec, message):
    assert torch_spec.main([spec, str(tmp_path / "stamp")], install=_never_install) == 2
    assert message in capsys.readouterr().err
