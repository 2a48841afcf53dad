import dap
from dap import errors


def test_version_and_error_hierarchy():
    assert dap.__version__.count(".") == 2
    for cls in (errors.NotPanoramaError, errors.UnreadableFileError, errors.NoValidDepthError,
                errors.CheckpointError, errors.DatasetLayoutError):
        assert issubclass(cls, errors.DapError)


def test_the_lazy_api_is_listed_and_names_are_told_apart():
    """dir(dap) was empty of the API (tab completion found nothing); create_model given a name of weights said only
    "unknown model"."""
    import pytest

    assert {"predict", "load_model", "create_model", "__version__"} <= set(dir(dap))
    with pytest.raises(ValueError, match=r"unknown model 'dap-tiny-synth'; the architectures are dap_vitl, .*dap_tiny; "
                                         r"'dap-tiny-synth' names weights: dap.load_model\('dap-tiny-synth'\)"):
        dap.create_model("dap-tiny-synth")


def test_starting_a_command_does_not_import_trimesh():
    """trimesh (PLY/GLB writing only) cost a fifth of a second on every `dap` start, and a Ctrl-C during its import
    came out as a numpy traceback: its import catches BaseException around its optional modules."""
    import subprocess
    import sys

    code = ("import sys, dap, dap.io, dap.inference, dap.cli, dap.cli.predict, dap.cli.export\n"
            "print('trimesh' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_python_dash_m_dap_is_the_dap_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "dap", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: dap")
