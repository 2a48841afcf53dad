"""The recipes of the default model: configs/default_model.yaml + experiments/data_in_the_loop.py build valid stage
configs and their model fits the issue's size limit (<= 40 MB as float16); configs/bundled.yaml trains on what
experiments/bundled_model.py renders."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _experiment(name: str = "data_in_the_loop"):
    if str(ROOT / "experiments") not in sys.path:  # bundled_model.py imports its helpers from data_in_the_loop.py
        sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_configs_chain_and_the_model_fits_40_mb(tmp_path):
    from dap.curation.pipeline import stage_train_config
    from dap.models import count_parameters
    from dap.train import SourceConfig, build_model

    e = _experiment()
    args = e.parse(["--work", str(tmp_path / "w"), "--data", str(tmp_path / "d"), "--seeds", "3",
                    "--train-set", "data.batch_size=4"])
    cfg = e.curate_config(args, 3, {"stage1": 600, "finetune": 300})
    work = tmp_path / "w" / "seed3"
    pseudo = SourceConfig(kind="pseudo", path=str(work / "pool"), label_stage="stage1", selected_only=True)
    s1 = stage_train_config(cfg, cfg.stage1, None, work)
    s2 = stage_train_config(cfg, cfg.stage2, pseudo, work)
    fin = stage_train_config(cfg, cfg.final, pseudo, work)
    assert (s1.run.steps, s2.run.steps, fin.run.steps) == (600, 300, 300)
    assert {s1.run.seed, s2.run.seed, fin.run.seed} == {3} and s1.data.batch_size == 4
    assert s1.model.init == "scratch" and s2.model.init == str(work / "runs/stage1/final")
    assert fin.model.init == str(work / "runs/stage2/final")
    assert [s.kind for s in s2.data.sources] == ["shards", "pseudo"]
    assert s2.data.sources[1].ratio == 0.25  # pseudo_ratio x the labeled sources' total weight
    n = count_parameters(build_model(s1))["total"]
    assert 2 * n <= 40e6, f"{n} parameters are {2 * n / 1e6:.1f} MB as float16"



def test_bundled_model_recipe_trains_on_what_it_renders():
    """configs/bundled.yaml (experiments/bundled_model.py): continues the first bundled model at a working resolution
    of 256x512, on exactly the training sets the script renders, with the range-mask loss that does not up-weight
    the rare out-of-range class; no training or calibration scene is also evaluated."""
    from dap.train import load_config

    cfg = load_config(ROOT / "configs" / "bundled.yaml")
    e = _experiment("bundled_model")
    assert cfg.model.init == "./v1"
    assert (cfg.data.height, cfg.data.width) == tuple(cfg.model.overrides["default_resolution"]) == (256, 512)
    assert cfg.loss.mask_pos_weight == 1.0
    training = [s.path.removeprefix("data/") for s in cfg.data.sources]
    assert [v.path for v in cfg.data.val] == ["data/val_indoor"]
    assert set(training) == {"indoor", "outdoor", "indoor_clean", "outdoor_clean"}
    assert {name for name, *_ in e.SETS} == {*training, "val_indoor", *e.EVAL_SETS, *e.CAL_SETS}
    ranges = {name: range(seed, seed + count) for name, _, _, seed, count in e.SETS}
    for name in (*training, *e.CAL_SETS):
        for other, r in ranges.items():
            assert other == name or not set(ranges[name]) & set(r), (name, other)
    # the second stage continues the first on the same data and resolution, with the exposure augmentation
    stage2 = load_config(ROOT / "configs" / "bundled_exposure.yaml")
    assert stage2.model.init == "runs/train/final" and stage2.data.exposure > 1 and cfg.data.exposure == 1
    assert [(s.path, s.ratio) for s in stage2.data.sources] == [(s.path, s.ratio) for s in cfg.data.sources]
    assert (stage2.data.height, stage2.data.width) == (256, 512) and stage2.loss.mask_pos_weight == 1.0


def test_bundled_model_recipe_continues_an_interrupted_training(tmp_path, monkeypatch):
    """Rerunning experiments/bundled_model.py must continue `runs/train` from its newest checkpoint: `dap train`
    refuses a run folder that already holds a run unless --resume is given (and --resume starts afresh when there
    is no checkpoint yet), so the train step always passes it."""
    import argparse

    e = _experiment("bundled_model")
    calls = []
    monkeypatch.setattr(e, "run", lambda command, cwd: calls.append((command, cwd)))
    e.step_train(argparse.Namespace(work=tmp_path))
    e.step_train2(argparse.Namespace(work=tmp_path))
    assert [cwd for _, cwd in calls] == [tmp_path, tmp_path]
    assert [command[command.index("train") + 1:] for command, _ in calls] == [
        ["--config", str(ROOT / "configs" / "bundled.yaml"), "--out", "runs/train", "--resume"],
        ["--config", str(ROOT / "configs" / "bundled_exposure.yaml"), "--out", "runs/train2", "--resume"]]


def test_gpu_recipe_renders_the_bundled_training_sets_and_keeps_the_ema_in_float16(tmp_path, monkeypatch):
    """experiments/gpu_model.py: configs/gpu_vits.yaml trains at the resolution the script renders, on the four sets
    it renders with the bundled recipe's seeds (so no held-out scene is trained on), with a schedule that does not
    depend on where the time limit stops it; the export writes the checkpoint's EMA weights as float16."""
    import argparse

    import torch
    from safetensors import safe_open

    from dap.models import load_model
    from dap.train import build_model, load_config

    e = _experiment("gpu_model")
    cfg = load_config(e.ROOT / "configs" / "gpu_vits.yaml")
    assert (cfg.data.height, cfg.data.width) == tuple(cfg.model.overrides["default_resolution"]) == (512, 1024)
    assert {s.path.removeprefix("data/") for s in cfg.data.sources} == set(e.TRAIN_SETS)
    assert cfg.optim.schedule == "constant" and cfg.optim.ema_decay > 0
    calls = []
    monkeypatch.setattr(sys.modules["bundled_model"], "run", lambda cmd, cwd: calls.append(cmd))
    e.step_render(argparse.Namespace(work=tmp_path, fraction=0.25, resolution=(512, 1024), workers=4, seed_offset=0))
    rendered = {c[c.index("--out") + 1].rsplit("/", 1)[-1]: (int(c[c.index("--seed") + 1]),
                                                            int(c[c.index("--count") + 1])) for c in calls}
    bundled = {name: (seed, count) for name, _, _, seed, count in sys.modules["bundled_model"].SETS}
    assert rendered == {name: (bundled[name][0], bundled[name][1] // 4) for name in e.TRAIN_SETS}
    assert {c[c.index("--resolution") + 1] for c in calls} == {"512x1024"}

    overrides = ["model.name=dap_tiny", "model.overrides.default_resolution=[64,128]"]
    model = build_model(load_config(e.ROOT / "configs" / "gpu_vits.yaml", overrides), quiet=True)
    ema = torch.optim.swa_utils.AveragedModel(model)
    with torch.no_grad():
        for p in ema.module.parameters():
            p.add_(0.25)  # the EMA differs from the trained weights: the export must take the EMA
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"step": 7, "model": model.state_dict(), "ema": ema.state_dict()},
               tmp_path / "run" / "checkpoints" / "step_00000007.pt")
    args = argparse.Namespace(work=tmp_path, config=e.ROOT / "configs" / "gpu_vits.yaml", set=overrides)
    info = e.step_export(args, e.State(tmp_path, "gpu_model", e.STEPS))
    assert info["step"] == 7
    with safe_open(str(tmp_path / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    loaded = load_model(tmp_path / "model")
    for k, v in ema.module.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().to(v.dtype)), k


def test_gpu_small_config_fits_the_bundled_size_and_trains_where_the_recipe_renders():
    """configs/gpu_small.yaml (for experiments/gpu_model.py --resolution 256x512): a model within the bundled limit
    of 40 MB as float16, at the bundled working resolution, on the four sets gpu_model.py renders, with the same
    time-budget schedule as configs/gpu_vits.yaml."""
    from dap.models import count_parameters
    from dap.train import build_model, load_config

    e = _experiment("gpu_model")
    cfg = load_config(e.ROOT / "configs" / "gpu_small.yaml")
    n = count_parameters(build_model(cfg, quiet=True))["total"]
    assert 2 * n <= 40e6, f"{n} parameters are {2 * n / 1e6:.1f} MB as float16"
    assert (cfg.data.height, cfg.data.width) == tuple(cfg.model.overrides["default_resolution"]) == (256, 512)
    assert {s.path.removeprefix("data/") for s in cfg.data.sources} == set(e.TRAIN_SETS)
    assert cfg.optim.schedule == "constant" and cfg.optim.ema_decay > 0 and cfg.run.val_every == 0


def test_fresh_rounds_render_scenes_no_held_out_set_or_v2_has(tmp_path, monkeypatch):
    """experiments/gpu_model.py --seed-offset moves every training set's seeds (the v3 rounds: 10M and 20M), and an
    offset that would reach a held-out or calibration set's scenes is refused before anything is rendered."""
    import argparse

    e = _experiment("gpu_model")
    b = sys.modules["bundled_model"]
    calls = []
    monkeypatch.setattr(b, "run", lambda cmd, cwd: calls.append(cmd))
    e.step_render(argparse.Namespace(work=tmp_path, fraction=0.6, resolution=(256, 512), workers=16,
                                     seed_offset=20_000_000))
    seeds = {c[c.index("--out") + 1].rsplit("/", 1)[-1]: (int(c[c.index("--seed") + 1]), int(c[c.index("--count") + 1]))
             for c in calls}
    recipe = {name: (seed, count) for name, _, _, seed, count in b.SETS}
    assert seeds == {n: (recipe[n][0] + 20_000_000, round(recipe[n][1] * 0.6)) for n in e.TRAIN_SETS}
    assert {int(c[c.index("--shard-size") + 1]) for c in calls if "indoor" in c[c.index("--out") + 1]} == {90, 30}
    used = [range(seed, seed + count) for name, (seed, count) in recipe.items()]  # v2's and the held-out scenes
    for g in _experiment("bundled_gpu").ROUNDS:
        _, _, fraction, offset, _ = g
        assert b.seed_clashes_with_held_out(e.TRAIN_SETS, fraction, offset) == []
        for name in e.TRAIN_SETS:
            first = recipe[name][0] + offset
            fresh = range(first, first + round(recipe[name][1] * fraction))
            assert not any(set(fresh) & set(r) for r in used), (name, offset)
    assert b.seed_clashes_with_held_out(e.TRAIN_SETS, 1.0, 2_000_000) == ["indoor's seeds 3000000..3002399",
                                                                     "outdoor's seeds 4000000..4001199"]
    with pytest.raises(SystemExit):
        e.main(["--work", str(tmp_path / "w"), "--seed-offset", "2000000", "--step", "render"])
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_v3_recipe_chains_v2_round1_round2_and_the_bundled_calibration(tmp_path, monkeypatch):
    """experiments/bundled_gpu.py: round 1 starts from v2 (../v2, put there by the held-out step), round 2 from
    round 1's model, both at the bundled resolution on the sets gpu_model.py renders, the model unchanged in size;
    then bundled_model.py calibrates and evaluates round 2's model in the same work folder, and a rerun skips what
    is done."""
    from dap.train import load_config

    g = _experiment("bundled_gpu")
    b, gm = sys.modules["bundled_model"], sys.modules["gpu_model"]
    r1, r2 = (load_config(ROOT / "configs" / config) for _, config, *_ in g.ROUNDS)
    assert (r1.model.init, r2.model.init) == ("../v2", "../round1/model")
    for cfg in (r1, r2):
        assert cfg.model.name == "dap_tiny" and (cfg.data.height, cfg.data.width) == (256, 512)
        assert cfg.model.overrides == {"depth_scale": 1.0, "latitude_scale": [], "range_threshold": 0.5}
        assert {s.path.removeprefix("data/") for s in cfg.data.sources} == set(gm.TRAIN_SETS)
    assert r2.optim.lr_head < r1.optim.lr_head and g.ROUNDS[1][4] < r2.run.steps  # stopped inside its schedule
    assert set(g.HELD_OUT) == {"val_indoor", *b.EVAL_SETS, *b.CAL_SETS}

    calls = []
    monkeypatch.setattr(b, "render_sets", lambda data, names, workers: calls.append(("render", names)) or {})
    monkeypatch.setattr(b, "step_v1", lambda args: calls.append(("v1",)) or {})
    monkeypatch.setattr(gm, "main", lambda argv: calls.append(("gpu_model", argv)))
    monkeypatch.setattr(b, "main", lambda argv, experiment: calls.append(("bundled_model", argv)) or b.State(
        tmp_path, experiment, b.STEPS).mark(argv[argv.index("--step") + 1], {}))
    g.main(["--work", str(tmp_path), "--workers", "3"])
    assert [c[0] for c in calls] == ["render", "v1", "gpu_model", "gpu_model", "bundled_model", "bundled_model"]
    round1, round2 = calls[2][1], calls[3][1]
    assert round1[round1.index("--work") + 1] == str(tmp_path / "round1") and "--stop-at" not in round1
    assert round2[round2.index("--seed-offset") + 1] == "20000000" and round2[round2.index("--stop-at") + 1] == "1025"
    assert [c[1][c[1].index("--step") + 1] for c in calls[4:]] == ["calibrate", "eval"]
    assert all(c[1][c[1].index("--trained") + 1] == str(tmp_path / "round2" / "model") for c in calls[4:])
    calls.clear()
    g.main(["--work", str(tmp_path)])  # everything done: nothing runs again
    assert calls == []


def _truth_and_guess(rng, lo: float, hi: float, count: int = 3):
    """(ground truth, prediction) 16x32 depth pairs: truth in 0.5-30 m with pixels without ground truth (0) and
    beyond the 100 m cap; the prediction is the truth times a factor in [lo, hi] per pixel."""
    import numpy as np

    pairs = []
    for _ in range(count):
        gt = rng.uniform(0.5, 30, (16, 32)).astype(np.float32)
        gt[0, :5] = 0  # no ground truth
        gt[1, :3] = 150  # beyond the cap
        pairs.append((gt, gt * rng.uniform(lo, hi, gt.shape).astype(np.float32)))
    return pairs


def test_calibration_scores_each_threshold_and_scale_as_dap_eval_does():
    """The calibrate step's grid (range threshold x depth scale) gives, in each cell, the mean of `dap eval`'s
    per-image metric AbsRel of the masked, scaled prediction."""
    import numpy as np

    from dap.evaluation import compute_metrics
    from dap.inference import apply_range_mask

    e = _experiment("bundled_model")
    rng = np.random.default_rng(0)
    samples = [(pred, rng.random((16, 32)).astype(np.float32), gt) for gt, pred in _truth_and_guess(rng, 0.6, 1.6)]
    thresholds, scales = (0.5, 0.9, 1.5), (0.8, 1.0, 1.25)
    table = e.calibration_table(samples, thresholds, scales, 100.0)
    for i, t in enumerate(thresholds):
        for j, s in enumerate(scales):
            want = np.mean([compute_metrics(apply_range_mask(d * s, p >= t, 100.0), g, max_depth=100.0)["abs_rel"]
                            for d, p, g in samples])
            assert abs(table[i, j] - want) < 1e-6, (t, s)
    assert 1.0 in e.SCALES and min(e.SCALES) < 0.8 and max(e.SCALES) > 1.2


def test_latitude_fit_undoes_a_bias_by_band_and_scores_as_dap_eval_does():
    """The calibrate step's latitude profile: a prediction 1.25x too far in the top half and 0.8x too near in the
    bottom half gets factors 0.8 and 1.25 (exact where the noise is small), masked pixels cost the same whatever
    the factor; and `mean_abs_rel` with a profile is `dap eval`'s AbsRel of depth times the interpolated rows."""
    import numpy as np
    import torch

    from dap.evaluation import compute_metrics
    from dap.inference import apply_range_mask
    from dap.models.dap import latitude_factors

    e = _experiment("bundled_model")
    samples = []
    for gt, pred in _truth_and_guess(np.random.default_rng(0), 0.99, 1.01):
        pred[:8] *= 1.25
        pred[8:] *= 0.8
        prob = np.zeros_like(gt)
        prob[15, :4] = 1.0  # marked out of range
        samples.append((pred, prob, gt))
    factors = tuple(round(0.7 + 0.01 * i, 2) for i in range(71))
    assert e.fit_latitude_scale(samples, 2, 0.5, factors, 100.0) == [0.8, 1.25]
    assert e.fit_latitude_scale(samples, 4, 0.5, factors, 100.0) == [0.8, 0.8, 1.25, 1.25]
    profile = (0.8, 1.1, 1.25)
    rows = latitude_factors(profile, 16, torch.zeros(1, dtype=torch.float64)).reshape(16, 1).numpy()
    want = np.mean([compute_metrics(apply_range_mask(d * rows, p >= 0.5, 100.0), g, max_depth=100.0)["abs_rel"]
                    for d, p, g in samples])
    assert abs(e.mean_abs_rel(samples, 0.5, profile, 100.0) - want) < 1e-6
    unscaled = e.calibration_table(samples, (0.5,), (1.0,), 100.0)[0, 0]
    assert abs(e.mean_abs_rel(samples, 0.5, (), 100.0) - unscaled) < 1e-6


def test_scale_by_latitude_finds_a_ceiling_that_is_too_far():
    """The eval step's diagnostic: a prediction 1.4x too far in the top quarter and right below gives bands
    (1.4, 1, 1, 1); pixels without ground truth (0, or 100 m and beyond) do not count."""
    import numpy as np

    e = _experiment("bundled_model")
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3):
        gt = rng.uniform(1, 10, (32, 64)).astype(np.float32)
        pred = gt.copy()
        pred[:8] *= 1.4
        gt[8:10] = 0  # no ground truth: the prediction there is ignored
        pred[8:10] = 500.0
        gt[30:] = 150.0  # beyond the cap
        pairs.append((pred, gt))
    np.testing.assert_allclose(e.scale_by_latitude(pairs), [1.4, 1.0, 1.0, 1.0], rtol=1e-5)
    np.testing.assert_allclose(e.scale_by_latitude([(2 * gt, gt) for _, gt in pairs], bands=2), [2.0, 2.0])


