"""dap.train: configs, deterministic mixture sampling, overfitting, DDP (2 gloo processes), exact resume,
crash-safe checkpoints. Tiny model, 32x64 panoramas."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from dap import geometry
from dap import train as T
from dap.errors import CheckpointError, ConfigError, DatasetLayoutError
from dap.models import load_model
from dap.train.checkpoints import RESUME_KEYS
from dap.train.config import read_yaml_mapping

ROOT = Path(__file__).resolve().parents[1]

# 32x64 analytic rooms, every step logged; no validation/checkpoints unless a test asks.
BASE = [
    "data.height=32", "data.width=64", "data.batch_size=2", "data.sources.0.size=8", "run.log_every=1",
    "run.val_every=0", "run.ckpt_every=0", "run.progress=false", "run.device=cpu",
    "optim.lr_head=1e-3", "optim.lr_backbone=1e-4",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_with(*overrides: str) -> T.TrainConfig:
    return T.load_config(None, [*BASE, *overrides])


def losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["loss/total"] for h in history}


def read_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss/total"] for r in rows if "loss/total" in r}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------- configs
def test_shipped_configs_load():
    tiny = T.load_config(ROOT / "configs/tiny_cpu.yaml")
    paper = T.load_config(ROOT / "configs/dap_vitl_paper.yaml")
    assert tiny.model.name == "dap_tiny" and (tiny.data.height, tiny.data.width) == (64, 128)
    assert paper.model.name == "dap_vitl" and (paper.data.height, paper.data.width) == (512, 1024)
    # the paper's optimiser, learning rates and loss weights
    assert paper.optim.optimizer == "adam"
    assert (paper.optim.lr_backbone, paper.optim.lr_head) == (5e-6, 5e-5)
    lc = paper.loss
    assert (lc.w_silog, lc.w_df, lc.w_grad, lc.w_normal, lc.w_pts, lc.w_mask) == (1.0, 0.4, 5.0, 2.0, 2.0, 2.0)
    assert abs(sum(s.ratio for s in paper.data.sources) - 1.0) < 1e-9


def test_overrides_reach_nested_and_list_entries(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr_head: 3e-4}\ndata: {sources: [{kind: rooms, ratio: 2}, {kind: rooms}]}\n")
    cfg = T.load_config(path, ["data.sources.1.ratio=0.5", "loss.mask_threshold=20", "optim.betas=[0.8, 0.9]"])
    assert cfg.optim.lr_head == 3e-4 and isinstance(cfg.optim.lr_head, float)  # YAML reads 3e-4 as a string
    assert [s.ratio for s in cfg.data.sources] == [2.0, 0.5]
    assert cfg.loss.mask_threshold == 20.0 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.lr_backbone == 5e-6  # untouched defaults stay the paper's


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["optim.lr_heads=1"], ValueError, r"^--set optim.lr_heads=1: config optim: unknown keys \[.lr_heads.\]"),
        (["data.sources.3.ratio=1"], ValueError, "no such config entry"),
        (["loss.mask_threshold=150"], ValueError, "10, 20, 50, 100"),
        (["optim.optimizer=sgd"], ValueError, "adam or adamw"),
        (["data.height=48", "data.width=64"], ConfigError, r"data.width must be twice data.height .* got 48x64; e.g. "
         r"data.height=48 data.width=96"),
        (["lr"], ValueError, "key=value"),
        (["data.exposure=0.5"], ValueError, r"data.exposure is the largest exposure gain, at least 1"),
        (["data.highlights=-1"], ValueError, r"data.highlights is a number of spots, 0 \(off\) or more"),
        (["data.vertical_gain=0.5"], ValueError, r"data.vertical_gain is the largest gain .* at least 1"),
        (["data.scale_jitter=0.5"], ValueError, r"data.scale_jitter is the largest factor .* 1 \(off\) to 4"),
    ],
)
def test_bad_configs_are_rejected(overrides, error, match):
    with pytest.raises(error, match=match):
        T.load_config(None, overrides)


def test_unknown_yaml_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run: {step: 10}\n")
    with pytest.raises(ValueError, match=r"run: unknown keys \['step'\]"):
        T.load_config(path)
    # an error that --set brought in names the settings beside the file
    good = tmp_path / "good.yaml"
    good.write_text("run: {steps: 2}\n")
    with pytest.raises(ValueError, match=rf"^{good} with --set run.steps=1, --set optim.lr=1: config optim: unknown"):
        T.load_config(good, ["run.steps=1", "optim.lr=1"])


def test_lr_schedule():
    f = T.lr_factor
    assert [f(s, 100, 4, "cosine", 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4, 100, 4, "cosine", 0.0) == 1.0
    assert f(52, 100, 4, "cosine", 0.0) == pytest.approx(0.5)  # half-way through the decay
    assert f(100, 100, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert f(52, 100, 4, "linear", 0.0) == pytest.approx(0.5)
    assert f(99, 100, 0, "constant", 0.0) == 1.0


# ---------------------------------------------------------------------------------------------- data
def test_mixture_sampler_is_pure_disjoint_and_follows_ratios():
    def sampler(rank, world=2, start=0):
        return T.MixtureSampler([50, 30], [3.0, 1.0], seed=7, rank=rank, world=world, batch=4, start=start,
                                steps=400)

    a0, a1 = list(sampler(0)), list(sampler(1))
    assert list(sampler(0, start=123))[0] == a0[123]  # a batch depends on the step only: resume needs no state
    assert a0[5] != list(T.MixtureSampler([50, 30], [3.0, 1.0], seed=8, rank=0, world=2, batch=4, start=0,
                                          steps=400))[5]
    # global position n = (step * world + rank) * batch + i; within a source, the positions of one epoch
    # (n // len) read distinct panoramas: no rank reads what another reads in the same epoch
    seen: dict[tuple[int, int], set[int]] = {}
    for step in range(400):
        for rank, batches in enumerate((a0, a1)):
            for i, (j, idx, _) in enumerate(batches[step]):
                n = (step * 2 + rank) * 4 + i
                epoch = seen.setdefault((j, n // [50, 30][j]), set())
                assert idx not in epoch
                epoch.add(idx)
    keys = [k for step in range(400) for b in (a0[step], a1[step]) for k in b]
    assert np.mean([k[0] == 0 for k in keys]) == pytest.approx(0.75, abs=0.03)  # ratios 3:1
    counts = np.bincount([k[1] for k in keys if k[0] == 0], minlength=50)
    assert counts.min() > 0.6 * counts.mean()  # every panorama is used, about equally often
    assert len({k[2] for k in keys}) == len(keys)  # every position gets its own augmentation seed


def test_training_sample_from_loader_layouts():
    depth = np.array([[0.0, 2.0, np.nan, 5.0], [1.0, 1.0, 1.0, 150.0]], np.float32)
    item = {"rgb": np.full((2, 4, 3), 0.5, np.float32), "depth": depth}
    s = T.to_training_sample(item)
    assert s["rgb"].shape == (3, 2, 4) and s["depth"].shape == (1, 2, 4)
    assert s["valid"][0].tolist() == [[False, True, False, True], [True, True, True, True]]
    assert not s["out_of_range"].any() and s["depth"][0, 0, 2] == 0  # NaN -> 0, invalid
    sky = T.to_training_sample(item, invalid_is_sky=True)["out_of_range"][0]
    assert sky.tolist() == [[True, False, True, False], [False] * 4]
    r = T.resize_sample(s, 4, 8)
    assert r["depth"].shape == (1, 4, 8) and set(r["depth"].unique().tolist()) <= {0.0, 1.0, 2.0, 5.0, 150.0}


def test_validation_scores_what_dap_eval_scores(monkeypatch):
    """Training validation and `dap eval` share one path (seam padding, precision, range cap): same AbsRel. In fp32,
    `dap eval`'s default, also where "auto" means bf16 (a GPU, or a CPU whose bf16 timed faster in that process):
    validation ran "auto" there, 1.4% off `dap eval`'s AbsRel."""
    from dap import inference
    from dap.evaluation import EvalConfig, evaluate, model_predictor
    from dap.models import create_model

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(inference, "cpu_bf16_speedup", lambda: 4.0)  # "auto" is bf16 here now

    torch.manual_seed(0)
    model = create_model("dap_tiny").eval()
    cfg = cfg_with("data.height=64", "data.width=128")
    src = T.SourceConfig(kind="rooms", size=3, seed=7)
    val = T.ValidationSet([T.build_source(src, 64, 128)], [src], 64, 128, limit=3)
    metrics, panel = T.validate(model, val, cfg, T.Dist(), seam_pad=1 / 8)
    samples = [{"name": str(k), "rgb": val[k]["rgb"].permute(1, 2, 0).numpy(),
                "depth": torch.where(val[k]["valid"], val[k]["depth"], 0)[0].numpy()} for k in range(len(val))]
    summary = evaluate(samples, model_predictor(model, resolution=(64, 128), seam_pad=1 / 8),
                       config=EvalConfig(max_depth=cfg.loss.max_depth, range_cap=model.cfg.max_depth, panels=0))
    scores = summary["protocols"]["metric"]["per_image_mean"]
    assert summary["n_images"] == 3 and not summary["skipped"]
    for key in ("abs_rel", "rmse", "delta1"):
        assert metrics[key] == pytest.approx(scores[key], rel=1e-6), key
    # Without the seam padding `dap eval` applies, the numbers would differ.
    plain, _ = T.validate(model, val, cfg, T.Dist(), seam_pad=0)
    assert plain["abs_rel"] != pytest.approx(scores["abs_rel"], rel=1e-6)
    assert panel.shape == (256, 5 * 512, 3)  # RGB | GT | prediction | error | range probability


