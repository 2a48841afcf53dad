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


def dual_fisheye(erp: np.ndarray) -> np.ndarray:
    """What a two-lens 360 camera writes before stitching: the front and back hemispheres of an ERP image (float
    (H, W, 3)) as equidistant fisheye discs side by side on black, (S, 2S, 3) with S = H."""
    from dap import geometry

    s = erp.shape[0]
    yy, xx = np.mgrid[:s, :s]
    dx, dy = (xx + 0.5 - s / 2) / (s / 2), (yy + 0.5 - s / 2) / (s / 2)
    r = np.hypot(dx, dy)
    theta, phi = r * np.pi / 2, np.arctan2(dy, dx)  # 90 degrees off the lens axis at the disc's rim
    out = np.zeros((s, 2 * s, 3), np.float32)
    for i, forward in enumerate((1.0, -1.0)):  # front lens looks along +z, back lens along -z (mirrored in x)
        rays = np.stack([forward * np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi),
                         forward * np.cos(theta)], -1)
        disc = geometry.sample_erp(erp, rays)
        out[:, i * s:(i + 1) * s][r <= 1] = disc[r <= 1]
    return out


def photo_sphere_xmp(full_w: int, full_h: int, left: int, top: int, w: int, h: int, elements: bool = False) -> bytes:
    """Google Photo Sphere XMP (GPano) for an image that is the (left, top, w, h) crop of a full_w x full_h panorama,
    its fields as attributes or as elements."""
    fields = {"FullPanoWidthPixels": full_w, "FullPanoHeightPixels": full_h, "CroppedAreaLeftPixels": left,
              "CroppedAreaTopPixels": top, "CroppedAreaImageWidthPixels": w, "CroppedAreaImageHeightPixels": h}
    if elements:
        body = "".join(f"<GPano:{k}>{v}</GPano:{k}>" for k, v in fields.items())
        description = f'<rdf:Description xmlns:GPano="http://ns.google.com/photos/1.0/panorama/">{body}</rdf:Description>'
    else:
        attributes = " ".join(f'GPano:{k}="{v}"' for k, v in fields.items())
        description = f'<rdf:Description xmlns:GPano="http://ns.google.com/photos/1.0/panorama/" {attributes}/>'
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f"{description}</rdf:RDF></x:xmpmeta>").encode()
