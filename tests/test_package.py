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