def test_install_is_refused_when_any_held_out_set_got_worse(tmp_path, monkeypatch):
    """Issue #13's rule: the new bundled model may not be worse than v1 on any held-out synthetic set; the install
    step checks results.json and leaves the bundled model alone when it is."""
    import argparse
    import json


    e = _experiment("bundled_model")

    def metrics(abs_rel):
        return {"protocols": {"metric": {"per_image_mean": {"abs_rel": abs_rel}}}}

    results = {"v1": {name: metrics(0.30) for name in e.EVAL_SETS},
               "new": {name: metrics(0.20) for name in e.EVAL_SETS}}
    assert e.regressions(results) == []
    results["new"]["val_indoor"] = metrics(0.3001)
    assert e.regressions(results) == ["val_indoor: 0.3001 vs v1 0.3000"]
    (tmp_path / "results.json").write_text(json.dumps({"synthetic": results}))
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / "model.safetensors").write_text("old")
    (tmp_path / "calibrated").mkdir()
    (tmp_path / "calibrated" / "model.safetensors").write_text("new")
    monkeypatch.setattr(e, "BUNDLED", bundled)
    with pytest.raises(SystemExit, match=r"install refused: .*val_indoor: 0.3001 vs v1 0.3000"):
        e.step_install(argparse.Namespace(work=tmp_path))
    assert (bundled / "model.safetensors").read_text() == "old"
    results["new"]["val_indoor"] = metrics(0.25)
    (tmp_path / "results.json").write_text(json.dumps({"synthetic": results}))
    e.step_install(argparse.Namespace(work=tmp_path))
    assert (bundled / "model.safetensors").read_text() == "new"


