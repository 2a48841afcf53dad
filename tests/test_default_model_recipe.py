"""The recipes of the default model: configs/default_model.yaml + experiments/data_in_the_loop.py build valid stage
configs and their model fits the issue's size limit (<= 40 MB as float16); configs/bundled_stage{1,2}.yaml chain."""

import importlib.util
import sys
from pathlib import Path

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



def test_bundled_model_recipe_chains_its_stages():
    """configs/bundled_stage{1,2}.yaml (experiments/bundled_model.py): stage 1 continues the first bundled model,
    stage 2 continues stage 1 at a working resolution of 256x512, both on the data the script renders, with the
    range-mask loss that does not up-weight the rare out-of-range class."""
    from dap.train import load_config

    s1, s2 = (load_config(ROOT / "configs" / f"bundled_stage{i}.yaml") for i in (1, 2))
    assert s1.model.init == "./v1" and s2.model.init == "runs/stage1/final"
    assert [s.path for s in s1.data.sources] == [s.path for s in s2.data.sources] == ["data/indoor", "data/outdoor"]
    assert (s2.data.height, s2.data.width) == tuple(s2.model.overrides["default_resolution"]) == (256, 512)
    assert s1.loss.mask_pos_weight == s2.loss.mask_pos_weight == 1.0
    e = _experiment("bundled_model")
    assert {name for name, *_ in e.SETS} >= {"indoor", "outdoor", *e.EVAL_SETS, *e.CAL_SETS}
    ranges = {name: range(seed, seed + count) for name, _, _, seed, count in e.SETS}
    for name in ("indoor", "outdoor", *e.CAL_SETS):  # no training or calibration scene is also evaluated
        for other, r in ranges.items():
            assert other == name or not set(ranges[name]) & set(r), (name, other)
