"""Render the bundled sample panorama (src/dap/assets): a held-out photo-style indoor scene and its exact depth.

    python scripts/make_sample.py
"""

from pathlib import Path

from dap import io
from dap.data.synthetic import make_scene, render

SEED = 910003  # far from every training seed of the bundled model
ASSETS = Path(__file__).resolve().parents[1] / "src" / "dap" / "assets"

out = render(make_scene(SEED, "indoor"), 512, 1024, "photo", supersample=2)
io.write_rgb(ASSETS / "sample_indoor.jpg", out["rgb"])
io.write_depth(ASSETS / "sample_indoor_depth.png", out["depth"], scale=1 / 1000)
print(f"wrote {ASSETS}/sample_indoor.jpg and sample_indoor_depth.png (1 mm per unit)")
