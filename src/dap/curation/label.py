"""Stages 1 and 3 of curation: a labeler model writes a pseudo-label for every accepted panorama of the pool.

Scale-out: under torchrun each rank labels a disjoint, deterministic part of the manifest (rows whose id,
read as a number, is rank modulo world size), in batches, with decoding overlapped by DataLoader workers.
Per-sample resumable: a label file is written atomically, so one that exists is complete and is skipped on a
rerun; a killed run loses at most the batch in flight. After all ranks finish, rank 0 merges the labels'
confidence signals into the manifest.

Confidence signals stored with every label (the cheap ones; the discriminator score comes in stage 2):
  tta_absrel      mean AbsRel between the prediction and its test-time-augmented versions (yaw roll by half a
                  turn, horizontal flip), each mapped back; low = the labeler agrees with itself
  mask_certainty  solid-angle weighted mean |2p - 1| of the range probability p; 1 = every pixel decided
  sky_fraction    solid-angle share of the upper hemisphere that is out of range (sky or beyond max_depth);
                  it tags the domain (outdoor when >= outdoor_sky_fraction) unless a user tag exists
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from dap.curation.manifest import (
    LABEL_SIGNALS,
    STAGES,
    empty_pool_problem,
    label_settings_path,
    load_label,
    pool_job,
    read_manifest,
    save_label,
    stored_image,
    write_manifest,
)
from dap.errors import DapError


@dataclass
class LabelOptions:
    resolution: tuple[int, int] = (256, 512)  # working (and stored label) resolution
    batch_size: int = 4
    num_workers: int = 0  # DataLoader workers decoding panoramas while the model runs
    tta: bool = True  # 2 extra forwards per panorama for the agreement signal
    seam_pad: float = 1 / 16
    outdoor_sky_fraction: float = 0.05  # domain rule of the labeler (see module docstring)
    device: str = "auto"


def rank_rows(rows: list[dict], rank: int, world: int) -> list[int]:
    """Indices of the accepted rows that `rank` of `world` labels: disjoint, complete, stable under appends."""
    return [i for i, r in enumerate(rows) if r["status"] == "ok" and int(r["id"], 16) % world == rank]


class _PoolImages(torch.utils.data.Dataset):
    def __init__(self, pool: Path, rows: list[dict], indices: list[int], resolution: tuple[int, int]):
        self.pool, self.rows, self.indices, self.resolution = pool, rows, indices, resolution

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[int, bool, torch.Tensor]:
        """(row, whether its stored image could be read, the network input; zeros where it could not)."""
        from dap.inference import prepare_input
        from dap.io import read_rgb

        i = self.indices[k]
        try:
            rgb = read_rgb(self.pool / self.rows[i]["image"])
        except DapError:  # cut short since it was ingested: left unlabelled, rejected by the merge (one image, not
            return i, False, torch.zeros(3, *self.resolution)  # the whole pool's labelling)
        return i, True, prepare_input(rgb, self.resolution)[0]


def _hemisphere_weights(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    from dap.geometry import solid_angle_weights

    w = solid_angle_weights(height, width).expand(height, width)
    upper = w.clone()
    upper[height // 2:] = 0
    return w / w.sum(), upper / upper.sum()


@torch.inference_mode()
def label_batch(model, x: torch.Tensor, *, tta: bool, seam_pad: float,
                precision: str = "fp32") -> dict[str, torch.Tensor]:
    """Depth (0 where out of range), range probability and per-image confidence signals for a normalised batch."""
    from dap.inference import run_model

    out = run_model(model, x, seam_pad=seam_pad, precision=precision)
    depth, prob = out["depth"], out["out_of_range_prob"]
    h, w = depth.shape[-2:]
    whole, upper = (t.to(depth.device) for t in _hemisphere_weights(h, w))
    inside = prob < 0.5
    signals = {
        "sky_fraction": ((~inside).float()[:, 0] * upper).sum((-2, -1)),
        "mask_certainty": ((2 * prob - 1).abs()[:, 0] * whole).sum((-2, -1)),
    }
    if tta:
        rolled = run_model(model, x.roll(w // 2, dims=-1), seam_pad=seam_pad, precision=precision)["depth"].roll(
            -(w // 2), dims=-1)
        flipped = run_model(model, x.flip(-1), seam_pad=seam_pad, precision=precision)["depth"].flip(-1)
        errs = [((d - depth).abs() / depth.clamp(min=1e-3) * inside).sum((-3, -2, -1)) for d in (rolled, flipped)]
        signals["tta_absrel"] = (errs[0] + errs[1]) / (2 * inside.sum((-3, -2, -1)).clamp(min=1))
    else:
        signals["tta_absrel"] = torch.full_like(signals["sky_fraction"], float("nan"))
    return {"depth": torch.where(inside, depth, torch.zeros_like(depth))[:, 0], "prob": prob[:, 0], **signals}


def resolution_problem(resolution) -> str | None:
    """What is wrong with a label resolution, None when it is (height, width) of a 2:1 panorama in multiples of 16."""
    h, w = resolution
    if h <= 0 or h % 16 or w != 2 * h:
        return f"must be [height, width] of a 2:1 panorama in multiples of 16, got {[h, w]}"
    return None


def label_path(stage: str, row_id: str) -> str:
    return f"labels/{stage}/{row_id}.npz"


def label_pool(pool: str | os.PathLike, model, stage: str, options: LabelOptions | None = None, *,
               progress: bool = True) -> dict[str, int]:
    """Label every accepted, not yet labelled row of `pool` for `stage` (this rank's share under torchrun), then
    merge all labels into the manifest on rank 0, which holds the pool meanwhile (`pool_job`). `model`: a loaded DAP
    model or a checkpoint path."""
    from tqdm import tqdm

    from dap.inference import model_fingerprint, resolve_model, resolve_precision
    from dap.io import remove_temporaries
    from dap.train.distributed import loader_batches, quiet_worker

    if stage not in STAGES:
        raise DapError(f"unknown label stage {stage!r}; use one of {', '.join(STAGES)}")
    o = options or LabelOptions()
    if problem := resolution_problem(o.resolution):
        raise DapError(f"label resolution {problem}")
    pool = Path(pool)
    with pool_job(pool, f"dap curate label ({stage})", o.device) as d:
        rows = read_manifest(pool)
        if not rows:
            raise DapError(empty_pool_problem(pool))
        model = resolve_model(model, d.device)
        # Labels are training data: one precision for a stage's every label, whatever the process or rank. On a CPU
        # fp32 ("auto" there rests on a bf16 timing kept per thread count and machine: ranks of one thread each, or
        # on other machines, labelled in other types); on a GPU what "auto" is for it, a property of the device.
        precision = "fp32" if d.device.type == "cpu" else resolve_precision("auto", d.device)
        if d.main:  # label writes killed mid-way
            remove_temporaries(pool / "labels" / stage)
            _check_label_settings(pool, stage, {"model": model_fingerprint(model), "resolution": list(o.resolution),
                                                "tta": o.tta, "seam_pad": o.seam_pad, "precision": precision})
        if d.world > 1:
            dist.barrier()  # no rank writes before the clean-up is done
        mine = [i for i in rank_rows(rows, d.rank, d.world)
                if not (pool / label_path(stage, rows[i]["id"])).exists() and stored_image(pool, rows[i])]
        loader = torch.utils.data.DataLoader(_PoolImages(pool, rows, mine, o.resolution), batch_size=o.batch_size,
                                             num_workers=o.num_workers, pin_memory=d.device.type == "cuda",
                                             worker_init_fn=quiet_worker)
        done = 0
        with tqdm(total=len(mine), desc=f"label {stage}" + (f" rank {d.rank}" if d.world > 1 else ""),
                  unit="pano", disable=not progress, dynamic_ncols=True) as bar:
            with loader_batches(loader) as batches:  # its workers stopped also after an unreadable image
                for idx, readable, x in batches:
                    res = label_batch(model, x.to(d.device), tta=o.tta, seam_pad=o.seam_pad, precision=precision)
                    for b, i in enumerate(idx.tolist()):
                        if not readable[b]:
                            continue
                        save_label(pool / label_path(stage, rows[i]["id"]), res["depth"][b].cpu().numpy(),
                                   res["prob"][b].cpu().numpy(),
                                   **{k: float(res[k][b]) for k in LABEL_SIGNALS})
                    done += int(readable.sum())
                    bar.update(len(idx))
        if d.world > 1:  # every rank has written its labels (a sync point), and the count is the run's
            count = torch.tensor([done], device=d.device)  # nccl reduces CUDA tensors only
            dist.all_reduce(count)
            done = int(count.item())
        merged = merge_labels(pool, stage, o.outdoor_sky_fraction) if d.main else {}
        if d.world > 1:
            dist.barrier()
        return {"labelled_now": done, **merged}


def _check_label_settings(pool: Path, stage: str, settings: dict) -> None:
    """A stage's labels all come from one model at one resolution: labels/<stage>/settings.json records them, and
    labelling more rows with others is refused (the rows labelled before would silently keep the old labels)."""
    import json

    from dap.inference import changed_keys
    from dap.io import atomic_write

    path = label_settings_path(pool, stage)
    folder = path.parent
    labels = any(folder.glob("*.npz")) if folder.is_dir() else False
    try:
        before = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        before = None
    if labels and isinstance(before, dict):
        # labels recorded before the precision was: not refused for it (they were made in "auto")
        changed = changed_keys({"precision": settings.get("precision"), **before}, settings)
        if changed:
            words = ["another model" if k == "model" else f"{k}: {before.get(k)} -> {settings.get(k)}" for k in changed]
            raise DapError(f"the {stage} labels in {folder} were made with other settings ({'; '.join(words)}); "
                           f"label with the earlier ones, or delete {folder} to label every row again")
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(settings, indent=1))


def _readable(image: Path) -> bool:
    from dap.io import read_rgb

    try:
        read_rgb(image)
    except DapError:
        return False
    return True


def merge_labels(pool: Path, stage: str, outdoor_sky_fraction: float) -> dict[str, int]:
    """Copy the signals of every existing label file of `stage` into the manifest (atomic rewrite). An accepted
    row whose stored image has gone is rejected, with the way to restore it: ingest checks rejected rows again."""
    rows = read_manifest(pool)
    labelled = missing = stale = gone = moved = 0
    for r in rows:
        if r["status"] != "ok":
            continue
        rel = label_path(stage, r["id"])
        stored, labelled_now = stored_image(pool, r), (pool / rel).exists()
        # nothing can be trained on a row whose stored image is gone, labelled or not; one the labelling left out
        # because its image cannot be read is rejected too
        lost = ("is missing or empty (deleted since it was ingested?)" if not stored
                else None if labelled_now or _readable(pool / r["image"])
                else "cannot be read (cut short since it was ingested?)")
        if lost:
            r.update(status="rejected", reason=f"its copy in the pool, {r['image']}, {lost}; ingest {r['path']} again "
                                               "to restore it")
            gone += 1
            continue
        if not labelled_now:
            if r[f"{stage}_label"]:  # merged once, its file deleted since (and not made again): no label now
                r.update({f"{stage}_label": "", **{f"{stage}_{k}": math.nan for k in LABEL_SIGNALS}})
                if stage == "stage1":  # made on that label
                    r.update(disc_score=math.nan, selected=False)
            missing += 1
            continue
        z = load_label(pool / rel)
        signals = {f"{stage}_{k}": float(z[k]) for k in LABEL_SIGNALS}
        changed = any(not (r[k] == v or (math.isnan(r[k]) and math.isnan(v))) for k, v in signals.items())
        if stage == "stage1" and r["stage1_label"] and changed and (math.isfinite(r["disc_score"]) or r["selected"]):
            # a new stage-1 label (another labeler): the score and the selection were made on the old one
            r.update(disc_score=math.nan, selected=False)
            stale += 1
        r.update({f"{stage}_label": rel, **signals})
        if stage == "stage1" and r["domain_from"] != "user":
            domain = "outdoor" if r["stage1_sky_fraction"] >= outdoor_sky_fraction else "indoor"
            if r["selected"] and domain != r["domain"]:  # kept under the other domain's share
                r["selected"] = False
                moved += 1
            r.update(domain=domain, domain_from="labeler")
        labelled += 1
    write_manifest(pool, rows)
    if missing:
        print(f"dap curate: {missing} accepted rows of {pool} have no {stage} label yet", file=sys.stderr)
    if gone:
        print(f"dap curate: {gone} rows of {pool} lost their stored image and are rejected; ingest their files "
              "again to restore them (the reasons name them)", file=sys.stderr)
    if stale:
        print(f"dap curate: {stale} rows of {pool} have new stage-1 labels: their discriminator scores and selection "
              "were made on the old ones and are cleared; run `dap curate score` and `dap curate select` again",
              file=sys.stderr)
    if moved:
        print(f"dap curate: {moved} selected rows of {pool} moved to the other domain (the labeler's sky fraction "
              "rule): they are no longer selected; run `dap curate select` again", file=sys.stderr)
    return {"labelled": labelled, "unlabelled": missing}