def test_rooms_dataset_depth_is_exact():
    ds = T.RoomsDataset(4, 32, 64, seed=3)
    for i in range(4):
        s = ds[i]
        assert torch.equal(s["depth"], ds[i]["depth"])  # deterministic
        d = s["depth"][0].double()
        # points of one floor/wall face share a coordinate: the floor (lowest row, looking down) is a plane y = h
        pts = geometry.depth_to_points(d)
        floor = pts[-1, :, 1]
        assert torch.allclose(floor, floor[0], atol=1e-4) and floor[0] > 0  # y down: floor below the camera
        assert (s["valid"] == (s["depth"] > 0)).all() and (s["out_of_range"] == ~s["valid"]).all()


# -------------------------------------------------------------------------------------------- training
def test_tiny_model_overfits_one_batch(tmp_path):
    cfg = cfg_with("data.sources.0.size=2", "data.augment=false", "run.steps=80", "optim.lr_head=2e-3",
                   "optim.lr_backbone=5e-4", "optim.warmup_steps=5", "optim.schedule=cosine",
                   "optim.min_lr_ratio=0.01")
    result = T.train(cfg, tmp_path / "run")
    curve = [h["loss/total"] for h in result.history]
    assert len(curve) == 80
    print(f"overfit: loss {curve[0]:.3f} -> {np.mean(curve[-3:]):.3f} ({curve[0] / np.mean(curve[-3:]):.1f}x)")
    assert curve[0] / np.mean(curve[-3:]) >= 10, curve
    assert result.finished and (tmp_path / "run/final/model.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    result = T.train(cfg_with("run.steps=2", "run.ckpt_every=1", "optim.ema_decay=0.9"), out)
    torch.save(result.model.state_dict(), Path(out) / f"rank{rank}.pt")
    if rank == 0:
        torch.save(T.build_model(T.load_config(None, BASE)).state_dict(), Path(out) / "init.pt")


def test_two_process_gloo_run_keeps_ranks_identical(tmp_path):
    out = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    w0, w1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert_same_weights(w0, w1)
    init = torch.load(out / "init.pt", weights_only=True)
    assert any(not torch.equal(w0[k], init[k]) for k in init)  # it did train
    ckpt = T.load_checkpoint(out / "checkpoints/step_00000002.pt")
    assert ckpt["data"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert (out / "final/model.safetensors").is_file()


def test_a_loader_bound_run_logs_its_wait_and_says_so_once(tmp_path, monkeypatch, capsys):
    """Training that spends most of its time waiting for the next batch logs that share (data_wait_share) and says
    once on stderr which setting to change; the first logged window (loader start-up) is not judged."""
    from dap.train import data as train_data

    make = train_data.MixtureDataset.__getitem__

    def slow(self, key):
        time.sleep(0.25)
        return make(self, key)

    monkeypatch.setattr(train_data.MixtureDataset, "__getitem__", slow)
    result = T.train(cfg_with("run.steps=4", "data.num_workers=0"), tmp_path / "run")
    shares = [h["data_wait_share"] for h in result.history]
    assert len(shares) == 4 and all(0.3 < s <= 1 for s in shares), shares
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["data_wait_share"] for r in rows] == shares
    err = capsys.readouterr().err
    assert err.count("the data loader kept training waiting") == 1 and "data.num_workers=0" in err
    assert "up to step 2 " in err


def test_resume_continues_exactly(tmp_path):
    # augmentation, EMA, warm-up + cosine and a mixture of two sources: every piece of state matters
    cfg = cfg_with("run.steps=4", "run.ckpt_every=2", "optim.ema_decay=0.5", "optim.warmup_steps=2",
                   "data.sources=[{kind: rooms, size: 8}, {kind: rooms, size: 5, seed: 9, ratio: 0.5}]",
                   "data.scale_jitter=2")
    full = T.train(cfg, tmp_path / "full")
    part = T.train(cfg, tmp_path / "part", stop_at=2)
    assert (part.step, part.finished) == (2, False) and not (tmp_path / "part/final").exists()
    rest = T.train(cfg, tmp_path / "part", resume=True)
    assert rest.step == 4 and [h["step"] for h in rest.history] == [3, 4]
    assert read_losses(tmp_path / "part") == read_losses(tmp_path / "full")  # bitwise equal floats
    assert losses(rest.history) == {s: v for s, v in losses(full.history).items() if s > 2}
    assert_same_weights(rest.model.state_dict(), full.model.state_dict())
    a = T.load_checkpoint(tmp_path / "full/checkpoints/step_00000004.pt")
    b = T.load_checkpoint(tmp_path / "part/checkpoints/step_00000004.pt")
    assert_same_weights(a["model"], b["model"])
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = cfg_with("run.steps=2", "run.ckpt_every=1", "run.keep_last=1", "run.val_every=2",
                   "data.val=[{kind: rooms, size: 2, seed: 99}]", "data.val_samples=2")
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the step-2 checkpoint: write half a file, then die
            Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        T.train(cfg, out)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001.pt"]  # no partial file
    assert T.load_checkpoint(out / "checkpoints/step_00000001.pt")["step"] == 1
    result = T.train(cfg, out, resume=True)  # and training picks up from it
    assert result.step == 2 and [h["step"] for h in result.history] == [2]
    assert [p.name for p in T.list_checkpoints(out)] == ["step_00000002.pt"]  # keep_last=1
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss/total" in r] == [1, 2]  # the crashed run's step 2 was redone
    val = [r for r in rows if "val/abs_rel" in r]
    assert [v["step"] for v in val] == [2] and np.isfinite(val[0]["val/rmse"]) and 0 <= val[0]["val/mask_iou"] <= 1
    assert list((out / "tb").iterdir())


def test_fine_tune_from_our_checkpoint_with_frozen_backbone(tmp_path):
    T.train(cfg_with("run.steps=1"), tmp_path / "base")
    base = load_model(tmp_path / "base/final")
    tuned = T.train(cfg_with("run.steps=2", f"model.init={tmp_path / 'base/final'}", "optim.freeze_backbone=true",
                             "optim.lr_head=1e-2"), tmp_path / "tuned").model
    before, after = base.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("depth_head."))


def test_torchrun_cli_two_processes(tmp_path):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dap.train",
           "--config", str(ROOT / "configs/tiny_cpu.yaml"),
           "--out", str(tmp_path / "run"), "--set", "data.sources.0.kind=rooms", "--set", "data.val.0.kind=rooms",
           "--set", "data.val.0.seed=99", *(x for o in BASE[:4] for x in ("--set", o)),
           "--set", "run.steps=2", "--set", "run.val_every=2", "--set", "data.val_samples=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "finished at step 2" in proc.stdout
    ckpt = T.load_checkpoint(tmp_path / "run/checkpoints/step_00000002.pt")
    assert ckpt["data"]["world_size"] == 2 and ckpt["config"]["model"]["name"] == "dap_tiny"
    assert load_model(tmp_path / "run/final").cfg.name == "dap_tiny"


def test_damaged_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "step_00000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(T.CheckpointError, match="Delete it"):
        T.load_checkpoint(bad)
    torch.save({"foo": 1}, bad)  # a torch file, but not ours
    with pytest.raises(T.CheckpointError, match="is not a training checkpoint of dap train \\(it lacks step, model\\)"):
        T.load_checkpoint(bad)
    torch.save({"step": 1, "model": {}}, bad)  # weights alone: enough to export, not to resume
    assert T.load_checkpoint(bad)["step"] == 1
    with pytest.raises(T.CheckpointError, match="it lacks optimizer, scheduler, data, rng"):
        T.load_checkpoint(bad, needs=RESUME_KEYS)


def test_ema_warms_up_so_the_initial_weights_fade():
    from torch.optim.swa_utils import AveragedModel

    from dap.train import ema_decay_at, ema_update

    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10_000, 0.999) == 0.999
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = AveragedModel(net, avg_fn=ema_update(0.999))
    ema.update_parameters(net)  # first update copies the initial weights (0)
    with torch.no_grad():
        net.weight.fill_(1.0)
    weight_of_init = 1.0
    for n in range(1, 2001):
        ema.update_parameters(net)
        weight_of_init *= ema_decay_at(n, 0.999)
    assert float(ema.module.weight.detach()) == pytest.approx(1.0 - weight_of_init, abs=1e-5)
    assert weight_of_init < 0.01 < 0.999 ** 2000


