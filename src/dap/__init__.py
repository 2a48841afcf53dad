"""Depth Any Panoramas: metric depth for 360° equirectangular panoramas.

    import dap
    result = dap.predict("pano.jpg", "model.pth")   # result.depth in metres, result.range_mask, .points
"""

__version__ = "0.1.0"

__all__ = ["create_model", "load_model", "predict"]


def __getattr__(name: str):
    # Imported on first use so `import dap` (and `dap --help`) stays fast.
    if name == "predict":
        from dap.inference import predict

        return predict
    if name in ("load_model", "create_model"):
        import dap.models

        return getattr(dap.models, name)
    raise AttributeError(f"module 'dap' has no attribute {name!r}")


def __dir__() -> list[str]:  # the lazy names too, for tab completion
    return sorted({*globals(), *__all__})
