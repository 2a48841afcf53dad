import dap
from dap import errors


def test_version_and_error_hierarchy():
    assert dap.__version__.count(".") == 2
    for cls in (errors.NotPanoramaError, errors.UnreadableFileError, errors.NoValidDepthError,
                errors.CheckpointError, errors.DatasetLayoutError):
        assert issubclass(cls, errors.DapError)