# ------------------------------------------------------------------------------------ run folders
def test_fresh_run_into_an_existing_run_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    cfg = cfg_with("run.steps=2", "run.ckpt_every=1")
    T.train(cfg, out)
    # a model trained from scratch works at the size it was trained at (it was saved with the paper's 512x1024)
    assert load_model(out / "final").cfg.default_resolution == (cfg.data.height, cfg.data.width)
    # the run folder itself names its model; a checkpoint file is its model at that step (was refused, and the
    # advice to start from a checkpoint with model.init did not work)
    assert load_model(out).state_dict().keys() == load_model(out / "final").state_dict().keys()
    assert_same_weights(load_model(out / "checkpoints" / "step_00000002.pt").state_dict(),
                        load_model(out / "final").state_dict())
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(T.RunExistsError, match="--resume"):
        T.train(cfg_with("run.steps=3", "optim.lr_head=5e-4"), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    T.train(cfg_with("run.steps=1"), tmp_path / "empty_is_fine")  # a missing or empty folder is fine
    # --resume of a finished run whose checkpoints were deleted (to free disk) started over, replacing final/
    import shutil

    shutil.rmtree(out / "checkpoints")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(T.RunExistsError, match="holds a trained model .final/. but no checkpoint to resume its run"):
        T.train(cfg_with("run.steps=2", "run.ckpt_every=1"), out, resume=True)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    (tmp_path / "made").mkdir()
    T.train(cfg_with("run.steps=1"), tmp_path / "made")


def test_resume_survives_a_cut_off_metrics_line_and_stale_temporaries(tmp_path):
    out = tmp_path / "run"
    cfg = cfg_with("run.steps=3", "run.ckpt_every=1")
    T.train(cfg, out, stop_at=2)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss/to')  # killed mid-write
    stale = out / "checkpoints/.step_00000003.pt.0123456789ab.tmp.pt"
    stale.write_bytes(b"half")
    result = T.train(cfg, out, resume=True)
    assert result.step == 3 and not stale.exists()
    assert sorted(read_losses(out)) == [1, 2, 3]


def test_depth_at_another_size_than_an_rgb_at_the_training_size_is_resized():
    """resize_sample returned early when the RGB alone was at the training size: the loss then failed on
    (2, 1, 64, 128) against (2, 1, 32, 64)."""
    s = {"rgb": torch.rand(3, 64, 128), "depth": torch.rand(1, 32, 64) + 1,
         "valid": torch.ones(1, 32, 64, dtype=torch.bool), "out_of_range": torch.zeros(1, 32, 64, dtype=torch.bool)}
    out = T.resize_sample(s, 64, 128)
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {k: (64, 128) for k in s}
    assert out["rgb"] is s["rgb"]  # at size: as it is


def test_a_diverged_run_ends_with_a_message_not_a_traceback(tmp_path, capsys):
    """A NaN loss was an uncaught FloatingPointError whose advice, resume as it was, repeats the same NaN."""
    from dap.cli import main

    (tmp_path / "c.yaml").write_text("run: {steps: 6}\n")
    argv = ["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r"), *(f"--set={o}" for o in BASE),
            "--set=optim.lr_head=1e6", "--set=optim.lr_backbone=1e6", "--set=optim.grad_clip=0",
            "--set=optim.warmup_steps=0"]
    assert main(argv) == 2  # as every other refusal of a setting
    err = capsys.readouterr().err
    assert "Traceback" not in err and "dap train: error: loss is nan at step 1" in err
    assert "then resume with the new settings (--resume --set ...)" in err


def test_metrics_rows_are_json_with_null_for_missing_values(tmp_path):
    """A NaN metric (mask IoU with nothing out of range) was written as a bare NaN, which is not JSON."""
    from dap.train.checkpoints import append_metrics

    append_metrics(tmp_path / "m.jsonl", 3, {"val/mask_iou": float("nan"), "loss/total": np.float64(0.5)})
    line = (tmp_path / "m.jsonl").read_text()
    assert "NaN" not in line and json.loads(line) == {"step": 3, "val/mask_iou": None, "loss/total": 0.5}


