"""Metrics against hand-computed values, protocols, aggregation, and `dap eval` end to end."""

import json
import math
import os
import shutil
from urllib.parse import quote

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dap import evaluation as ev
from dap.cli import main
from dap.errors import DapError, NoValidDepthError
from dap.evaluation import (
    EvalConfig,
    MetricAccumulator,
    aggregate,
    align,
    apply_range_mask,
    compute_metrics,
    evaluate,
    pole_error,
    seam_error,
)
from dap.inference import model_fingerprint
from dap.io import read_depth, read_rgb, write_depth, write_rgb
from dap.models import create_model, save_model

# 2x4 example: gt 0 (invalid) and 20 (> max_depth 10) drop out, leaving 6 (pred, gt) pairs.
GT = np.array([[1.0, 2.0, 4.0, 5.0], [2.0, 0.0, 3.0, 20.0]])
PRED = np.array([[2.0, 2.0, 6.0, 5.0], [1.0, 7.0, 3.0, 6.0]])
PAIRS = [(2, 1), (2, 2), (6, 4), (5, 5), (1, 2), (3, 3)]


def by_hand(pairs, weights=None):
    w = weights or [1.0] * len(pairs)
    n = sum(w)

    def mean(f):
        return sum(wi * f(p, g) for wi, (p, g) in zip(w, pairs, strict=True)) / n

    return {
        "abs_rel": mean(lambda p, g: abs(p - g) / g),
        "sq_rel": mean(lambda p, g: (p - g) ** 2 / g),
        "mae": mean(lambda p, g: abs(p - g)),
        "rmse": math.sqrt(mean(lambda p, g: (p - g) ** 2)),
        "rmse_log": math.sqrt(mean(lambda p, g: (math.log(p) - math.log(g)) ** 2)),
        "log10": mean(lambda p, g: abs(math.log10(p) - math.log10(g))),
        "delta1": mean(lambda p, g: max(p / g, g / p) < 1.25),
        "delta2": mean(lambda p, g: max(p / g, g / p) < 1.25**2),
        "delta3": mean(lambda p, g: max(p / g, g / p) < 1.25**3),
        "delta_105": mean(lambda p, g: max(p / g, g / p) < 1.05),
        "delta_110": mean(lambda p, g: max(p / g, g / p) < 1.10),
    }


def assert_close(got, want, tol=1e-12):
    assert set(want) <= set(got)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=tol), k


def test_metric_protocol_matches_hand_computation():
    m = compute_metrics(PRED, GT, max_depth=10.0)
    assert set(m) == set(ev.METRIC_KEYS)
    assert_close(m, by_hand(PAIRS))
    # a few literal values: |err|/g = 1, 0, .5, 0, .5, 0; squared errors 1, 0, 4, 0, 1, 0
    assert m["abs_rel"] == pytest.approx(2 / 6)
    assert m["rmse"] == pytest.approx(1.0)  # true root-mean-square: sqrt(6 / 6)
    assert m["mae"] == pytest.approx(4 / 6)
    assert m["delta1"] == pytest.approx(3 / 6) and m["delta2"] == pytest.approx(4 / 6)


def test_no_max_depth_keeps_far_pixels_and_torch_input_is_accepted():
    m = compute_metrics(torch.tensor(PRED)[None, None], torch.tensor(GT)[None])
    assert_close(m, by_hand(PAIRS + [(6, 20)]))


def test_mask_and_min_depth_exclude_pixels():
    valid = np.ones_like(GT, bool)
    valid[0, 0] = False
    assert_close(compute_metrics(PRED, GT, valid, max_depth=10.0), by_hand(PAIRS[1:]))
    # min_depth 1.5 drops gt = 1 (strictly greater is required) and lifts pred 1 to 1.5
    assert_close(
        compute_metrics(PRED, GT, min_depth=1.5, max_depth=10.0),
        by_hand([(max(p, 1.5), g) for p, g in PAIRS if g > 1.5]),
    )


def test_predictions_are_clipped_to_the_caps():
    gt = np.array([[2.0, 4.0], [8.0, 9.0]])
    pred = np.array([[0.0, 50.0], [np.nan, 9.0]])  # 0 and NaN -> min_depth, 50 -> max_depth
    m = compute_metrics(pred, gt, min_depth=0.5, max_depth=10.0)
    assert_close(m, by_hand([(0.5, 2), (10, 4), (0.5, 8), (9, 9)]))
    # under median scaling a NaN pixel stays a failure: the scale is fitted on the finite pixels (9 vs 9: 1)
    m = compute_metrics(np.array([[np.nan, 4.0], [8.0, 9.0]]), gt, protocol="median", min_depth=0.5)
    assert_close(m, by_hand([(0.5, 2), (4, 4), (8, 8), (9, 9)]))
    # a prediction that is NaN everywhere is not scaled into a constant map with plausible metrics
    with pytest.raises(NoValidDepthError, match="NaN or infinite at every valid pixel; median alignment"):
        compute_metrics(np.full_like(gt, np.nan), gt, protocol="median")
    with pytest.raises(ValueError, match=r"weights of shape \(3, 3\) do not fit depth maps of shape \(2, 2\)"):
        compute_metrics(pred, gt, weights=np.ones((3, 3)))


def test_median_alignment():
    # pred = gt / 2 exactly: median scaling (x2) recovers gt
    m = compute_metrics(GT / 2, GT, protocol="median", max_depth=10.0)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12) and m["delta1"] == 1.0
    # non-trivial: valid gt [1,2,4,5,2,3] median 2.5; pred [2,2,6,5,1,3] has median 2.5 too -> scale 1;
    # with pred*4 the scale must be 1/4 and the metrics equal the metric protocol on PRED
    aligned, scale, shift = align(PRED * 4, GT, protocol="median", max_depth=10.0)
    assert scale == pytest.approx(0.25) and shift == 0.0
    assert_close(compute_metrics(PRED * 4, GT, protocol="median", max_depth=10.0), by_hand(PAIRS))


def test_affine_alignment_recovers_exact_scale_and_shift():
    pred = (GT - 1.0) / 3.0  # gt = 3 * pred + 1
    _, scale, shift = align(pred, GT, protocol="affine", max_depth=10.0)
    assert scale == pytest.approx(3.0) and shift == pytest.approx(1.0)
    m = compute_metrics(pred, GT, protocol="affine", max_depth=10.0)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12) and m["rmse"] == pytest.approx(0.0, abs=1e-12)


