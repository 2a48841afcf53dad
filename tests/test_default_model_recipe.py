"""The default-model recipe (configs/default_model.yaml + experiments/data_in_the_loop.py) builds valid stage
configs, and its model fits the issue's size limit (<= 40 MB as float16)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _experiment():
    spec = importlib.util.spec_from_file_location("data_in_the_loop", ROOT / "experiments" / "data_in_the_loop.py")
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