def test_a_run_redone_from_step_0_keeps_one_tensorboard_point_per_step(tmp_path):
    """A run killed before its first checkpoint and resumed starts over; TensorBoard showed its first steps twice
    (events were purged only after a checkpoint's step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    T.train(cfg_with("run.steps=2"), out)
    shutil.rmtree(out / "final")  # as if killed after step 2, before its first checkpoint
    shutil.rmtree(out / "checkpoints")
    T.train(cfg_with("run.steps=3"), out, resume=True)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3]
    # the redone run's events file says so (a session restart at step 1), as a resumed one's says its step: readers
    # that do not infer it from steps going back (TensorBoard's --purge_orphaned_data false) rely on it
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    newest = sorted((out / "tb").iterdir())[-1]
    starts = [e.step for e in EventFileLoader(str(newest)).Load()
              if e.HasField("session_log") and e.session_log.status == SessionLog.START]
    assert starts == [1]


def test_a_users_copy_in_checkpoints_is_neither_resumed_from_nor_pruned(tmp_path):
    """step_backup.pt sorted as the newest: the run resumed from it and crashed at its next save (int('backup'));
    step_2.pt sorted after step_00000004.pt, so the run went back to step 2."""
    out = tmp_path / "run"
    cfg = cfg_with("run.steps=5", "run.ckpt_every=1", "run.keep_last=2")
    T.train(cfg, out, stop_at=4)
    ckpts = out / "checkpoints"
    (ckpts / "step_backup.pt").write_bytes((ckpts / "step_00000004.pt").read_bytes())
    (ckpts / "step_00000003.pt").rename(ckpts / "step_3.pt")
    assert [p.name for p in T.list_checkpoints(out)] == ["step_3.pt", "step_00000004.pt"]
    assert T.train(cfg, out, resume=True).step == 5
    assert sorted(read_losses(out)) == [1, 2, 3, 4, 5]  # went on from step 4
    assert (ckpts / "step_backup.pt").exists()


def test_a_stopped_run_is_a_model_its_checkpoints_too(tmp_path):
    """A run stopped before its end (--stop-at, --time-limit) had no model to predict with or start from: its folder
    and each checkpoint now load, with the EMA weights where the run keeps an EMA (what validation and final/ use)."""
    out = tmp_path / "run"
    T.train(cfg_with("run.steps=4", "run.ckpt_every=1", "run.keep_last=2", "optim.ema_decay=0.9"), out, stop_at=3)
    assert not (out / "final").exists()
    model = load_model(out)
    assert model.checkpoint_info == {"format": "dap train checkpoint", "source": str(out / "checkpoints" /
                                     "step_00000003.pt"), "step": 3, "ema": True}
    ckpt = torch.load(out / "checkpoints" / "step_00000003.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    assert_same_weights(model.state_dict(), ema)
    assert not all(torch.equal(v, ckpt["model"][k]) for k, v in ema.items())  # the EMA, not the raw weights
    started = T.train(cfg_with("run.steps=1", f"model.init={out / 'checkpoints' / 'step_00000002.pt'}"),
                      tmp_path / "next")
    assert started.finished
    # its newest checkpoint cut short: the way on, not "download it again"
    newest = out / "checkpoints" / "step_00000003.pt"
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"the newest checkpoint of the run .*run, step_00000003.pt, cannot be "
                                              r"read: damaged, or cut short \(a kill, a full disk\). Delete it .*, or "
                                              r"pass the one before, .*step_00000002.pt$"):
        load_model(out)
    newest.write_bytes(data)
    # a checkpoint of a run that began from a model, written before checkpoints recorded the architecture
    del ckpt["model_config"]
    ckpt["config"]["model"]["init"] = "gone/final"
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="from before checkpoints recorded their model's architecture, of a run "
                                              "that started from gone/final"):
        load_model(tmp_path / "old.pt")


def test_resume_refuses_a_different_model_and_reports_other_changes(tmp_path, capsys):
    out = tmp_path / "run"
    T.train(cfg_with("run.steps=2", "run.ckpt_every=1"), out, stop_at=1)
    with pytest.raises(T.RunExistsError, match="model.overrides") as e:
        T.train(cfg_with("run.steps=3", "model.overrides={max_depth: 50.0}"), out, resume=True)
    assert "run.steps" not in str(e.value)  # the refusal names what cannot be resumed, not every change
    # a setting of inference, not architecture, is changed like any other (it was refused as a model change)
    result = T.train(cfg_with("run.steps=2", "run.ckpt_every=1", "optim.lr_head=5e-4",
                              "model.overrides={range_threshold: 0.7}"), out, resume=True)
    err = capsys.readouterr().err
    assert "optim.lr_head: 0.001 -> 0.0005" in err and "model.overrides.range_threshold: None -> 0.7" in err
    assert result.model.cfg.range_threshold == 0.7 and load_model(out).cfg.range_threshold == 0.7


def test_a_finished_run_extended_at_another_lr_trains_at_that_lr(tmp_path):
    out = tmp_path / "run"
    T.train(cfg_with("run.steps=2", "run.ckpt_every=1", "run.log_every=1"), out)  # cosine to 0 at step 2
    T.train(cfg_with("run.steps=4", "run.ckpt_every=1", "run.log_every=1", "optim.schedule=constant",
                     "optim.lr_head=0.01", "optim.lr_backbone=0.002", "optim.weight_decay=0.1"), out, resume=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: (r["lr/backbone"], r["lr/head"]) for r in rows if "lr/head" in r}
    assert lrs[3] == lrs[4] == (0.002, 0.01)  # not the old cosine's 0 nor the old peak
    ckpt = torch.load(sorted((out / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} == {0.1}
    with pytest.raises(CheckpointError, match="parameter groups.*optim.freeze_backbone changed"):
        T.train(cfg_with("run.steps=6", "optim.freeze_backbone=true"), out, resume=True)


def test_resuming_below_the_step_reached_or_validating_nothing_is_refused(tmp_path):
    out = tmp_path / "run"
    T.train(cfg_with("run.steps=2", "run.ckpt_every=1"), out)
    with pytest.raises(ConfigError, match=r"run.steps 1 is below step 2, which .*step_00000002.pt reached"):
        T.train(cfg_with("run.steps=1"), out, resume=True)
    with pytest.raises(ConfigError, match="data.val_samples is 0, so validation would score no panorama"):
        cfg_with("data.val=[{kind: rooms, size: 2}]", "run.val_every=1", "data.val_samples=0")


def test_a_config_without_data_says_what_it_trains_on(tmp_path, capsys):
    from dap.cli import main

    (tmp_path / "empty.yaml").write_text("")
    assert main(["train", "--config", str(tmp_path / "empty.yaml"), "--out", str(tmp_path / "run"), "--set",
                 "run.steps=1", *(f"--set={o}" for o in BASE if not o.startswith("data.sources"))]) == 0
    assert "gives no data.sources: training on the default, 1000 analytic boxy rooms" in capsys.readouterr().err


def test_a_section_given_twice_is_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("run:\n  steps: 3\n  log_every: 1\nrun:\n  steps: 2\n")
    with pytest.raises(ConfigError, match=r"at line 4, column 1 \(the key 'run' is given twice"):
        T.load_config(tmp_path / "c.yaml")
    # a merge key's keys may be overridden: that is what it is for
    (tmp_path / "m.yaml").write_text("x: &d {steps: 3, log_every: 1}\nrun:\n  <<: *d\n  steps: 2\n")
    assert read_yaml_mapping(tmp_path / "m.yaml", "config", "c.yaml")["run"] == {"steps": 2, "log_every": 1}


@pytest.mark.parametrize("override, problem", [
    ("data.sources=[{kind: shard, path: x}]", "data.sources[0].kind must be one of shards, folder"),
    ("data.sources=[{kind: shards}]", "data.sources[0] (kind shards) needs a path"),
    ("data.sources=[{kind: dataset, path: x, dataset: nosuch}]", "data.sources[0].dataset must be one of"),
    ("data.val=[{kind: bogus}]", "data.val[0].kind must be one of"),
    ("data.sources=[{kind: rooms, size: 0}]", "data.sources[0].size is the number of panoramas"),
    ("run.log_every=0", "run.log_every must be at least 1, got 0"),
    ("run.image_every=-1", "run.image_every must be a number >= 0, got -1"),
    ("data.sources=[{kind: rooms, seed: -5}]", "data.sources[0].seed is the first scene's seed, 0 or more, got -5"),
    ("data.sources=[{kind: pseudo, path: x, label_stage: stage9}]",
     "data.sources[0].label_stage is one of stage1, stage3, got 'stage9'"),
    ("model.overrides={vit: 3}", "config model.overrides.vit: expected a mapping, got 3"),  # was an AttributeError
    ("model.overrides={features: abc}", "config model.overrides.features: expected an integer, got 'abc'"),
    ("optim.min_lr_ratio=-2", "optim.min_lr_ratio is the final LR over the peak LR, 0 to 1, got -2"),
    ("optim.betas=[1.5, 0.999]", "optim.betas are Adam's two decay rates"),
    ("loss.w_silog=-5", "loss.w_silog is a loss term's weight"),
    ("loss.df_normalise=centered", "loss.df_normalise is one of centred, frobenius, gt_mean, got 'centered'"),
    # each trained something else without a word (a term silently 0), crashed the process or failed at step 1
    ("loss.max_depth=.inf", "loss.max_depth is a number of metres > 0, got inf"),
    ("loss.silog_lambda=5", "loss.silog_lambda is SILog's variance weight, 0 to 1 (above 1 the term is 0), got 5.0"),
    ("loss.min_depth_ratio=2", "loss.min_depth_ratio is the smallest depth over max_depth, between 0 and 1"),
    ("loss.grad_edge_threshold=.nan", "loss.grad_edge_threshold is a Sobel magnitude of log depth, >= 0, got nan"),
    ("loss.df_fov_deg=.nan", "loss.df_fov_deg is the distortion term's views' field of view"),  # was a segfault
    ("loss.df_fov_deg=0", "loss.df_fov_deg is the distortion term's views' field of view"),
    ("loss.df_view_size=-4", "loss.df_view_size is the views' size in pixels, 2 or more"),
    ("loss.df_sample_mode=foo", "loss.df_sample_mode is bilinear or nearest, got 'foo'"),
    ("loss.mask_pos_weight=-1", "loss.mask_pos_weight is the out-of-range class's weight, > 0"),
    ("loss.mask_max_pos_weight=.nan", "loss.mask_max_pos_weight is the largest balanced class weight, > 0"),
    ("loss={w_silog: 0, w_df: 0, w_grad: 0, w_normal: 0, w_pts: 0, w_mask: 0}",
     "loss.w_silog ... w_mask, every loss weight, are 0, so nothing would train"),
])
def test_config_values_are_checked_before_anything_runs(override, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        cfg_with(override)


def test_amp_bf16_autocasts_on_the_cpu_too():
    """amp: bf16 did nothing on a CPU (weights identical to amp: off), though asked for by name."""
    from dap.train.loop import _autocast

    cpu = torch.device("cpu")
    for amp, on in (("bf16", True), ("auto", False), ("off", False)):
        with _autocast(cpu, amp):
            assert torch.is_autocast_enabled("cpu") == on, amp


def test_set_reaches_into_an_empty_mapping():
    """--set model.overrides.vit.depth=4 was "no such config entry": only the whole mapping could be set."""
    assert T.load_config(None, ["model.overrides.vit.depth=4"]).model.overrides == {"vit": {"depth": 4}}
    with pytest.raises(ConfigError, match=r"config optim: unknown keys \['lr_heads'\]"):
        T.load_config(None, ["optim.lr_heads.x=1"])


def test_home_in_config_paths_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = T.load_config(None, ["data.sources=[{kind: shards, path: ~/synth}]", "model.init=~/runs/a"])
    assert cfg.data.sources[0].path == f"{tmp_path}/synth" and cfg.model.init == f"{tmp_path}/runs/a"


def test_amp_off_may_be_written_unquoted(tmp_path):
    """YAML reads `amp: off` (as the docs write it) as false: it was refused as "expected a string, got False"."""
    (tmp_path / "c.yaml").write_text("optim:\n  amp: off\n")
    assert T.load_config(tmp_path / "c.yaml").optim.amp == "off"



# ------------------------------------------------------------------------------------ silent paths
def test_validation_reports_images_without_depth_once(capsys):
    from dap.models import create_model

    torch.manual_seed(0)
    model = create_model("dap_tiny").eval()
    cfg = cfg_with()
    rooms = T.SourceConfig(kind="rooms", size=2, seed=7)
    empty = T.SourceConfig(kind="folder", path="pool/manifest.csv")
    no_depth = [{"rgb": np.full((32, 64, 3), 0.5, np.float32), "depth": np.zeros((32, 64), np.float32)}]
    val = T.ValidationSet([T.build_source(rooms, 32, 64), no_depth], [rooms, empty], 32, 64, limit=3)
    metrics, _ = T.validate(model, val, cfg, T.Dist())
    assert metrics["no_valid_depth"] == 1 and metrics["n_images"] == 3 and np.isfinite(metrics["abs_rel"])
    err = capsys.readouterr().err
    assert "1 of 3 validation images have no valid depth" in err
    assert "data.val[1] (kind=folder, path=pool/manifest.csv)" in err
    metrics, _ = T.validate(model, val, cfg, T.Dist())
    assert metrics["no_valid_depth"] == 1 and capsys.readouterr().err == ""  # said once per run


def test_resume_with_another_world_size_says_it_is_not_exact(tmp_path, capsys):
    out = tmp_path / "run"
    T.train(cfg_with("run.steps=2", "run.ckpt_every=1"), out, stop_at=1)
    path = out / "checkpoints/step_00000001.pt"
    ckpt = T.load_checkpoint(path)
    ckpt["rng"], ckpt["data"]["world_size"] = ckpt["rng"] * 2, 2  # as if written by 2 processes
    torch.save(ckpt, path)
    capsys.readouterr()
    assert T.train(cfg_with("run.steps=2", "run.ckpt_every=1"), out, resume=True).step == 2
    err = capsys.readouterr().err
    assert "holds RNG states for 2 processes, this run has 1" in err and "not bit-exact" in err
    assert err.count("RNG states") == 1


def test_model_settings_that_a_checkpoint_init_would_ignore(tmp_path, capsys):
    from dap.errors import ConfigError
    from dap.models import create_model, save_model

    save_model(create_model("dap_tiny"), tmp_path / "base")
    init = f"model.init={tmp_path / 'base'}"
    with pytest.raises(ConfigError, match=r"cannot change .*max_depth: 50.0 \(the checkpoint has 100.0"):
        T.build_model(cfg_with(init, "model.overrides={max_depth: 50.0}"))
    capsys.readouterr()
    # a misspelt setting was "cannot change the model loaded ... (the checkpoint has None)": an architecture conflict
    with pytest.raises(ConfigError, match=r"model.overrides: unknown keys \['range_treshold'\]; valid keys: .*"
                                          r"'range_threshold'"):
        T.build_model(cfg_with(init, "model.overrides={range_treshold: 0.9}"))
    T.build_model(cfg_with(init, "model.overrides={max_depth: 100.0, layers: [1, 2, 4, 5]}"))  # agrees: fine
    assert capsys.readouterr().err == ""
    # a partial backbone override (the stage configs of the default-model recipe) agrees in the keys it names
    T.build_model(cfg_with(init, "model.overrides={vit: {depth: 6, embed_dim: 192}}"))
    with pytest.raises(ConfigError, match=r"cannot change .*'depth': 8"):
        T.build_model(cfg_with(init, "model.overrides={vit: {depth: 8}}"))
    T.build_model(cfg_with(init, "model.name=dap_vits"))
    assert "model.name 'dap_vits' is ignored" in capsys.readouterr().err
    T.build_model(cfg_with(init, "model.name=dap_vits"), quiet=True)
    assert capsys.readouterr().err == ""
    # the working resolution is not architecture: fine-tuning a checkpoint at a new one sets it (saved with it)
    tuned = T.build_model(cfg_with(init, "model.overrides={default_resolution: [64, 128]}"))
    assert tuned.cfg.default_resolution == (64, 128) and create_model("dap_tiny").cfg.default_resolution != (64, 128)
    save_model(tuned, tmp_path / "tuned")
    from dap.models import load_model

    assert load_model(tmp_path / "tuned").cfg.default_resolution == (64, 128)
    assert T.build_model(cfg_with(init, "model.overrides={range_threshold: 0.8}")).cfg.range_threshold == 0.8
    assert T.build_model(cfg_with(init, "model.overrides={depth_scale: 0.9}")).cfg.depth_scale == 0.9
    tuned = T.build_model(cfg_with(init, "model.overrides={latitude_scale: [1.1, 0.9]}"))
    assert tuned.cfg.latitude_scale == (1.1, 0.9)
    # a bad value is the config's fault, said as such, whether the model is loaded or made from scratch
    with pytest.raises(ConfigError, match=r"model.overrides: latitude_scale is empty or two or more positive"):
        T.build_model(cfg_with(init, "model.overrides={latitude_scale: [1.0]}"))
    with pytest.raises(ConfigError, match=r"model.overrides: depth_scale is a positive factor, got 0"):
        T.build_model(cfg_with("model.init=scratch", "model.overrides={depth_scale: 0}"))


def test_training_keeps_freed_memory_in_the_heap():
    """`train` makes glibc serve large allocations from the heap and keep what is freed (each step's activations then
    reuse memory instead of faulting in fresh zeroed pages); it leaves a user's own MALLOC_* settings alone. Run in a
    subprocess: the setting is process-wide."""
    import subprocess
    import sys

    from dap.train.loop import keep_freed_memory

    assert keep_freed_memory({"MALLOC_ARENA_MAX": "2"}) is False
    code = """