def test_near_ties_go_to_the_higher_range_threshold():
    """Masking is the riskier error on photographs: a threshold within THRESHOLD_TIE of the best wins if higher,
    with its own best scale; a clearly better lower threshold still wins."""
    import numpy as np

    e = _experiment("bundled_model")
    table = np.full((3, 3), 0.5)
    table[0, 1] = 0.200  # best cell: lowest threshold
    table[2, 0] = 0.200 + e.THRESHOLD_TIE / 2  # a near tie at the highest threshold, another scale
    assert e.pick_threshold_and_scale(table) == (2, 0)
    table[2, 0] = 0.200 + e.THRESHOLD_TIE * 2
    table[1, 2] = 0.201
    assert e.pick_threshold_and_scale(table) == (1, 2)
    table[1, 2] = 0.3
    assert e.pick_threshold_and_scale(table) == (0, 1)


def test_doors_and_walls_give_the_camera_height_and_the_ceiling_ratio_of_a_known_room():
    """experiments/bundled_model.py's door_geometry and wall_ratio, on rows read off an analytic box room (camera
    1.2 m above the floor, 1.5 m below the ceiling) the way they are read off photographs: the rows where the wall
    in front meets the ceiling and the floor, and the row at a door's height of 2 m."""
    import numpy as np
    import torch

    from conftest import box_room_depth
    from dap import geometry

    e = _experiment("bundled_model")
    h, w = 512, 1024
    depth = box_room_depth(h, w).astype(np.float64)
    rays = geometry.erp_rays(h, w, dtype=torch.float64).numpy()
    column = int(np.argmin(depth[h // 2]))  # the wall nearest the camera, seen squarely
    y = depth[:, column] * rays[:, column, 1]  # height of each row's point, downwards
    on_wall = np.flatnonzero((y > -1.5 + 1e-6) & (y < 1.2 - 1e-6))
    ceiling_row, floor_row = on_wall[0] - 0.5, on_wall[-1] + 0.5  # the edges lie between rows
    assert e.wall_ratio(ceiling_row, floor_row, h) == pytest.approx(1.5 / 1.2, rel=0.02)
    door_top = int(np.argmin(np.abs(y + (2.0 - 1.2))))  # 2 m above the floor, 0.8 m above the camera
    wall, camera = e.door_geometry(door_top, floor_row, 2.0, h)
    horizontal = float(depth[h // 2, column] * np.hypot(rays[h // 2, column, 0], rays[h // 2, column, 2]))
    assert wall == pytest.approx(horizontal, rel=0.02) and camera == pytest.approx(1.2, rel=0.02)


def test_an_experiment_folder_holds_one_experiment_its_settings_and_a_rerun_step_redoes_the_later_ones(tmp_path):
    """experiments/*.py share <work>/experiment.json: a folder of another experiment passed for done (bundled_model.py
    skipped its render because data_in_the_loop.py had rendered other sets there); data rendered with other settings
    was reused under the new ones (results.md named the new count and size); a forced calibrate left the old eval
    recorded, so --install judged the new model on the old model's numbers."""
    import json

    state = _experiment().State
    work = tmp_path / "w"
    work.mkdir()
    steps = ("render", "calibrate", "eval", "install")
    s = state(work, "bundled_model", steps)
    for step in ("render", "calibrate", "eval"):
        s.mark(step, {"n": 1})
    s = state(work, "bundled_model", steps)
    assert [k for k in steps if s.done(k)] == ["render", "calibrate", "eval"]
    s.mark("calibrate", {"n": 2})  # again: its evaluation is of the model it replaced
    assert [k for k in steps if state(work, "bundled_model", steps).done(k)] == ["render", "calibrate"]
    with pytest.raises(SystemExit, match="holds a run of experiments/bundled_model.py"):
        state(work, "data_in_the_loop", steps)

    d = tmp_path / "d"
    d.mkdir()
    state(d, "data_in_the_loop", steps, {"count": 60, "resolution": "64x128"}).mark("render", {})
    state(d, "data_in_the_loop", steps, {"count": 60, "resolution": "64x128"})  # the same: resumed
    with pytest.raises(SystemExit, match=r"other settings \(count 60 -> 6000, resolution '64x128' -> '256x512'\)"):
        state(d, "data_in_the_loop", steps, {"count": 6000, "resolution": "256x512"})

    old = tmp_path / "old"  # written before experiments were named: its steps, taken as this experiment's
    old.mkdir()
    (old / "experiment.json").write_text(json.dumps({"render": {}, "calibrate": {}}))
    s = state(old, "bundled_model", steps, {"x": 1})
    assert s.done("calibrate") and not s.done("eval")
    s.mark("eval", {})
    assert json.loads((old / "experiment.json").read_text()) == {
        "experiment": "bundled_model", "settings": {"x": 1}, "steps": {"render": {}, "calibrate": {}, "eval": {}}}


def test_data_in_the_loop_trains_on_the_data_folder_it_renders_and_refuses_steps_out_of_order(tmp_path):
    """--data moved only the render step's output and eval's input: stage 1 and the discriminator read
    configs/default_model.yaml's data/default_model (a traceback, or other data than eval without a word); --step
    seeds before the size step was KeyError: 'size'."""
    e = _experiment()
    args = e.parse(["--work", str(tmp_path / "w"), "--data", str(tmp_path / "d"), "--seeds", "0"])
    cfg = e.curate_config(args, 0, None)
    assert [s.path for s in cfg.labeled] == [str(tmp_path / "d" / "train")]
    assert [s.path for s in cfg.discriminator.data] == [str(tmp_path / "d" / "val_disc")]
    mine = e.parse(["--work", str(tmp_path / "w"), "--data", str(tmp_path / "d"),
                    "--curate-set", f"labeled=[{{kind: shards, path: {tmp_path / 'mine'}}}]"])
    assert [s.path for s in e.curate_config(mine, 0, None).labeled] == [str(tmp_path / "mine")]  # given: kept
    for step, needs in (("seeds", "size"), ("eval", "seeds"), ("export", "seeds")):
        with pytest.raises(SystemExit, match=f"the {step} step needs the {needs} step's results"):
            e.main(["--work", str(tmp_path / "w"), "--data", str(tmp_path / "d"), "--step", step])


def test_an_experiment_script_says_a_bad_argument_in_one_line():
    """A path that is no model, or a missing file, was a traceback ending in the message (experiments/*.py)."""
    import subprocess

    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "levelling.py"), "--model", "/nonexistent"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("levelling.py: error: checkpoint /nonexistent does not exist"), out.stderr
