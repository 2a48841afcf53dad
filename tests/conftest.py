import numpy as np
import pytest
import torch

from dap import geometry

torch.set_num_threads(2)


def box_room_depth(height: int, width: int, lo=(-2.0, -1.5, -2.5), hi=(3.0, 1.2, 4.0)) -> np.ndarray:
    """Analytic distance from the origin to the inside of the axis-aligned box [lo, hi] along every ERP ray."""
    rays = geometry.erp_rays(height, width, dtype=torch.float64).numpy()
    with np.errstate(divide="ignore"):
        t = np.where(rays > 0, np.array(hi) / rays, np.array(lo) / rays)
    t[~np.isfinite(t) | (t <= 0)] = np.inf
    return t.min(axis=-1).astype(np.float32)


@pytest.fixture(autouse=True)
def no_native_bf16(monkeypatch):
    """Tests run as on a CPU without native bf16, so precision="auto" means fp32 (exact) on every test machine;
    tests of the bf16 choice patch it back."""
    monkeypatch.setattr("dap.inference.cpu_has_native_bf16", lambda: False)


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU, threads wait for each other and tiny ops take
    milliseconds; one thread makes training-loop tests ~8x faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_model():
    from dap.models import create_model

    torch.manual_seed(0)
    return create_model("dap_tiny").eval()