import ctypes, numpy as np
from dap.train.loop import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def mapped_while_holding_50_mb():
    block = np.ones(50_000_000 // 8)
    return libc.mallinfo2().hblkhd
print(mapped_while_holding_50_mb(), keep_freed_memory({}), mapped_while_holding_50_mb())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "mallinfo2" in result.stderr:
        pytest.skip("no glibc >= 2.33 here")
    before, applied, after = result.stdout.split()
    assert applied == "True", result.stderr
    assert int(after) < 50_000_000 <= int(before)  # the 50 MB block: mapped before, from the heap after


def test_scale_jitter_trains_batches_at_several_2_to_1_sizes(tmp_path, monkeypatch):
    """data.scale_jitter: half the batches at the training size, the rest at its height times a log-uniform factor
    in [1/x, x], rounded to multiples of 16, 2:1; the same draws for the same seed (resume is exact: see
    test_resume_continues_exactly, which runs with it), and the network sees those sizes."""
    from dap.train import loop
    from dap.train.data import jitter_size

    sizes = [jitter_size(64, 1.5, torch.Generator().manual_seed(i)) for i in range(400)]
    assert all(w == 2 * h and h % 16 == 0 and 48 <= h <= 96 for h, w in sizes)
    assert 0.4 < sum(h == 64 for h, _ in sizes) / len(sizes) < 0.75  # half the time, plus rounding back to 64
    assert {h for h, _ in sizes} == {48, 64, 80, 96}
    assert sizes == [jitter_size(64, 1.5, torch.Generator().manual_seed(i)) for i in range(400)]

    seen = []
    real = loop.normalize_image
    monkeypatch.setattr(loop, "normalize_image", lambda rgb: seen.append(tuple(rgb.shape[-2:])) or real(rgb))
    T.train(cfg_with("run.steps=8", "data.scale_jitter=2"), tmp_path / "run")
    assert len(set(seen)) > 1 and all(w == 2 * h and h % 16 == 0 for h, w in seen), seen


def test_an_unreadable_file_in_a_loader_worker_ends_the_run_instead_of_hanging(tmp_path):
    """With data.num_workers >= 1 (every GPU config), a bad image printed its error and the process never exited:
    the loader's workers, which ignore SIGTERM (quiet_worker), were left for interpreter exit to stop with it."""
    import subprocess
    import sys

    for i in range(4):
        (tmp_path / "data" / "rgb").mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / "rgb" / f"p{i}.png").write_bytes(b"garbage")
        (tmp_path / "data" / "depth").mkdir(exist_ok=True)
        np.save(tmp_path / "data" / "depth" / f"p{i}.npy", np.ones((32, 64), np.float32))
    cmd = [sys.executable, "-m", "dap.cli", "train", "--config", str(ROOT / "configs/tiny_cpu.yaml"),
           "--out", str(tmp_path / "run"), "--set", "data.val=[]",
           *(x for o in [*BASE, "run.steps=2", "data.num_workers=1", "data.sources.0.kind=folder",
                         f"data.sources.0.path={tmp_path / 'data'}"] for x in ("--set", o))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "dap train: error: cannot read" in proc.stderr and "p" in proc.stderr


def test_train_checks_a_config_made_in_python_and_refuses_empty_sources_and_repeated_layers(tmp_path, monkeypatch):
    """train() took a TrainConfig edited in Python as it was (optimizer "sgd" trained with Adam); a source without
    samples was a ZeroDivisionError after the run folder was written; duplicate model layers passed the checks and
    failed in the first forward."""
    cfg = cfg_with("run.steps=1")
    cfg.optim.optimizer = "sgd"
    with pytest.raises(ConfigError, match="optim.optimizer must be adam or adamw, got 'sgd'"):
        T.train(cfg, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match=r"model.overrides.*layers are the 4 distinct blocks, in increasing order"):
        T.train(cfg_with("run.steps=1", "model.overrides={vit: {depth: 2}, layers: [0, 1, 1, 1]}"), tmp_path / "b")
    real = T.loop.build_source
    monkeypatch.setattr(T.loop, "build_source", lambda src, h, w: [] if src.seed == 99 else real(src, h, w))
    with pytest.raises(DatasetLayoutError, match=r"^data.val\[0\] \(folder /nonexistent\): "):  # was as for sources
        T.train(cfg_with("run.steps=1", "run.val_every=1", "data.val=[{kind: folder, path: /nonexistent}]"),
                tmp_path / "d")
    with pytest.raises(ConfigError, match=r"data.val\[0\] \(rooms\) holds no panorama"):
        T.train(cfg_with("run.steps=1", "run.val_every=1", "data.val=[{kind: rooms, size: 2, seed: 99}]"),
                tmp_path / "c")
    assert not (tmp_path / "c" / "config.yaml").exists()  # a rerun is not refused as "already holds a run"


def test_resume_of_a_finished_run_changes_nothing_and_an_extension_retires_the_old_final(tmp_path, capsys):
    """--resume on a finished run with new settings trained nothing but rewrote final/ and config.yaml with settings
    never used; extended and stopped before its new end, the run folder still loaded the old final/."""
    out = tmp_path / "run"
    T.train(cfg_with("run.steps=2", "run.ckpt_every=1"), out)
    before = {p: (out / p).read_bytes() for p in ("config.yaml", "final/config.json", "final/model.safetensors")}
    result = T.train(cfg_with("run.steps=2", "run.ckpt_every=1", "optim.lr_head=0.1"), out, resume=True)
    assert result.finished and result.step == 2
    assert {p: (out / p).read_bytes() for p in before} == before
    assert "already reached run.steps=2; nothing trained, no setting changed" in capsys.readouterr().err
    T.train(cfg_with("run.steps=5", "run.ckpt_every=1"), out, resume=True, stop_at=3)
    assert not (out / "final").exists() and "removed" in capsys.readouterr().err
    assert load_model(out).checkpoint_info["step"] == 3


def test_an_extension_keeps_the_finished_models_checkpoint_until_its_new_end(tmp_path, capsys):
    """An extension removes final/, whose model the checkpoint of the old end holds too; keep_last then pruned that
    checkpoint after as many steps, and an extension stopped, killed or diverged had lost the finished model."""
    out = tmp_path / "run"
    T.train(cfg_with("run.steps=2", "run.ckpt_every=1", "run.keep_last=1"), out)
    finished = (out / "checkpoints" / "step_00000002.pt").read_bytes()
    T.train(cfg_with("run.steps=6", "run.ckpt_every=1", "run.keep_last=1"), out, resume=True, stop_at=4)
    assert "step_00000002.pt is kept until the run reaches step 6" in capsys.readouterr().err
    assert [p.name for p in T.list_checkpoints(out)] == ["step_00000002.pt", "step_00000004.pt"]
    assert (out / "checkpoints" / "step_00000002.pt").read_bytes() == finished
    T.train(cfg_with("run.steps=6", "run.ckpt_every=1", "run.keep_last=1"), out, resume=True)  # to the new end
    assert [p.name for p in T.list_checkpoints(out)] == ["step_00000006.pt"] and (out / "final").is_dir()


def test_a_resume_whose_sources_changed_says_so(tmp_path, capsys):
    """A panorama deleted from a folder source between sittings (as an error's advice says for a broken one): the
    resumed run drew other samples than the uninterrupted one, and said only "changed config"."""
    from dap.io import write_depth, write_rgb

    rng = np.random.default_rng(0)
    for i in range(6):
        write_rgb(tmp_path / "f" / "rgb" / f"p{i}.png", rng.uniform(0, 1, (32, 64, 3)))
        write_depth(tmp_path / "f" / "depth" / f"p{i}.npy", np.full((32, 64), 2.0 + i, np.float32))
    cfg = cfg_with("run.steps=3", "run.ckpt_every=1", f"data.sources=[{{kind: folder, path: {tmp_path / 'f'}}}]")
    T.train(cfg, tmp_path / "run", stop_at=1)
    (tmp_path / "f" / "rgb" / "p5.png").unlink()
    (tmp_path / "f" / "depth" / "p5.npy").unlink()
    capsys.readouterr()
    T.train(cfg, tmp_path / "run", resume=True)
    assert "the sources hold other numbers of panoramas than when step_00000001.pt was written (data.sources[0] 6 " \
           "-> 5): the run goes on, but draws other samples" in capsys.readouterr().err


def test_a_broken_validation_file_is_found_before_the_first_step(tmp_path):
    """Validation panoramas were read when validation ran: a truncated one ended the run there, steps in."""
    from dap.errors import UnreadableFileError
    from dap.io import write_depth, write_rgb

    rng = np.random.default_rng(0)
    for i in range(12):
        write_rgb(tmp_path / "v" / "rgb" / f"p{i:02d}.png", rng.uniform(0, 1, (32, 64, 3)))
        write_depth(tmp_path / "v" / "depth" / f"p{i:02d}.npy", np.full((32, 64), 2.0, np.float32))
    broken = tmp_path / "v" / "rgb" / "p01.png"  # not among the 8 the unit check reads
    broken.write_bytes(broken.read_bytes()[:100])
    cfg = cfg_with("run.steps=3", "run.ckpt_every=1", "run.val_every=3", "data.val_samples=12",
                   f"data.val=[{{kind: folder, path: {tmp_path / 'v'}}}]")
    with pytest.raises(UnreadableFileError, match="p01.png"):
        T.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()  # no step was trained


def test_a_folder_sample_whose_headers_show_it_cannot_be_read_is_refused_before_the_first_step(tmp_path):
    """A depth map of another shape than its panorama, or an empty file, was found when its sample was drawn, at a
    random step (after minutes of training, and again at the same step after a resume)."""
    from dap.errors import DatasetLayoutError
    from dap.io import write_depth, write_rgb

    rng = np.random.default_rng(0)
    for i in range(12):
        write_rgb(tmp_path / "f" / "rgb" / f"p{i:02d}.png", rng.uniform(0, 1, (32, 64, 3)))
        write_depth(tmp_path / "f" / "depth" / f"p{i:02d}.npy", np.full((32, 64), 2.0, np.float32))
    write_depth(tmp_path / "f" / "depth" / "p01.npy", np.full((32, 32), 2.0, np.float32))  # not among the 8 checked
    cfg = cfg_with("run.steps=2", "run.ckpt_every=1", f"data.sources=[{{kind: folder, path: {tmp_path / 'f'}}}]")
    with pytest.raises(DatasetLayoutError, match=r"data.sources\[0\] \(folder .*\): .*p01.npy is 32x32 but its RGB "
                                                 r".*p01.png is 64x32"):
        T.train(cfg, tmp_path / "run")
    write_depth(tmp_path / "f" / "depth" / "p01.npy", np.full((32, 64), 2.0, np.float32))
    (tmp_path / "f" / "rgb" / "p03.png").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match=r"p03.png is empty \(0 bytes\)"):
        T.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_source_partly_in_millimetres_or_without_depth_is_noted():
    """The unit was judged on a source's first two panoramas together: metres first and millimetres after passed,
    as did a source whose depth maps were all 0 (every loss term 0, no word)."""
    from dap.train.loop import depth_unit_problem

    def source(*values):
        return [{"depth": np.full((4, 8), v, np.float32)} for v in values]

    assert depth_unit_problem(source(2, 3, 2, 3, 2, 3), 100) is None
    assert depth_unit_problem(source(2, 3, 2000, 3000, 2500, 1800), 100).startswith(
        "4 of 6 of its panoramas checked (spread over it) have over 90% of their ground truth beyond")
    empty = depth_unit_problem(source(*[0] * 20), 100)
    assert empty == ("8 of 8 of its panoramas checked (spread over it) have no valid depth (all 0, NaN, inf or "
                     "negative): they train nothing and take their share of the batches")


