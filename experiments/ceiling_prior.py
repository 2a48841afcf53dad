"""Why the bundled model puts real ceilings too far: three measurements (docs/models.md, "Real ceilings").

    python experiments/ceiling_prior.py --heldout <dir with val_indoor and indoor> [--model dap-tiny-synth]

1. tracking: on held-out synthetic rooms, the ceiling's height above the camera over the camera's height, true
   against predicted (`dap.geometry.floor_and_ceiling` on both): correlation, log-log slope, and the predicted /
   true ratio by band of the true one (does the model read a room's height, or fall back on its prior?).
2. prior: the rooms the renderer makes (`dap.data.synthetic`, seeds of `--heldout`'s val_indoor) against the rooms
   of the real photographs as the doors and walls marked in experiments/bundled_model.py give them.
3. brightness: mean luminance 25-70 degrees above the horizon over that within 15 degrees of it, real indoor
   photographs against synthetic indoor sets (is a bright ceiling a "far" cue the renderer taught?).
4. flattening (a post-processing tried and not shipped): the model's ceiling is a dome, rising from the wall tops
   to the zenith; put every pixel above a column's wall top that is higher than the wall tops' median height onto
   that plane (`flatten_ceiling`). AbsRel on val_indoor before and after, and the rooms it makes of the real
   photographs and marked walls.
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


def flatten_ceiling(depth: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, float]:
    """(depth with the ceiling flattened, the plane's height above the camera). A column's wall top is where its
    horizontal distance peaks 8-70 degrees up (a wall keeps it, a ceiling brings it in); the plane is at the median
    of their heights over the columns; pixels above a column's wall top and higher than the plane are moved onto it
    along their rays. Unchanged (NaN height) where under half of the columns have that band mostly valid."""
    h, w = depth.shape
    lat = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    band = (lat > np.radians(8)) & (lat < np.radians(70))
    d = np.where(valid, depth, np.nan)[band]
    reach, rise = d * np.cos(lat[band])[:, None], d * np.sin(lat[band])[:, None]
    seen = np.isfinite(reach).sum(axis=0) > 0.8 * band.sum()
    if seen.mean() < 0.5:
        return depth, float("nan")
    top = np.nanargmax(np.where(np.isfinite(reach), reach, -1.0), axis=0)
    plane = float(np.median(rise[top, np.arange(w)][seen]))
    above = ((np.arange(h)[:, None] < np.flatnonzero(band)[top][None, :]) & (lat[:, None] > 0) & valid
             & (depth * np.sin(lat)[:, None] > plane))
    out = depth.copy()
    out[above] = np.broadcast_to((plane / np.sin(lat))[:, None], depth.shape)[above]
    return out, plane


def flattening(val: Path, model, limit: int) -> dict:
    """Mean AbsRel (pixels with ground truth under 100 m, not marked out of range) on held-out rooms before and after
    `flatten_ceiling`, over the whole panorama and over the part more than 20 degrees up; median ceiling heights."""
    import dap
    from dap.data.datasets import get_dataset
    from dap.geometry import floor_and_ceiling

    ds = get_dataset("synth", val)
    rows = []
    for i in range(min(limit, len(ds))):
        s = ds[i]
        gt = np.asarray(s["depth"])
        pred = dap.predict((np.clip(np.asarray(s["rgb"]), 0, 1) * 255).astype(np.uint8), model, precision="fp32")
        flat, plane = flatten_ceiling(pred.depth, ~pred.range_mask)
        ok = (gt > 0) & (gt < 100) & ~pred.range_mask
        up = ok & ((0.5 - (np.arange(gt.shape[0]) + 0.5) / gt.shape[0]) > 20 / 180)[:, None]
        rows.append([float(np.mean(np.abs(p[m] - gt[m]) / gt[m])) for m in (ok, up) for p in (pred.depth, flat)]
                    + [floor_and_ceiling(gt, (gt > 0) & (gt < 100))[1],
                       floor_and_ceiling(pred.depth, ~pred.range_mask)[1], plane])
    a = np.array(rows)
    return {"panoramas": len(a), "abs_rel": np.nanmean(a[:, :2], axis=0).tolist(),
            "abs_rel_up": np.nanmean(a[:, 2:4], axis=0).tolist(), "ceiling_true_model_plane": np.nanmedian(
                a[:, 4:], axis=0).tolist()}


def flattening_real(model) -> dict:
    """On the real indoor photographs: the median room height (floor + ceiling, `floor_and_ceiling`) as predicted and
    flattened, and at each marked wall's panorama the ceiling-over-camera ratio of the photo, the model and the
    flattened model."""
    import dap
    from dap.geometry import floor_and_ceiling
    from dap.io import read_rgb

    marked = {name: wall_ratio(ceiling, floor) for name, _, ceiling, floor in WALLS}
    rooms, walls = [], []
    for name in real_indoor_files():
        pred = dap.predict(read_rgb(REAL_POOL / name), model, precision="fp32")
        floor, ceiling = floor_and_ceiling(pred.depth, ~pred.range_mask)
        _, plane = flatten_ceiling(pred.depth, ~pred.range_mask)
        rooms.append((floor + ceiling, floor + plane))
        if (stem := Path(name).stem) in marked:
            walls.append({"panorama": stem, "photo": marked[stem], "model": ceiling / floor, "flat": plane / floor})
    return {"rooms": len(rooms), "room_height_model_flat": np.nanmedian(np.array(rooms), axis=0).tolist(),
            "walls": walls}


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
    parser.add_argument("--flatten", action="store_true", help="only measurement 4, the ceiling flattening")
    args = parser.parse_args()
    import dap

    model = dap.load_model(args.model)
    if args.flatten:
        f = flattening(args.heldout / "val_indoor", model, args.limit)
        (before, after), (up_before, up_after) = f["abs_rel"], f["abs_rel_up"]
        true, predicted, plane = f["ceiling_true_model_plane"]
        print(f"flattening (val_indoor, {f['panoramas']} rooms): AbsRel {before:.4f} -> {after:.4f}, more than 20 "
              f"degrees up {up_before:.4f} -> {up_after:.4f}; ceiling above the camera, medians: true {true:.2f} m, "
              f"model {predicted:.2f} m, plane {plane:.2f} m")
        r = flattening_real(model)
        room, flat = r["room_height_model_flat"]
        print(f"real rooms ({r['rooms']}): median floor to ceiling {room:.2f} m as predicted, {flat:.2f} m flattened")
        for w in r["walls"]:
            print(f"  wall in {w['panorama']}: ceiling over camera from its edges {w['photo']:.2f}, model "
                  f"{w['model']:.2f}, flattened {w['flat']:.2f}")
        return
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
    from script_errors import run

    run(main)
