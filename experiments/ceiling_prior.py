"""Why the bundled model puts real ceilings too far: three measurements (docs/models.md, "Real ceilings").

    python experiments/ceiling_prior.py --heldout <dir with val_indoor and indoor> [--model dap-tiny-synth]

1. tracking: on held-out synthetic rooms, the ceiling's height above the camera over the camera's height, true
   against predicted (`dap.geometry.floor_and_ceiling` on both): correlation, log-log slope, and the predicted /
   true ratio by band of the true one (does the model read a room's height, or fall back on its prior?).
2. prior: the rooms the renderer makes (`dap.data.synthetic`, seeds of `--heldout`'s val_indoor) against the rooms
   of the real photographs as the doors and walls marked in experiments/bundled_model.py give them.
3. brightness: mean luminance 25-70 degrees above the horizon over that within 15 degrees of it, real indoor
   photographs against synthetic indoor sets (is a bright ceiling a "far" cue the renderer taught?).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

from bundled_model import DOORS, REAL_POOL, WALLS, door_geometry, real_indoor_files, wall_ratio  # noqa: E402


def tracking(val: Path, model, limit: int) -> dict:
    import dap
    from dap.data.datasets import get_dataset
    from dap.geometry import floor_and_ceiling

    ds = get_dataset("synth", val)
    rows = []
    for i in range(min(limit, len(ds))):
        s = ds[i]
        rgb = (np.clip(np.asarray(s["rgb"]), 0, 1) * 255).astype(np.uint8)
        gt = np.asarray(s["depth"])
        pred = dap.predict(rgb, model, precision="fp32")
        rows.append((*floor_and_ceiling(gt, (gt > 0) & (gt < 100)), *floor_and_ceiling(pred.depth, ~pred.range_mask)))
    a = np.array(rows)
    a = a[np.all(np.isfinite(a), axis=1)]
    true, pred = a[:, 1] / a[:, 0], a[:, 3] / a[:, 2]
    bands = {}
    for lo, hi in ((0, 0.8), (0.8, 1.1), (1.1, 1.5), (1.5, np.inf)):
        m = (true >= lo) & (true < hi)
        if m.any():
            bands[f"{lo}-{hi}"] = (int(m.sum()), float(np.median(pred[m] / true[m])))
    return {"panoramas": len(a), "correlation": float(np.corrcoef(np.log(true), np.log(pred))[0, 1]),
            "log_slope": float(np.polyfit(np.log(true), np.log(pred), 1)[0]),
            "camera_true_median": float(np.median(a[:, 0])), "camera_pred_median": float(np.median(a[:, 2])),
            "ratio_true_median": float(np.median(true)), "ratio_pred_median": float(np.median(pred)),
            "pred_over_true_by_true_ratio": bands}


def wall_columns(model) -> list[dict]:
    """At each marked wall (bundled_model.WALLS, panoramas resized to 1024x512): the ceiling-over-camera ratio the
    wall's top and bottom edges give, and the one the model's depth in that column gives (its height above the
    camera 45-80 degrees up over its depth below the camera 45-80 degrees down)."""
    from PIL import Image

    import dap

    out = []
    lat = (0.5 - (np.arange(512) + 0.5) / 512) * np.pi
    up, down = (lat > np.radians(45)) & (lat < np.radians(80)), (lat < -np.radians(45)) & (lat > -np.radians(80))
    for name, col, ceiling_row, floor_row in WALLS:
        image = Image.open(REAL_POOL / f"{name}.jpg").convert("RGB").resize((1024, 512), Image.LANCZOS)
        depth = np.median(dap.predict(np.asarray(image), model, precision="fp32").depth[:, col - 2:col + 3], axis=1)
        height = depth * np.sin(lat)
        ratio = float(np.median(height[up]) / -np.median(height[down]))
        out.append({"panorama": name, "photo": wall_ratio(ceiling_row, floor_row), "model": ratio})
    return out


def real_rooms() -> dict:
    cameras = [door_geometry(top, bottom, height)[1] for _, _, top, bottom, height in DOORS]
    ratios = [wall_ratio(ceiling, floor) for _, _, ceiling, floor in WALLS]
    return {"camera_heights_from_doors": [round(c, 2) for c in cameras],
            "ceiling_over_camera_from_walls": [round(r, 3) for r in ratios]}


def luminance_bands(rgb: np.ndarray) -> tuple[float, float]:
    """(upper band over horizon band, lower band over horizon band) of an (H, W, 3) float image in [0, 1]."""
    grey = rgb @ np.array([0.299, 0.587, 0.114])
    lat = 90 - (np.arange(grey.shape[0]) + 0.5) * 180 / grey.shape[0]
    mid = grey[np.abs(lat) < 15].mean()
    return grey[(lat > 25) & (lat < 70)].mean() / mid, grey[(lat < -25) & (lat > -70)].mean() / mid


def brightness(sets: dict[str, Path], limit: int) -> dict:
    from PIL import Image

    from dap.data.datasets import get_dataset

    files = real_indoor_files()
    out = {}
    real = [luminance_bands(np.asarray(Image.open(REAL_POOL / name).convert("RGB").resize((512, 256)), np.float64)
                            / 255) for name in files]
    out["real indoor"] = real
    for name, path in sets.items():
        ds = get_dataset("synth", path)
        out[name] = [luminance_bands(np.clip(np.asarray(ds[i]["rgb"], np.float64), 0, 1))
                     for i in range(min(limit, len(ds)))]
    return {k: {"panoramas": len(v), "upper_over_horizon_median": float(np.median([u for u, _ in v])),
                "lower_over_horizon_median": float(np.median([lo for _, lo in v]))} for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heldout", type=Path, required=True,
                        help="folder with bundled_model.py's sets (val_indoor, indoor, ...)")
    parser.add_argument("--model", default="dap-tiny-synth")
    parser.add_argument("--limit", type=int, default=96, help="panoramas per synthetic set")
    args = parser.parse_args()
    import dap

    model = dap.load_model(args.model)
    t = tracking(args.heldout / "val_indoor", model, args.limit)
    print(f"tracking (val_indoor, {t['panoramas']} rooms): ceiling-over-camera true median "
          f"{t['ratio_true_median']:.2f}, predicted {t['ratio_pred_median']:.2f}; log-log correlation "
          f"{t['correlation']:.2f}, slope {t['log_slope']:.2f}; camera height true {t['camera_true_median']:.2f} m, "
          f"predicted {t['camera_pred_median']:.2f} m")
    for band, (n, r) in t["pred_over_true_by_true_ratio"].items():
        print(f"  true ratio {band}: {n} rooms, predicted / true {r:.2f}")
    r = real_rooms()
    print(f"real rooms: camera heights from doors {r['camera_heights_from_doors']}, ceiling over camera from walls "
          f"{r['ceiling_over_camera_from_walls']}")
    for w in wall_columns(model):
        print(f"  wall in {w['panorama']}: ceiling over camera from its edges {w['photo']:.2f}, from the model's depth "
              f"{w['model']:.2f} ({w['model'] / w['photo']:.2f}x)")
    sets = {name: args.heldout / name for name in ("val_indoor", "val_indoor_clean", "indoor")
            if (args.heldout / name).is_dir()}
    for name, b in brightness(sets, args.limit).items():
        print(f"brightness {name} ({b['panoramas']}): upper / horizon {b['upper_over_horizon_median']:.2f}, lower / "
              f"horizon {b['lower_over_horizon_median']:.2f}")


if __name__ == "__main__":
    main()