def test_a_fine_tuning_run_resumes_after_its_init_model_moved(tmp_path):
    """Resuming rebuilt the network from model.init before loading the checkpoint over it: with the init model moved
    the run could not go on, although every checkpoint records its architecture."""
    T.train(cfg_with("run.steps=1"), tmp_path / "base")
    tune = ["run.steps=3", "run.ckpt_every=1", f"model.init={tmp_path / 'init'}"]
    shutil.copytree(tmp_path / "base" / "final", tmp_path / "init")
    T.train(cfg_with(*tune), tmp_path / "tune", stop_at=2)
    ref = T.train(cfg_with(*tune), tmp_path / "ref")  # uninterrupted, for the exact-resume check
    shutil.move(tmp_path / "init", tmp_path / "moved")
    shutil.copytree(tmp_path / "tune", tmp_path / "tune2")
    resumed = T.train(cfg_with(*tune), tmp_path / "tune", resume=True)
    assert resumed.finished
    assert_same_weights(resumed.model.state_dict(), ref.model.state_dict())
    # and with model.init naming where it went (refused as "its model differs from the config")
    resumed = T.train(cfg_with(*tune[:-1], f"model.init={tmp_path / 'moved'}"), tmp_path / "tune2", resume=True)
    assert resumed.finished
    assert_same_weights(resumed.model.state_dict(), ref.model.state_dict())