def test_weighted_affine_matches_normal_equations():
    # three pixels (p, g) = (1,1), (2,3), (3,3) with weights 1, 1, 2; the rest masked out.
    gt = np.array([[1.0, 3.0, 3.0, 7.0], [7.0, 7.0, 7.0, 7.0]])
    pred = np.array([[1.0, 2.0, 3.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    w = np.array([[1.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # sum w = 4, sum wp = 9, sum wp^2 = 23, sum wg = 10, sum wpg = 25
    s_hand = (4 * 25 - 9 * 10) / (4 * 23 - 9**2)  # 10/11
    t_hand = (10 - s_hand * 9) / 4  # 5/11
    _, s, t = align(pred, gt, protocol="affine", weights=w)
    assert s == pytest.approx(10 / 11) and s == pytest.approx(s_hand)
    assert t == pytest.approx(5 / 11) and t == pytest.approx(t_hand)
    pairs = [(s * p + t, g) for p, g in [(1, 1), (2, 3), (3, 3)]]
    assert_close(compute_metrics(pred, gt, protocol="affine", weights=w), by_hand(pairs, [1, 1, 2]), 1e-9)


def test_row_weights_and_solid_angle():
    gt = np.array([[1.0, 2.0], [4.0, 4.0]])
    pred = np.array([[2.0, 2.0], [4.0, 5.0]])
    # weights (H, 1): row 0 weight 3, row 1 weight 1
    m = compute_metrics(pred, gt, weights=np.array([[3.0], [1.0]]))
    assert m["abs_rel"] == pytest.approx((3 * 1 + 3 * 0 + 1 * 0 + 1 * 0.25) / 8)
    # 'solid_angle' = per-row pixel area; on a 2-row ERP both rows cover the same area -> unweighted
    assert_close(compute_metrics(pred, gt, weights="solid_angle"), compute_metrics(pred, gt))
    gt4 = np.full((4, 8), 2.0)
    pred4 = gt4.copy()
    pred4[0] = 3.0  # only the polar row is wrong
    # rows span latitudes [90,45], [45,0], ...: areas ∝ 1 - sin45, sin45 - 0
    a_pole, a_mid = 1 - math.sqrt(0.5), math.sqrt(0.5)
    want = a_pole * 0.5 / (2 * a_pole + 2 * a_mid)
    assert compute_metrics(pred4, gt4, weights="solid_angle")["abs_rel"] == pytest.approx(want)


def test_no_valid_pixel_raises():
    with pytest.raises(NoValidDepthError, match="no valid ground-truth pixel"):
        compute_metrics(np.ones((2, 4)), np.zeros((2, 4)))
    with pytest.raises(NoValidDepthError):
        compute_metrics(np.ones((2, 4)), np.full((2, 4), 50.0), max_depth=10.0)


def test_seam_error_on_constructed_case():
    d = np.array(
        [
            [1.0, 5.0, 5.0, 3.0],  # |1-3| / 2 = 1
            [2.0, 0.0, 0.0, 2.0],  # 0
            [4.0, 1.0, 1.0, 0.0],  # right edge invalid: skipped
            [6.0, 1.0, 1.0, 2.0],
        ]
    )  # |6-2| / 4 = 1
    assert seam_error(d) == pytest.approx(2 / 3)
    assert math.isnan(seam_error(np.zeros((2, 4))))


def test_pole_error_uses_top_and_bottom_sixth():
    gt = np.full((12, 24), 2.0)
    pred = gt.copy()
    pred[2:10] = 3.0  # errors only in the middle rows: the 2+2 polar rows are exact
    assert pole_error(pred, gt) == 0.0
    pred = gt.copy()
    pred[0] = 2.5  # top row +25 %, rows 1, 10, 11 exact -> mean over the 4 polar rows
    assert pole_error(pred, gt) == pytest.approx(0.25 / 4)
    gt_no_poles = gt.copy()
    gt_no_poles[:2] = 0
    gt_no_poles[-2:] = 0
    assert math.isnan(pole_error(pred, gt_no_poles))


def test_apply_range_mask_sets_cap():
    d = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    mask = np.array([[False, True], [True, False]])
    out = apply_range_mask(d, mask, 100.0)
    assert out.tolist() == [[1.0, 100.0], [100.0, 4.0]] and d[0, 1] == 2.0  # input untouched
    t = apply_range_mask(torch.tensor(d), torch.tensor(mask), 10.0)
    assert isinstance(t, torch.Tensor) and t.tolist() == [[1.0, 10.0], [10.0, 4.0]]


def test_per_image_mean_differs_from_pixel_pooled():
    acc = MetricAccumulator(protocol="metric")
    # image A: one valid pixel, error 2 (rmse 2); image B: three valid pixels, error 1 (rmse 1)
    acc.add(np.array([[6.0, 1.0]]), np.array([[4.0, 0.0]]), name="a")
    acc.add(np.array([[3.0, 3.0, 3.0]]), np.array([[2.0, 2.0, 2.0]]), name="b")
    assert acc.per_image_mean()["rmse"] == pytest.approx(1.5)
    assert acc.pixel_pooled()["rmse"] == pytest.approx(math.sqrt((4 + 3) / 4))
    assert acc.per_image_mean()["abs_rel"] == pytest.approx((0.5 + 0.5) / 2)
    assert acc.pixel_pooled()["abs_rel"] == pytest.approx((0.5 + 3 * 0.5) / 4)
    assert [r["n_valid"] for r in acc.rows] == [1, 3]
    agg = aggregate([{"name": "x", "v": 1.0}, {"name": "y", "v": float("nan")}, {"name": "z", "v": 3.0}])
    assert agg == {"v": 2.0, "n_images": 3}
    # numpy scalars (a timing as np.float32, a count as np.int64) are columns too; flags are not
    rows = [{"s": np.float32(1.5), "n": np.int64(2), "ok": np.bool_(True)}, {"s": 2.5, "n": 4, "ok": False}]
    assert aggregate(rows) == {"s": 2.0, "n": 3.0, "n_images": 2}


# ----------------------------------------------------------------------------------------- end to end
H, W = 8, 16


def make_folder(root, n=3):
    rng = np.random.default_rng(0)
    gts = {}
    for i in range(n):
        gt = rng.uniform(1.0, 5.0, (H, W)).astype(np.float32)
        gt[0, :3] = 0  # some invalid pixels
        write_rgb(root / "rgb" / f"s{i}.png", rng.uniform(0, 1, (H, W, 3)))
        write_depth(root / "depth" / f"s{i}.npy", gt)
        gts[f"s{i}"] = gt
    return gts


def test_eval_says_what_predict_says_of_a_panorama_file(tmp_path, capsys):
    """A benchmark panorama saved with transparency (scored on the colour stored under it) gave dap predict a note
    and dap eval nothing: the loaders read the file without its notes."""
    from PIL import Image

    gts = make_folder(tmp_path / "data", n=2)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = 128  # alpha 0 everywhere
    Image.fromarray(rgba).save(tmp_path / "data" / "rgb" / "s1.png")
    for name, gt in gts.items():
        write_depth(tmp_path / "preds" / f"{name}.npy", gt)
    assert main(["eval", "--dataset", "folder", "--root", str(tmp_path / "data"), "--predictions",
                 str(tmp_path / "preds"), "--out", str(tmp_path / "out")]) == 0
    assert "sample s1: 100% of it is transparent" in capsys.readouterr().err


def test_cli_predictions_end_to_end(tmp_path, capsys):
    gts = make_folder(tmp_path / "data")
    preds = {}
    for i, (name, gt) in enumerate(gts.items()):
        preds[name] = np.where(gt > 0, gt * (1.1 + 0.1 * i), 2.0).astype(np.float32)
        write_depth(tmp_path / "preds" / f"{name}.npy", preds[name])
    out = tmp_path / "out"
    code = main(
        [
            "eval",
            "--dataset",
            "folder",
            "--root",
            str(tmp_path / "data"),
            "--predictions",
            str(tmp_path / "preds"),
            "--out",
            str(out),
            "--protocol",
            "metric",
            "median",
            "--panels",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "metrics.json").read_text())
    rows = {n: compute_metrics(preds[n], gts[n], max_depth=100.0) for n in gts}
    for key in ("abs_rel", "rmse", "delta1"):
        want = np.mean([r[key] for r in rows.values()])
        assert summary["protocols"]["metric"]["per_image_mean"][key] == pytest.approx(want, rel=1e-6)
    # median scaling removes the per-image scale factor entirely
    assert summary["protocols"]["median"]["per_image_mean"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    # pooled metric RMSE = sqrt of the pooled mean square over all valid pixels
    sq = np.concatenate([((preds[n] - gts[n]) ** 2)[gts[n] > 0] for n in gts])
    assert summary["protocols"]["metric"]["pixel_pooled"]["rmse"] == pytest.approx(np.sqrt(sq.mean()), rel=1e-6)
    table = pq.read_table(out / "per_image.parquet").to_pylist()
    assert len(table) == 6 and {r["protocol"] for r in table} == {"metric", "median"}
    assert (out / "per_image.csv").read_text().count("\n") == 7
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["s0.png", "s1.png"]
    printed = capsys.readouterr().out
    assert "per_image_mean" in printed and "pixel_pooled" in printed and "rmse" in printed
    # a rerun into the same --out replaces the reports whole: one panel now, none of the earlier run's left
    again = ["eval", "--dataset", "folder", "--root", str(tmp_path / "data"), "--predictions", str(tmp_path / "preds"),
             "--out", str(out), "--panels", "1"]
    assert main([*again, "--resolution", "64x128"]) == 0
    assert "note: --resolution set how a model runs; saved --predictions are scored as they are" in \
        capsys.readouterr().err
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["s0.png"]
    assert json.loads((out / "metrics.json").read_text())["protocols"].keys() == {"metric"}  # the default
    # --protocol given twice: both (the last one alone replaced the first, its results dropped without a word)
    assert main([*again, "--protocol", "metric", "--protocol", "median", "metric"]) == 0
    assert list(json.loads((out / "metrics.json").read_text())["protocols"]) == ["metric", "median"]
    # the ground truth's own folder as --predictions would score perfectly: refused
    capsys.readouterr()
    assert main(["eval", "--dataset", "folder", "--root", str(tmp_path / "data"), "--predictions",
                 str(tmp_path / "data" / "depth"), "--out", str(tmp_path / "self")]) == 2
    assert "is where the ground truth is: " in capsys.readouterr().err


class StubPredictor:
    """rgb -> (depth = 2 m everywhere, top row out of range)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, rgb):
        self.calls += 1
        h, w = rgb.shape[:2]
        depth = np.full((h // 2, w // 2), 2.0, np.float32)  # half resolution: evaluate() resizes
        mask = np.zeros_like(depth, bool)
        mask[0] = True
        return depth, mask


def test_evaluate_with_stub_predictor_caches_and_resumes(tmp_path):
    from dap.data.datasets import FolderDataset

    make_folder(tmp_path / "data", n=2)
    ds = FolderDataset(tmp_path / "data")
    stub = StubPredictor()
    cfg = EvalConfig(protocols=("metric",), max_depth=10.0, range_cap=100.0, panels=0)
    first = evaluate(ds, stub, config=cfg, out_dir=tmp_path / "out", cache_key={"model": "stub"})
    assert stub.calls == 2
    (cached_path,) = (tmp_path / "out" / "predictions").glob("s0.*.npy")  # <sample>.<input digest>.npy
    cached = read_depth(cached_path)
    assert cached.shape == (H // 2, W // 2) and cached[0].tolist() == [100.0] * (W // 2)  # range cap applied
    assert np.all(cached[1:] == 2.0)
    second = evaluate(ds, stub, config=cfg, out_dir=tmp_path / "out", cache_key={"model": "stub"})
    assert stub.calls == 2 and second["n_cached_predictions"] == 2
    assert second["protocols"] == first["protocols"]
    with pytest.raises(DapError, match=r"holds predictions made with other settings \(model: stub -> other\)"):
        evaluate(ds, stub, config=cfg, out_dir=tmp_path / "out", cache_key={"model": "other"})
    # Without a key nothing is cached: stale predictions could not be told apart.
    evaluate(ds, stub, config=cfg, out_dir=tmp_path / "nokey")
    assert stub.calls == 4 and not (tmp_path / "nokey" / "predictions").exists()
    # a cached file damaged since (a disk, a copy cut short) is predicted again, not a stop with "download it again"
    cached_path.write_bytes(cached_path.read_bytes()[:100])
    third = evaluate(ds, stub, config=cfg, out_dir=tmp_path / "out", cache_key={"model": "stub"})
    assert stub.calls == 5 and third["n_cached_predictions"] == 1 and third["protocols"] == first["protocols"]
    assert np.array_equal(read_depth(cached_path), cached)


def test_a_rerun_that_stops_keeps_the_earlier_run_whole(tmp_path):
    from dap.data.datasets import FolderDataset

    make_folder(tmp_path / "data", n=3)
    ds, out = FolderDataset(tmp_path / "data"), tmp_path / "out"
    cfg = EvalConfig(protocols=("metric",), max_depth=10.0, panels=3)
    evaluate(ds, StubPredictor(), config=cfg, out_dir=out)
    assert {p.name for p in out.iterdir()} == {"metrics.json", "per_image.csv", "per_image.parquet", "panels",
                                               ".dap-eval"}
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fails_on_the_second(rgb, calls=[]):  # noqa: B006 - counts the calls
        calls.append(1)
        if len(calls) == 2:
            raise DapError("broken sample")
        return np.full(rgb.shape[:2], 3.0, np.float32), None

    with pytest.raises(DapError, match="broken sample"):
        evaluate(ds, fails_on_the_second, config=cfg, out_dir=out)
    # a rerun that fails (a typo, a missing file, a kill) deleted the earlier reports before its own were written;
    # nor is its first panel left beside them as if it were theirs
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a run that finishes replaces the earlier one whole: fewer panels leave none of the earlier ones
    evaluate(ds, StubPredictor(), config=EvalConfig(protocols=("metric",), max_depth=10.0, panels=1), out_dir=out)
    assert [p.name for p in (out / "panels").iterdir()] == ["s0.png"]
    evaluate(ds, StubPredictor(), config=EvalConfig(protocols=("metric",), max_depth=10.0, panels=0), out_dir=out)
    assert {p.name for p in out.iterdir()} == {"metrics.json", "per_image.csv", "per_image.parquet", ".dap-eval"}


def test_reports_are_replaced_as_a_set_and_only_reports_of_dap_eval(tmp_path, monkeypatch):
    """An --out holding the user's own panels/ or metrics.json had them replaced or deleted (--panels 0); and a run
    killed while it switched its reports in left its panels beside the earlier run's metrics.json."""
    import dap.evaluation as evaluation
    from dap.data.datasets import FolderDataset

    make_folder(tmp_path / "data", n=3)
    ds = FolderDataset(tmp_path / "data")
    for name, panels in (("mine", 2), ("thesis", 0)):
        out = tmp_path / name
        (out / "panels").mkdir(parents=True)
        (out / "panels" / "figure.pdf").write_text("the user's")
        (out / "metrics.json").write_text('{"mine": 1}')
        with pytest.raises(DapError, match="already holds metrics.json, panels, not written by dap eval"):
            evaluate(ds, StubPredictor(), config=EvalConfig(max_depth=10.0, panels=panels), out_dir=out)
        assert (out / "panels" / "figure.pdf").read_text() == "the user's"
        assert (out / "metrics.json").read_text() == '{"mine": 1}'

    out = tmp_path / "out"
    evaluate(ds, StubPredictor(), config=EvalConfig(max_depth=10.0, panels=3), out_dir=out)
    (out / ".dap-eval").unlink()  # as a folder of an earlier version: its metrics.json says it is ours
    monkeypatch.setattr(evaluation, "_write_reports", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # killed after its panels are in, before its tables and summary
        evaluate(ds, StubPredictor(), config=EvalConfig(max_depth=10.0, panels=1), out_dir=out)
    assert [p.name for p in (out / "panels").iterdir()] == ["s0.png"] and not (out / "metrics.json").exists()
    monkeypatch.undo()
    evaluate(ds, StubPredictor(), config=EvalConfig(max_depth=10.0, panels=1), out_dir=out)  # still ours
    assert (out / "metrics.json").is_file()


def test_eval_size_keeps_a_prediction_on_the_gt_grid_aligned_with_it():
    """Upsampled for --eval-size, the GT is resampled nearest; a prediction on the GT's own grid resampled bilinear
    beside it disagreed at every edge (a perfect prediction scored AbsRel 0.03 at twice the size, GT x 1.1 0.126)."""
    gt = np.where(np.arange(W) % 8 < 4, 2.0, 6.0).astype(np.float32)[None].repeat(H, 0)  # sharp steps everywhere
    sample = {"name": "steps", "rgb": np.zeros((H, W, 3), np.float32), "depth": gt}
    for factor, want in ((1.0, 0.0), (1.1, 0.1)):
        cfg = EvalConfig(protocols=("metric",), max_depth=10.0, panels=0, eval_size=(2 * H, 2 * W))
        summary = evaluate([sample], lambda rgb, f=factor: (gt * f, None), config=cfg)
        assert summary["protocols"]["metric"]["per_image_mean"]["abs_rel"] == pytest.approx(want, abs=1e-6)
    # a prediction at another size is still resampled smoothly (bilinear), as a network's output should be
    half = gt[::2, ::2]
    cfg = EvalConfig(protocols=("metric",), max_depth=10.0, panels=0, eval_size=(2 * H, 2 * W))
    assert evaluate([sample], lambda rgb: (half, None), config=cfg)["protocols"]["metric"]["per_image_mean"][
        "abs_rel"] > 0.01


def test_cli_checkpoint_path_uses_model_predictor(tmp_path, monkeypatch, tiny_model):
    make_folder(tmp_path / "data", n=2)
    save_model(tiny_model, tmp_path / "ckpt")
    stub = StubPredictor()
    seen = {}

    def fake_model_predictor(model, *, device, resolution, seam_pad, precision, tta):
        seen.update(model=model.cfg.name, device=device, resolution=resolution, seam_pad=seam_pad, precision=precision,
                    tta=tta)
        return stub

    monkeypatch.setattr("dap.cli.eval.model_predictor", fake_model_predictor)
    code = main(
        [
            "eval",
            "--dataset",
            "folder",
            "--root",
            str(tmp_path / "data"),
            "--checkpoint",
            str(tmp_path / "ckpt"),
            "--out",
            str(tmp_path / "out"),
            "--resolution",
            "32x64",
            "--seam-pad",
            "0",
            "--max-depth",
            "10",
            "--limit",
            "1",
        ]
    )
    assert code == 0 and stub.calls == 1
    assert seen == {"model": "dap_tiny", "device": "cpu", "resolution": (32, 64), "seam_pad": 0.0, "precision": "fp32",
                    "tta": False}
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["n_images"] == 1 and summary["config"]["max_depth"] == 10.0
    key = json.loads((tmp_path / "out" / "predictions" / "cache.json").read_text())
    # a folder without splits is split "all" whatever --split named (test by default), as a dap synth folder
    assert key == {"dataset": "folder", "root": str((tmp_path / "data").resolve()), "split": "all", "split_file": None,
                   "checkpoint": str(tmp_path / "ckpt"), "model_sha256": model_fingerprint(tiny_model),
                   "resolution": [32, 64], "seam_pad": 0.0, "precision": "float32", "range_cap": 100.0,
                   "files": "<sample>.<input digest>.npy"}
    assert summary["config"]["cache_key"] == key


def test_cli_missing_prediction_is_a_clear_error(tmp_path, capsys):
    make_folder(tmp_path / "data", n=1)
    (tmp_path / "preds").mkdir()
    code = main(
        [
            "eval",
            "--dataset",
            "folder",
            "--root",
            str(tmp_path / "data"),
            "--predictions",
            str(tmp_path / "preds"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "no saved prediction for sample 's0'" in capsys.readouterr().err


def test_cli_end_to_end_with_tiny_model(tmp_path):
    """`dap eval --checkpoint` on a randomly initialised tiny model saved in our format."""
    torch.manual_seed(0)
    save_model(create_model("dap_tiny"), tmp_path / "ckpt")
    rng = np.random.default_rng(1)
    write_rgb(tmp_path / "data" / "rgb" / "a.png", rng.uniform(0, 1, (32, 64, 3)))
    write_depth(tmp_path / "data" / "depth" / "a.npy", rng.uniform(1, 5, (32, 64)).astype(np.float32))
    args = [
        "eval",
        "--dataset",
        "folder",
        "--root",
        str(tmp_path / "data"),
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--out",
        str(tmp_path / "out"),
        "--resolution",
        "32x64",
        "--protocol",
        "metric",
        "affine",
    ]
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    pred = read_depth(next((tmp_path / "out" / "predictions").glob("a.*.npy")))
    assert pred.shape == (32, 64) and np.all(pred > 0)
    gt = read_depth(tmp_path / "data" / "depth" / "a.npy")
    want = compute_metrics(pred, gt, max_depth=100.0)
    assert summary["protocols"]["metric"]["per_image_mean"]["rmse"] == pytest.approx(want["rmse"], rel=1e-5)
    assert (tmp_path / "out" / "panels" / "a.png").is_file()
    assert main(args) == 0  # second run reuses the cached prediction
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_cached_predictions"] == 1


# --- the prediction cache and --seam-pad (issue 11, item 2) -----------------------------------------------

def _eval(root, checkpoint, out, *extra):
    return main(["eval", "--dataset", "folder", "--root", str(root), "--checkpoint", str(checkpoint),
                 "--out", str(out), "--resolution", "32x64", *extra])


@pytest.fixture
def tiny_ckpt(tiny_model, tmp_path):
    return save_model(tiny_model, tmp_path / "ckpt")


def _beside(root):
    """RGB and its ground truth side by side with the same stem, listed by absolute paths in a manifest."""
    rng = np.random.default_rng(2)
    write_rgb(root / "pano.png", rng.uniform(0, 1, (32, 64, 3)))
    gt = rng.uniform(1, 5, (32, 64)).astype(np.float32)
    write_depth(root / "pano.npy", gt)
    (root / "manifest.csv").write_text(f"rgb,depth\n{root / 'pano.png'},{root / 'pano.npy'}\n")
    return gt


def test_absolute_manifest_paths_cache_under_out_and_never_score_gt_against_itself(tmp_path, tiny_ckpt):
    data = tmp_path / "data"
    gt = _beside(data)
    before = {p: p.read_bytes() for p in data.iterdir()}
    out = tmp_path / "out"
    assert _eval(data, tiny_ckpt, out) == 0
    assert {p: p.read_bytes() for p in data.iterdir()} == before  # nothing written into the user's data
    name = str(data / "pano")
    (cached,) = (out / "predictions").glob(f"{quote(name, safe='')}.*.npy")
    assert {p.name for p in (out / "predictions").iterdir()} == {"cache.json", cached.name}
    pred = read_depth(cached)
    first = json.loads((out / "metrics.json").read_text())["protocols"]["metric"]["per_image_mean"]
    assert first["abs_rel"] == pytest.approx(compute_metrics(pred, gt, max_depth=100.0)["abs_rel"], rel=1e-6)
    assert first["abs_rel"] > 0.05 and first["delta1"] < 1.0  # not the ground truth against itself
    assert _eval(data, tiny_ckpt, out) == 0  # the rerun reads the cache, still not the GT
    again = json.loads((out / "metrics.json").read_text())
    assert again["n_cached_predictions"] == 1 and again["protocols"]["metric"]["per_image_mean"] == first


def test_saved_predictions_are_never_looked_up_outside_their_folder(tmp_path, capsys):
    data = tmp_path / "data"
    _beside(data)
    (tmp_path / "preds").mkdir()
    args = ["eval", "--dataset", "folder", "--root", str(data), "--predictions", str(tmp_path / "preds"),
            "--out", str(tmp_path / "out")]
    assert main(args) == 2
    assert "is an absolute path or leaves the folder" in capsys.readouterr().err
    (data / "manifest.csv").write_text(f"rgb,depth,name\n{data / 'pano.png'},{data / 'pano.npy'},p\n")
    write_depth(tmp_path / "preds" / "p.npy", np.full((32, 64), 2.0, np.float32))
    assert main(args) == 0


def test_cache_is_refused_when_weights_seam_pad_or_resolution_change(tmp_path, tiny_ckpt, capsys):
    make_folder(tmp_path / "data", n=1)
    write_rgb(tmp_path / "data" / "rgb" / "s0.png", np.random.default_rng(0).uniform(0, 1, (32, 64, 3)))
    write_depth(tmp_path / "data" / "depth" / "s0.npy", np.full((32, 64), 2.0, np.float32))
    out = tmp_path / "out"
    assert _eval(tmp_path / "data", tiny_ckpt, out) == 0
    torch.manual_seed(1)
    save_model(create_model("dap_tiny"), tiny_ckpt)  # the checkpoint is overwritten in place
    capsys.readouterr()
    assert _eval(tmp_path / "data", tiny_ckpt, out) == 2
    assert "holds predictions made with other settings (model_sha256: " in capsys.readouterr().err
    next((out / "predictions").glob("s0.*.npy")).unlink()  # the user clears the cache
    assert _eval(tmp_path / "data", tiny_ckpt, out) == 0
    assert _eval(tmp_path / "data", tiny_ckpt, out, "--seam-pad", "0.25") == 2
    assert "seam_pad: 0.0625 -> 0.25" in capsys.readouterr().err
    assert _eval(tmp_path / "data", tiny_ckpt, out, "--resolution", "64x128") == 2
    assert "resolution: [32, 64] -> [64, 128]" in capsys.readouterr().err
    # the same weights by another path (a copy, or the path spelled otherwise) are the same model: reused
    shutil.copytree(tiny_ckpt, tmp_path / "copy")
    assert _eval(tmp_path / "data", tmp_path / "copy", out) == 0
    assert json.loads((out / "metrics.json").read_text())["n_cached_predictions"] == 1


def test_cache_is_refused_for_another_dataset_with_the_same_sample_names(tmp_path, tiny_ckpt, capsys):
    make_folder(tmp_path / "a", n=1)
    make_folder(tmp_path / "b", n=1)  # the same name, s0, and other pixels
    write_rgb(tmp_path / "b" / "rgb" / "s0.png", np.zeros((H, W, 3)))
    assert _eval(tmp_path / "a", tiny_ckpt, tmp_path / "out") == 0
    capsys.readouterr()
    assert _eval(tmp_path / "b", tiny_ckpt, tmp_path / "out") == 2
    assert f"root: {(tmp_path / 'a').resolve()} -> {(tmp_path / 'b').resolve()}" in capsys.readouterr().err


def test_a_changed_panorama_is_predicted_again_not_read_from_the_cache(tmp_path, tiny_ckpt):
    make_folder(tmp_path / "a", n=1)
    assert _eval(tmp_path / "a", tiny_ckpt, tmp_path / "out") == 0
    write_rgb(tmp_path / "a" / "rgb" / "s0.png", np.zeros((H, W, 3)))  # re-exported since, same name
    assert _eval(tmp_path / "a", tiny_ckpt, tmp_path / "out") == 0
    summary = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert summary["n_cached_predictions"] == 0 and len(list((tmp_path / "out" / "predictions").glob("s0.*"))) == 2


def test_eval_seam_pad_reaches_the_model(tmp_path, tiny_ckpt, tiny_model):
    from dap.inference import predict

    make_folder(tmp_path / "data", n=1)
    rgb = np.random.default_rng(0).uniform(0, 1, (32, 64, 3)).astype(np.float32)
    write_rgb(tmp_path / "data" / "rgb" / "s0.png", rgb)
    write_depth(tmp_path / "data" / "depth" / "s0.npy", np.full((32, 64), 2.0, np.float32))
    preds = {}
    for pad in ("0", "0.25"):  # 0.25 of 64 columns = one 16-pixel patch on each side; the default 1/16 is none
        assert _eval(tmp_path / "data", tiny_ckpt, tmp_path / pad, "--seam-pad", pad) == 0
        preds[pad] = read_depth(next((tmp_path / pad / "predictions").glob("s0.*.npy")))
        stored = read_rgb(tmp_path / "data" / "rgb" / "s0.png")
        want = predict(stored, tiny_model, resolution=(32, 64), seam_pad=float(pad))
        np.testing.assert_allclose(preds[pad], np.where(want.range_mask, 100.0, want.depth), atol=1e-5)
    assert np.abs(preds["0"] - preds["0.25"]).max() > 1e-4


def test_cache_folder_not_written_by_us_and_bad_seam_pad_are_refused(tmp_path, tiny_ckpt, capsys):
    make_folder(tmp_path / "data", n=1)
    out = tmp_path / "out"
    write_depth(out / "predictions" / "s0.npy", np.ones((8, 16), np.float32))  # someone else's files
    assert _eval(tmp_path / "data", tiny_ckpt, out) == 2
    assert "holds no cache.json, so it was not written by dap eval" in capsys.readouterr().err
    assert _eval(tmp_path / "data", tiny_ckpt, tmp_path / "o2", "--seam-pad", "2") == 2
    assert "seam padding is a fraction of the width from 0 (off) to 0.5, got 2.0" in capsys.readouterr().err


def test_dap_predict_outputs_score_as_the_model_itself(tmp_path, capsys):
    """`dap predict --outputs npy` then `dap eval --predictions` gives the numbers of `dap eval --checkpoint`: the 0
    that dap predict writes where the model marks a pixel out of range is scored as the range cap, as in a model
    run (before, it counted as min_depth)."""
    from dap.inference import predict

    torch.manual_seed(0)
    model = create_model("dap_tiny").eval()
    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        write_rgb(tmp_path / "data" / "rgb" / f"{name}.png", rng.uniform(0, 1, (32, 64, 3)))
        write_depth(tmp_path / "data" / "depth" / f"{name}.npy", rng.uniform(1, 5, (32, 64)).astype(np.float32))
    prob = predict(read_rgb(tmp_path / "data" / "rgb" / "a.png"), model, resolution=(32, 64)).out_of_range_prob
    torch.manual_seed(0)  # the same weights, marking about half of the pixels out of range
    save_model(create_model("dap_tiny", range_threshold=float(np.median(prob))), tmp_path / "ckpt")
    common = ["--dataset", "folder", "--root", str(tmp_path / "data"), "--protocol", "metric", "--max-depth", "100"]
    assert main(["predict", str(tmp_path / "data" / "rgb"), "--checkpoint", str(tmp_path / "ckpt"), "--out",
                 str(tmp_path / "preds"), "--outputs", "npy", "--resolution", "32x64"]) == 0
    saved = [read_depth(tmp_path / "preds" / f"{n}.npy") for n in ("a", "b")]
    assert 0.01 < np.mean([(s == 0).mean() for s in saved]) < 0.99  # both kinds of pixel are there
    assert main(["eval", *common, "--predictions", str(tmp_path / "preds"), "--out", str(tmp_path / "e1")]) == 0
    assert main(["eval", *common, "--checkpoint", str(tmp_path / "ckpt"), "--resolution", "32x64",
                 "--out", str(tmp_path / "e2")]) == 0
    got, want = (json.loads((tmp_path / e / "metrics.json").read_text())["protocols"]["metric"] for e in ("e1", "e2"))
    for key in ("abs_rel", "rmse", "delta1", "seam_error"):
        assert got["per_image_mean"][key] == pytest.approx(want["per_image_mean"][key], rel=1e-5), key
    # the other depth files dap predict writes score the same: EXR exactly, the 16-bit PNG to its 2 mm steps
    for kind, rel in (("exr", 1e-5), ("png16", 1e-3)):
        assert main(["predict", str(tmp_path / "data" / "rgb"), "--checkpoint", str(tmp_path / "ckpt"), "--out",
                     str(tmp_path / kind), "--outputs", kind, "--resolution", "32x64"]) == 0
        assert main(["eval", *common, "--predictions", str(tmp_path / kind), "--out", str(tmp_path / f"e_{kind}")]) == 0
        other = json.loads((tmp_path / f"e_{kind}" / "metrics.json").read_text())["protocols"]["metric"]
        assert other["per_image_mean"]["abs_rel"] == pytest.approx(want["per_image_mean"]["abs_rel"], rel=rel), kind


def test_saved_predictions_of_the_wrong_shape_or_without_depth(tmp_path, capsys):
    gts = make_folder(tmp_path / "data", n=2)
    for name in gts:
        write_depth(tmp_path / "square" / f"{name}.npy", np.ones((H, H), np.float32))
        write_depth(tmp_path / "empty" / f"{name}.npy", np.zeros((H, W), np.float32))
        write_depth(tmp_path / "half_res" / f"{name}.npy", np.full((H // 2, W // 2), 3.0, np.float32))
    argv = ["eval", "--dataset", "folder", "--root", str(tmp_path / "data"), "--protocol", "metric", "--predictions"]
    assert main([*argv, str(tmp_path / "square"), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert f"s0.npy is {H}x{H} but the ground truth of 's0' is {W}x{H}" in err and "same shape (2:1)" in err
    assert main([*argv, str(tmp_path / "half_res"), "--out", str(tmp_path / "o2")]) == 0  # resized, as documented
    assert main([*argv, str(tmp_path / "empty"), "--out", str(tmp_path / "o3")]) == 0
    err = capsys.readouterr().err
    assert "2 of 2 samples, the first s0: over half of the saved prediction has no depth" in err
    summary = json.loads((tmp_path / "o3" / "metrics.json").read_text())
    want = np.mean([compute_metrics(np.full((H, W), 100.0), g, max_depth=100.0)["abs_rel"] for g in gts.values()])
    assert summary["protocols"]["metric"]["per_image_mean"]["abs_rel"] == pytest.approx(want, rel=1e-6)
    for name, gt in gts.items():  # millimetres
        write_depth(tmp_path / "mm" / f"{name}.npy", np.where(gt > 0, gt * 1000, 0).astype(np.float32))
    assert main([*argv, str(tmp_path / "mm"), "--out", str(tmp_path / "o4")]) == 0
    assert "over 90% of the saved prediction is beyond --max-depth 100 m" in capsys.readouterr().err


def test_ground_truth_in_another_unit_is_named(tmp_path, capsys):
    # centimetres stored as if metres: all but the near pixels lie beyond the 100 m cap, which alone would be scored
    gts = make_folder(tmp_path / "data", n=2)
    for name, gt in gts.items():
        centimetres = gt * 100.0
        centimetres[:, :1] = 80.0  # 0.8 m: a near wall, 6% of the pixels
        write_depth(tmp_path / "data" / "depth" / f"{name}.npy", centimetres)
        write_depth(tmp_path / "preds" / f"{name}.npy", centimetres / 100.0)
    argv = ["eval", "--dataset", "folder", "--root", str(tmp_path / "data"), "--predictions", str(tmp_path / "preds")]
    assert main([*argv, "--out", str(tmp_path / "o1")]) == 0
    err = capsys.readouterr().err
    assert "2 of 2 samples, the first s0: over 90% of the ground truth is beyond --max-depth 100 m" in err
    assert "metres_per_unit" in err
    (tmp_path / "data" / "manifest.csv").write_text("rgb,depth,metres_per_unit,name\n" + "".join(
        f"rgb/{name}.png,depth/{name}.npy,0.01,{name}\n" for name in gts))  # the fix the warning names
    assert main([*argv, "--out", str(tmp_path / "o2")]) == 0
    assert "beyond --max-depth" not in capsys.readouterr().err
    summary = json.loads((tmp_path / "o2" / "metrics.json").read_text())
    assert summary["protocols"]["metric"]["per_image_mean"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    # metres given a millimetre unit: nothing is far enough to be dropped, but nothing is where it should be
    (tmp_path / "data" / "manifest.csv").write_text("rgb,depth,metres_per_unit,name\n" + "".join(
        f"rgb/{name}.png,depth/{name}.npy,0.0001,{name}\n" for name in gts))
    assert main([*argv, "--out", str(tmp_path / "o3")]) == 0
    assert "2 of 2 samples, the first s0: over 90% of the ground truth is nearer than 0.1 m: check its unit" \
        in capsys.readouterr().err


def test_a_sample_whose_file_name_is_not_utf8_is_scored_and_reported(tmp_path):
    gts = make_folder(tmp_path / "data", n=1)
    odd = os.fsdecode(b"caf\xe9")
    try:
        for kind, suffix in (("rgb", ".png"), ("depth", ".npy")):
            os.rename(tmp_path / "data" / kind / f"s0{suffix}", tmp_path / "data" / kind / f"{odd}{suffix}")
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    write_depth(tmp_path / "preds" / f"{odd}.npy", gts["s0"])
    argv = ["eval", "--dataset", "folder", "--root", str(tmp_path / "data")]
    assert main([*argv, "--predictions", str(tmp_path / "preds"), "--out", str(tmp_path / "o")]) == 0
    assert "caf\\xe9" in (tmp_path / "o" / "per_image.csv").read_text()  # the bytes escaped, the file still written
    summary = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert summary["protocols"]["metric"]["per_image_mean"]["abs_rel"] == pytest.approx(0.0, abs=1e-6)


def test_a_cached_rerun_scores_non_finite_predictions_as_the_first_run(tmp_path):
    """The cache stored predictions through write_depth, which turns NaN and inf into 0: an inf pixel (the range
    cap on the first run) then scored as min_depth, and the zeros entered the median fit (AbsRel 1.28 -> 0.53)."""
    rng = np.random.default_rng(0)
    ds = [{"name": "a", "rgb": rng.random((8, 16, 3)).astype(np.float32), "depth": np.full((8, 16), 2.0, np.float32)}]

    def overflowing(rgb):  # e.g. fp16 overflow on a few pixels
        d = np.full(rgb.shape[:2], 2.5, np.float32)
        d[:, :4], d[:, 4:6] = np.inf, np.nan
        return d, None

    cfg = EvalConfig(protocols=("metric", "median"), max_depth=10, panels=0)
    runs = [evaluate(ds, overflowing, config=cfg, out_dir=tmp_path, cache_key={"model": "x"}) for _ in range(2)]
    assert runs[1]["n_cached_predictions"] == 1
    assert json.dumps(runs[1]["protocols"]) == json.dumps(runs[0]["protocols"])  # NaN == NaN (pole_abs_rel)
    # inf at the cap (10 m) on 4 of 16 columns, NaN at min_depth on 2, 2.5 m on 10: (16 + 2 * 0.9995 + 2.5) / 16
    assert runs[0]["protocols"]["metric"]["per_image_mean"]["abs_rel"] == pytest.approx(1.2811875)


def test_eval_runs_in_float32_unless_told(tmp_path, tiny_ckpt, monkeypatch):
    """`dap eval` ran dap.predict's "auto": bf16 wherever one matmul timing said it was 1.5x faster, which on a busy
    CPU with AVX-512 BF16 changes from run to run (the scores, and a resume refused: "precision: float32 ->
    bfloat16"). fp32 now, --precision to choose."""
    from dap import inference

    make_folder(tmp_path / "data", n=1)
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(inference, "cpu_bf16_speedup", lambda: 4.0)  # "auto" is bf16 on this CPU now
    assert _eval(tmp_path / "data", tiny_ckpt, tmp_path / "o32", "--max-depth", "10") == 0
    assert json.loads((tmp_path / "o32" / "predictions" / "cache.json").read_text())["precision"] == "float32"
    assert _eval(tmp_path / "data", tiny_ckpt, tmp_path / "oauto", "--max-depth", "10", "--precision", "auto") == 0
    key = json.loads((tmp_path / "oauto" / "predictions" / "cache.json").read_text())
    # and what of the heads ran in float32: 16-bit caches from before were rounded to 0.4% steps, then streaked
    assert key["precision"] == "bfloat16" and key["float32_in_heads"] == "upsampling, last 3x3 and 1x1"
    assert "float32_in_heads" not in json.loads((tmp_path / "o32" / "predictions" / "cache.json").read_text())
    fp32, auto = (np.load(next((tmp_path / o / "predictions").glob("*.npy"))) for o in ("o32", "oauto"))
    assert not np.array_equal(fp32, auto)


def test_a_plain_folder_skips_hidden_files_and_has_no_splits(tmp_path, capsys):
    """macOS leaves ._<name> beside every file copied to exFAT: the folder loader took ._s0.png for a sample (the
    other loaders skip hidden files). --split named nothing in a folder without splits, every sample was scored
    and the result labelled with the name given."""
    from dap.data.datasets import FolderDataset
    from dap.errors import DatasetLayoutError

    make_folder(tmp_path / "data", n=2)
    shutil.copy(tmp_path / "data" / "rgb" / "s0.png", tmp_path / "data" / "rgb" / "._s0.png")
    ds = FolderDataset(tmp_path / "data", split="val")
    assert [it.name for it in ds.items] == ["s0", "s1"] and ds.split == "all"
    with pytest.raises(DatasetLayoutError, match="unknown split 'foo': a plain folder has no splits"):
        FolderDataset(tmp_path / "data", split="foo")
    (tmp_path / "data" / "manifest.csv").write_text("rgb,depth\nrgb/s0.png,depth/s0.npy\n")  # no split column
    assert FolderDataset(tmp_path / "data", split="test").split == "all"


def test_metrics_json_is_strict_json_and_no_max_depth_is_no_cap(tmp_path):
    """metrics.json held bare NaN (pole_abs_rel without pole pixels), which JSON parsers other than Python's
    refuse: null now. EvalConfig(max_depth=None), typed and documented as no cap, was a TypeError."""
    ds = [{"name": "a", "rgb": np.full((8, 16, 3), 0.5, np.float32), "depth": np.full((8, 16), 2.0, np.float32)}]
    ds[0]["depth"][:2] = ds[0]["depth"][-2:] = 0  # no ground truth at the poles: pole_abs_rel is not measurable
    summary = evaluate(ds, lambda rgb: (np.full(rgb.shape[:2], 2.5, np.float32), None),
                       config=EvalConfig(max_depth=None, panels=0), out_dir=tmp_path)
    assert summary["protocols"]["metric"]["per_image_mean"]["abs_rel"] == pytest.approx(0.25)

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    saved = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert saved["protocols"]["metric"]["per_image_mean"]["pole_abs_rel"] is None


def test_the_split_file_read_is_the_one_recorded(tmp_path, monkeypatch):
    """--split-file relative to the root: the cache key recorded it resolved against the current folder (a file
    that is not there, and another one from another folder, refusing the cache), metrics.json not at all."""
    from dap.cli.eval import _read_split_file
    from dap.data.datasets import Matterport3D

    root = tmp_path / "mp3d"
    write_rgb(root / "s" / "p_rgb.png", np.full((8, 16, 3), 0.5, np.float32))
    write_depth(root / "s" / "p_depth.png", np.full((8, 16), 1.5, np.float32), scale=1 / 4000)
    (root / "mine.txt").write_text("s/p_rgb.png s/p_depth.png\n")
    write_depth(tmp_path / "preds" / "s" / "p_rgb.npy", np.full((8, 16), 1.5, np.float32))
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--dataset", "matterport3d", "--root", str(root), "--split-file", "mine.txt",
                 "--predictions", str(tmp_path / "preds"), "--out", str(tmp_path / "e")]) == 0
    config = json.loads((tmp_path / "e" / "metrics.json").read_text())["config"]
    assert config["split_file"] == str(root / "mine.txt")
    assert _read_split_file(Matterport3D(root, split_file="mine.txt")) == str((root / "mine.txt").resolve())


def test_a_model_without_finite_depth_is_named_not_the_ground_truth(tmp_path, tiny_ckpt, capsys):
    """Every sample skipped because the model gave NaN (fp16 overflow, a broken checkpoint) was reported as "none
    has valid ground truth ... check the depth files and their scale": the user went looking at good files."""
    from dap.io import write_npy

    make_folder(tmp_path / "data", n=2)
    assert _eval(tmp_path / "data", tiny_ckpt, tmp_path / "out") == 0
    for cached in (tmp_path / "out" / "predictions").glob("*.npy"):  # the model's output, as a failing one gives it
        write_npy(cached, np.full(read_depth(cached).shape, np.nan, np.float32))
    capsys.readouterr()
    assert _eval(tmp_path / "data", tiny_ckpt, tmp_path / "out", "--protocol", "median") == 2
    err = capsys.readouterr().err
    assert "none of the 2 samples" in err and "the prediction is NaN or infinite at every valid pixel" in err
    assert "valid ground truth" not in err and "metrics.json" in err
    # the run finished, scoring nothing: the first run's tables were left beside its summary as if they were its own
    assert not (tmp_path / "out" / "per_image.csv").exists() and not (tmp_path / "out" / "per_image.parquet").exists()
    # ground truth that is all invalid keeps its own message
    for f in (tmp_path / "data" / "depth").iterdir():
        write_depth(f, np.zeros_like(read_depth(f)))
    assert _eval(tmp_path / "data", tiny_ckpt, tmp_path / "out2") == 2
    assert "has valid ground truth" in capsys.readouterr().err


def test_panels_of_uint8_samples_show_the_photo(tmp_path):
    """A dataset giving uint8 RGB (a Python one) was scored right, but its panels' RGB was all white (0-255 taken
    as [0, 1])."""
    rng = np.random.default_rng(0)
    rgb = (rng.uniform(0.2, 0.6, (H, W, 3)) * 255).astype(np.uint8)
    ds = [{"name": "a", "rgb": rgb, "depth": np.full((H, W), 2.0, np.float32)}]
    evaluate(ds, lambda image: (np.full(image.shape[:2], 2.0, np.float32), None),
             config=EvalConfig(max_depth=10.0, panels=1), out_dir=tmp_path)
    panel = read_rgb(tmp_path / "panels" / "a.png")
    assert panel[:, :512].mean() == pytest.approx(rgb.mean() / 255, abs=0.02)  # the first tile, 256 rows high