def test_a_validation_source_that_reads_training_data_is_named():
    """A source's split defaults to train, in data.val too: a validation folder or benchmark scored the panoramas
    the run trained on without a word."""
    from dap.train.loop import validation_overlaps

    same = cfg_with("data.sources=[{kind: folder, path: /d}]", "data.val=[{kind: folder, path: /d}]")
    assert validation_overlaps(same) == [
        "data.val[0] (folder /d, split train) reads the panoramas of data.sources[0], which the run trains on: its "
        "validation is no held-out measure (give it a held-out split: test, or val where it has one)"]
    assert validation_overlaps(cfg_with("data.sources=[{kind: folder, path: /d}]",
                                        "data.val=[{kind: folder, path: /d, split: val}]")) == []
    # rooms: room i comes from the generator of (seed, i), so another seed is other rooms (seed 6 was said to
    # overlap training seed 0's size 8, as if rooms were seed + i, and named a stale path)
    rooms = "data.sources=[{kind: rooms, size: 8, seed: 0, path: data/x}]"
    assert validation_overlaps(cfg_with(rooms, "data.val=[{kind: rooms, size: 4, seed: 6}]")) == []
    said = validation_overlaps(cfg_with(rooms, "data.val=[{kind: rooms, size: 4, seed: 0, path: data/x}]"))
    assert said[0].startswith("data.val[0] (rooms seed 0, split train) reads the panoramas of data.sources[0]")
    assert said[0].endswith("(give it another seed)")
    synthetic = "data.sources=[{kind: synthetic, size: 8, seed: 0}]"  # panorama i renders seed + i
    assert len(validation_overlaps(cfg_with(synthetic, "data.val=[{kind: synthetic, size: 4, seed: 6}]"))) == 1
    assert validation_overlaps(cfg_with(synthetic, "data.val=[{kind: synthetic, size: 4, seed: 8}]")) == []


def test_a_loss_cap_beyond_the_models_reach_gets_a_note(tmp_path, capsys):
    T.train(cfg_with("run.steps=1", "model.overrides={max_depth: 50.0}"), tmp_path / "a")  # loss.max_depth 100
    assert "loss.max_depth is 100 m but the model outputs at most 50 m" in capsys.readouterr().err
    T.train(cfg_with("run.steps=1"), tmp_path / "b")
    assert "loss.max_depth" not in capsys.readouterr().err


def test_a_folder_without_splits_validated_as_split_val_is_its_training_data(tmp_path, capsys):
    from dap.io import write_depth, write_rgb

    rng = np.random.default_rng(0)
    for i in range(2):
        write_rgb(tmp_path / "d" / "rgb" / f"p{i}.png", rng.uniform(0, 1, (32, 64, 3)))
        write_depth(tmp_path / "d" / "depth" / f"p{i}.npy", np.full((32, 64), 2.0, np.float32))
    T.train(cfg_with("run.steps=1", "run.val_every=1", "data.val_samples=1",
                     f"data.sources=[{{kind: folder, path: {tmp_path / 'd'}}}]",
                     f"data.val=[{{kind: folder, path: {tmp_path / 'd'}, split: val}}]"), tmp_path / "run")
    assert "data.val[0] (folder " in (err := capsys.readouterr().err) and "split all) reads the panoramas of " \
        "data.sources[0]" in err and "(it has no splits: give it a folder of other panoramas)" in err


def test_overlaps_of_folder_sources_are_judged_by_their_files(tmp_path, capsys):
    """Folders were compared, not files: a val.csv beside a train.csv in one folder (disjoint rows) was said to
    read the training panoramas, a manifest elsewhere naming training files was not, nor two training sources of
    one folder (drawn at the sum of their ratios)."""
    from dap.io import write_depth, write_rgb

    rng = np.random.default_rng(0)
    for i in range(4):
        write_rgb(tmp_path / "d" / "rgb" / f"p{i}.png", rng.uniform(0, 1, (32, 64, 3)))
        write_depth(tmp_path / "d" / "depth" / f"p{i}.npy", np.full((32, 64), 2.0, np.float32))
    (tmp_path / "d" / "train.csv").write_text("rgb,depth\nrgb/p0.png,depth/p0.npy\nrgb/p1.png,depth/p1.npy\n")
    (tmp_path / "d" / "val.csv").write_text("rgb,depth\nrgb/p2.png,depth/p2.npy\nrgb/p3.png,depth/p3.npy\n")
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "manifest.csv").write_text("rgb,depth\n../d/rgb/p1.png,../d/depth/p1.npy\n")
    base = ["run.steps=1", "run.val_every=1", "data.val_samples=2"]
    T.train(cfg_with(*base, f"data.sources=[{{kind: folder, path: {tmp_path / 'd' / 'train.csv'}}}]",
                     f"data.val=[{{kind: folder, path: {tmp_path / 'd' / 'val.csv'}}}]"), tmp_path / "r1")
    assert "no held-out measure" not in capsys.readouterr().err
    T.train(cfg_with(*base, f"data.sources=[{{kind: folder, path: {tmp_path / 'd' / 'train.csv'}}}, "
                            f"{{kind: folder, path: {tmp_path / 'd'}/}}]",
                     f"data.val=[{{kind: folder, path: {tmp_path / 'v'}}}]"), tmp_path / "r2")
    err = capsys.readouterr().err
    assert "data.val[0] (folder " in err and "holds 1 of the 1 panoramas it validates on among those of " \
        "data.sources[0] (the same files, or scenes of the same seeds), which the run trains on" in err
    assert "data.sources[0] and data.sources[1] (" in err and "hold 2 of the same panoramas" in err


def test_a_synth_folder_of_the_training_seeds_is_no_held_out_set(tmp_path, capsys):
    """A validation set rendered with `dap synth` into another folder without --seed holds the training scenes (the
    same bytes): folders were compared, and the note did not come; nor between shards and synthetic sources."""
    from dap.data.shards import write_dataset

    write_dataset(tmp_path / "train", count=3, resolution=(32, 64), progress=False)
    write_dataset(tmp_path / "val", count=2, resolution=(32, 64), progress=False)  # the seed forgotten
    write_dataset(tmp_path / "held", count=2, resolution=(32, 64), seed=1000, progress=False)
    base = ["run.steps=1", "run.val_every=1", "data.val_samples=2",
            f"data.sources=[{{kind: shards, path: {tmp_path / 'train'}}}]"]
    T.train(cfg_with(*base, f"data.val=[{{kind: shards, path: {tmp_path / 'val'}}}]"), tmp_path / "r1")
    assert "holds 2 of the 2 panoramas it validates on among those of data.sources[0]" in capsys.readouterr().err
    T.train(cfg_with(*base, f"data.val=[{{kind: shards, path: {tmp_path / 'held'}}}]"), tmp_path / "r2")
    assert "no held-out measure" not in capsys.readouterr().err
    T.train(cfg_with(*base, "data.val=[{kind: synthetic, size: 2, seed: 1}]"), tmp_path / "r3")
    assert "holds 2 of the 2 panoramas it validates on among those of data.sources[0]" in capsys.readouterr().err


def test_a_split_of_a_dap_synth_folder_is_refused_and_the_same_folder_named(tmp_path, capsys):
    """`split: val` on a shards source was ignored without a word: validation scored the training panoramas and the
    note that says so did not come (the configured split, not the one read, was compared)."""
    from dap.data.shards import write_dataset

    write_dataset(tmp_path / "s", count=2, resolution=(32, 64), progress=False)
    shards = f"data.sources=[{{kind: shards, path: {tmp_path / 's'}}}]"
    with pytest.raises(ConfigError, match=r"data.val\[0\].split: a shards source has no splits, it reads every "
                                            r"panorama it has \(split 'val' read the training panoramas\); render a "
                                            r"held-out set with other seeds \(dap synth --seed\)"):
        T.load_config(None, ["data.height=32", "data.width=64", shards,
                             f"data.val=[{{kind: shards, path: {tmp_path / 's'}, split: val}}]"])
    T.train(cfg_with("run.steps=1", "run.val_every=1", "data.val_samples=1", shards,
                     f"data.val=[{{kind: shards, path: {tmp_path / 's'}}}]"), tmp_path / "run")
    assert "split all) reads the panoramas of data.sources[0], which the run trains on: its validation is no " \
        "held-out measure (render a held-out set with other seeds (dap synth --seed) and give its folder)" in \
        capsys.readouterr().err


def test_a_checkpoint_cut_short_by_a_full_disk_says_so(tmp_path, monkeypatch, capsys):
    """torch's zip writer reports a short write as "[enforce fail at inline_container.cc:672] . unexpected pos";
    the command printed that, "is the disk full?" and "check that the disk is healthy" in one line."""
    from dap.cli import main

    def short_write(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 40406912 vs 40406804")

    monkeypatch.setattr(torch, "save", short_write)
    (tmp_path / "c.yaml").write_text("model: {name: dap_tiny}\n")
    code = main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                 *(x for o in [*BASE, "run.steps=1"] for x in ("--set", o))])
    err = capsys.readouterr().err
    assert code == 1 and "inline_container" not in err
    assert f"dap train: error: no space left on device, {tmp_path / 'run' / 'checkpoints'}" in err
    assert "free some space or choose another --out" in err


def test_live_synthetic_source_masks_far_pixels_as_its_shards_do(tmp_path):
    """A render's depth beyond 100 m was learned as valid depth from kind "synthetic" and as out of range from the
    same panorama written by `dap synth`."""
    from dap.data.shards import write_dataset

    write_dataset(tmp_path / "s", 4, kind="mixed", style="clean", resolution=(32, 64), seed=0, progress=False)
    shards = T.build_source(T.SourceConfig(kind="shards", path=str(tmp_path / "s")), 32, 64)
    live = T.build_source(T.SourceConfig(kind="synthetic", size=4, seed=0), 32, 64)
    far = 0
    for i in range(4):
        a, b = T.to_training_sample(shards[i]), T.to_training_sample(live[i])
        assert torch.equal(a["depth"], b["depth"])
        assert torch.equal(a["valid"], b["valid"]) and torch.equal(a["out_of_range"], b["out_of_range"])
        far += int(((a["depth"] > 100) & a["out_of_range"]).sum())
    assert far > 0  # the check covers pixels beyond 100 m


def test_an_empty_config_section_keeps_its_defaults_and_takes_set_overrides(tmp_path):
    """`run:` with every key commented out loaded, but `--set run.steps=2` into it was "no such config entry (list
    items are addressed by index...)"; an empty `model.overrides:` was "expected a mapping, got None"."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  height: 32\n  width: 64\nrun:\n  # steps: 1000\nmodel:\n  name: dap_tiny\n  overrides:\n"
                    "    # vit: {depth: 4}\n")
    cfg = T.load_config(path, ["run.steps=2", "model.overrides.max_depth=50.0"])
    assert cfg.run.steps == 2 and cfg.run.seed == T.TrainConfig().run.seed
    assert cfg.model.overrides == {"max_depth": 50.0}
    assert T.load_config(path).model.overrides == {}


def test_an_empty_list_entry_is_refused_not_read_as_a_default_source(tmp_path):
    """A source commented out after its dash (`- # {kind: shards, ...}`) became a second source of the default kind
    (box rooms) at ratio 1: half of the training samples, without a word; so did `--set data.sources.0=null`."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  sources:\n    - {kind: rooms, seed: 1}\n    - # {kind: shards, path: data/outdoor}\n")
    with pytest.raises(ConfigError, match=r"config data.sources\[1\]: an empty entry .* remove its dash"):
        T.load_config(path)
    with pytest.raises(ConfigError, match=r"config data.sources\[0\]: an empty entry"):
        T.load_config(None, ["data.sources.0=null"])
    with pytest.raises(ConfigError, match=r"config data.val\[0\]: an empty entry"):
        T.load_config(None, ["data.val=[null]"])


def test_a_documented_config_path_outside_a_clone_says_where_configs_are(tmp_path, monkeypatch):
    """configs/ is not in the installed package: `dap train --config configs/tiny_cpu.yaml` run elsewhere said only
    "No such file or directory; check the path"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="configs/ of the docs are in the dap repository, not in the installed"):
        T.load_config("configs/tiny_cpu.yaml")
    with pytest.raises(ConfigError, match=r"check the path$"):
        T.load_config("mine.yaml")


def test_a_synth_folder_read_as_a_dataset_keeps_its_range_marks(tmp_path):
    """`kind: dataset, dataset: synth` read a `dap synth` folder through the evaluation loader, which keeps no sky
    or beyond-range marks: sky became "ignored" and the range head never learned it (0.18 of the pixels marked
    through `kind: shards`, 0 this way), and depth beyond 100 m was trained as valid."""
    from dap.data.shards import write_dataset

    write_dataset(tmp_path / "s", 3, kind="mixed", style="clean", resolution=(32, 64), seed=0, progress=False)
    shards = T.build_source(T.SourceConfig(kind="shards", path=str(tmp_path / "s")), 32, 64)
    dataset = T.build_source(T.SourceConfig(kind="dataset", dataset="synth", path=str(tmp_path / "s")), 32, 64)
    marked = 0
    for i in range(3):
        a, b = T.to_training_sample(shards[i]), T.to_training_sample(dataset[i])
        assert torch.equal(a["out_of_range"], b["out_of_range"]) and torch.equal(a["valid"], b["valid"])
        marked += int(a["out_of_range"].sum())
    assert marked > 0


def test_validation_overlap_is_found_under_another_spelling_of_the_same_folder():
    """The note compared kind and path as written: the shards folder validated through its manifest file, or
    through `kind: dataset, dataset: synth`, passed for held-out data."""
    from dap.train.loop import validation_overlaps

    shards = "data.sources=[{kind: shards, path: /d/synth}]"
    for val in ("data.val=[{kind: shards, path: /d/synth/manifest.parquet}]",
                "data.val=[{kind: dataset, dataset: synth, path: /d/synth}]",
                "data.val=[{kind: shards, path: /d/synth/}]"):
        assert len(validation_overlaps(cfg_with(shards, val))) == 1, val
    assert validation_overlaps(cfg_with(shards, "data.val=[{kind: shards, path: /d/other}]")) == []


def test_settings_that_train_or_validate_something_else_are_noted(tmp_path, capsys):
    """Three settings that ran without a word: depth in millimetres in a folder's .npy files (beyond loss.max_depth:
    every depth term 0, only the range head trained), data.augment false with the augmentations it switches off set,
    and a validation source after one that fills data.val_samples (never scored)."""
    from dap.io import write_depth, write_rgb

    rng = np.random.default_rng(0)
    for i in range(2):
        write_rgb(tmp_path / "mm" / "rgb" / f"p{i}.png", rng.uniform(0, 1, (32, 64, 3)))
        write_depth(tmp_path / "mm" / "depth" / f"p{i}.npy", np.full((32, 64), 2000.0, np.float32))
    T.train(cfg_with("run.steps=1", f"data.sources=[{{kind: folder, path: {tmp_path / 'mm'}, split: all}}]",
                     "data.augment=false", "data.rotate=true", "data.exposure=2.0", "run.val_every=1",
                     "data.val_samples=2",
                     "data.val=[{kind: rooms, size: 4, seed: 50}, {kind: rooms, size: 4, seed: 60}]"),
            tmp_path / "run")
    err = capsys.readouterr().err
    assert "data.sources[0] (folder " in err and "2 of 2 of its panoramas checked (spread over it) have over 90% of " \
        "their ground truth beyond loss.max_depth 100 m: if its depth is not in metres, give its unit" in err
    assert "data.augment is false, which also turns off data.rotate, data.exposure" in err
    assert "data.val[1] (rooms) is not validated on: data.val_samples (2) are all taken from the sources before " \
        "it; raise data.val_samples to 8" in err
    T.train(cfg_with("run.steps=1"), tmp_path / "plain")
    err = capsys.readouterr().err
    assert "over 90%" not in err and "data.augment" not in err and "not validated on" not in err


def test_a_split_of_a_synth_folder_read_as_a_dataset_is_refused_as_for_shards(tmp_path):
    """`dataset: synth` reads the folder as shards (all of it): `split: val`, or a typo, read every panorama."""
    (tmp_path / "s").mkdir()
    with pytest.raises(ConfigError, match=r"data.val\[0\].split: a dap synth folder \(dataset: synth\) has no splits"):
        T.load_config(None, ["data.height=32", "data.width=64",
                             f"data.val=[{{kind: dataset, dataset: synth, path: {tmp_path / 's'}, split: val}}]"])


def test_a_folder_source_with_images_that_are_no_panoramas_is_refused_before_training(tmp_path):
    """A 4:3 image in a folder source stopped the run when the sampler first drew it: at a random step, after the
    run folder was made."""
    from dap.io import write_depth, write_rgb

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(32, 64), (48, 64), (32, 64)]):
        write_rgb(tmp_path / "d" / "rgb" / f"p{i}.png", rng.uniform(0, 1, (h, w, 3)))
        write_depth(tmp_path / "d" / "depth" / f"p{i}.npy", np.full((h, w), 2.0, np.float32))
    with pytest.raises(ConfigError, match=r"data.sources\[0\] \(folder .*\): 1 of its 3 panoramas are not 2:1 "
                                          r"\(e.g. .*p1.png, 64x48\)"):
        T.train(cfg_with("run.steps=1", f"data.sources=[{{kind: folder, path: {tmp_path / 'd'}, split: all}}]"),
                tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_train_and_load_config_take_what_a_user_passes(tmp_path):
    """load_config(path, "run.steps=3") read the string one character at a time ("expects key=value, got 'r'");
    train("config.yaml", out) was "'str' object has no attribute 'data'"."""
    assert T.load_config(None, "run.steps=3").run.steps == 3
    for wrong in ("configs/tiny_cpu.yaml", {"run": {}}):
        with pytest.raises(ConfigError, match=r"train\(\) takes a TrainConfig, got (str|dict); load one with"):
            T.train(wrong, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_folder_source_takes_a_panorama_stored_turned_with_its_orientation_tag(tmp_path):
    """The up-front shape check read the stored size: a 1:2 JPEG whose EXIF orientation turns it upright to 2:1
    (as read_rgb reads it) was refused."""
    from PIL import Image

    from dap.io import write_depth

    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to show upright
    (tmp_path / "d" / "rgb").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(tmp_path / "d" / "rgb" / "p.jpg", exif=exif)
    write_depth(tmp_path / "d" / "depth" / "p.npy", np.full((32, 64), 2.0, np.float32))
    T.train(cfg_with("run.steps=1", f"data.sources=[{{kind: folder, path: {tmp_path / 'd'}, split: all}}]"),
            tmp_path / "run")
    assert (tmp_path / "run" / "final" / "config.json").is_file()
