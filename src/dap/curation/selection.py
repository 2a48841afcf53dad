"""Stage 2 selection and scoring: the discriminator scores every stage-1 pseudo-label, and a fixed top-k per
domain is kept (the paper keeps the top 300K indoor and 300K outdoor of 1.9M, not a threshold)."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from dap.curation.discriminator import DepthDiscriminator, discriminator_input
from dap.curation.ingest import DOMAINS
from dap.curation.manifest import (
    check_labels_present,
    labelled_arrays,
    lost_images_problem,
    pool_job,
    read_manifest,
    stored_image,
    write_manifest,
)
from dap.errors import DapError, DatasetLayoutError

# The paper's 300K + 300K of ~450K indoor and ~1.45M outdoor unlabeled panoramas.
PAPER_FRACTIONS = {"indoor": 300 / 450, "outdoor": 300 / 1450}
SCORES = ("disc", "tta", "disc_tta")


@torch.inference_mode()
def score_pool(pool: str | os.PathLike, model: DepthDiscriminator, stage: str = "stage1", batch_size: int = 16,
               progress: bool = True) -> int:
    """Write the discriminator's P(real) of every labelled row's `stage` label into `disc_score`.

    Under torchrun each rank scores its share of the rows (the same split as labeling) and writes the scores to
    scores/<stage>-rank<r>-of-<world>.json; rank 0 merges them into the manifest. Returns the rows scored."""
    import json

    from tqdm import tqdm

    from dap.curation.label import rank_rows
    from dap.io import atomic_write
    from dap.train.distributed import all_succeeded

    pool = Path(pool)
    # a few hundred thousand parameters: the CPU keeps GPUs free for labeling
    with pool_job(pool, "dap curate score", "cpu") as d:
        failure, scores = None, {}
        try:
            rows = read_manifest(pool)
            mine = [rows[i] for i in rank_rows(rows, d.rank, d.world)
                    if rows[i]["status"] == "ok" and rows[i][f"{stage}_label"]]
            if not any(r["status"] == "ok" and r[f"{stage}_label"] for r in rows):
                raise DapError(f"{pool} has no {stage} labels to score: run `dap curate label --stage {stage}` first")
            check_labels_present(pool, rows, stage, "score")
            for start in tqdm(range(0, len(mine), batch_size), desc="score", disable=not progress,
                              dynamic_ncols=True):
                part = mine[start:start + batch_size]
                arrays = [labelled_arrays(pool, r, stage) for r in part]
                rgb = torch.stack([torch.from_numpy(a[0]).permute(2, 0, 1) for a in arrays])
                depth = torch.stack([torch.from_numpy(a[1])[None] for a in arrays])
                oor = torch.stack([torch.from_numpy(a[2])[None] for a in arrays])
                batch = model.score(discriminator_input(rgb, depth, oor, model.cfg))
                scores.update(zip((r["id"] for r in part), batch.tolist(), strict=True))
            part_file = pool / "scores" / f"{stage}-rank{d.rank}-of-{d.world}.json"
            with atomic_write(part_file) as tmp:
                tmp.write_text(json.dumps(scores))
        except Exception as e:  # noqa: BLE001 - raised below, once every rank knows
            failure = e
        # Merged only if every rank wrote its part now: a part left by an earlier run must never stand in for one
        all_succeeded(d, failure)
        if not d.main:
            return len(scores)
        merged: dict[str, float] = {}
        for r in range(d.world):
            merged.update(json.loads((pool / "scores" / f"{stage}-rank{r}-of-{d.world}.json").read_text()))
        # a selection ranked by the earlier scores stays as it was (kept, as the user's): said, so it is made again
        stale = sum(bool(row["selected"]) and math.isfinite(row["disc_score"])
                    and row["disc_score"] != merged[row["id"]] for row in rows if row["id"] in merged)
        for row in rows:
            if row["id"] in merged:
                row["disc_score"] = merged[row["id"]]
        write_manifest(pool, rows)
        if stale:
            print(f"dap curate score: note: {stale} selected row(s) were selected by the earlier scores, which "
                  "changed; run `dap curate select` again to select by these", file=sys.stderr)
        return len(merged)


def _ranking_value(row: dict, score: str) -> float:
    """Higher = better pseudo-label."""
    if score == "disc":
        return row["disc_score"]
    if score == "tta":
        return -row["stage1_tta_absrel"]
    raise ValueError(score)


def keep_problem(keep: dict, name: str) -> str | None:
    """What is wrong with a selection's domain -> keep mapping (`name`: how the user gave it), None if nothing. A
    typo in a domain would silently select nothing there, after clearing the earlier selection."""
    unknown = sorted(set(keep) - set(DOMAINS))
    if unknown:
        return f"{name} names the domain {', '.join(map(repr, unknown))}; the domains are {', '.join(DOMAINS)}"
    for domain, value in keep.items():
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf) or (
                value >= 1 and value != int(value)):  # 1.5: a count of one and a half rows
            return (f"{name}.{domain} must be a fraction below 1 or a whole count >= 1 (0 keeps none), got "
                    f"{value!r}")
    return None


def keep_count(n: int, keep: float) -> int:
    """keep < 1: a fraction of n, rounded to the nearest (halves to even, Python's round: half of 17 rows is 8, of
    37 rows 18; kept so, as the documented runs were made with it); keep >= 1: a count (capped at n)."""
    if keep < 0:
        raise DapError(f"selection keep must be >= 0 (a fraction below 1 or a count), got {keep}")
    return min(n, round(keep * n) if keep < 1 else int(keep))


def _selectable(rows: list[dict]) -> list[dict]:
    """The rows a selection may keep: accepted, with a stage-1 label."""
    return [r for r in rows if r["status"] == "ok" and r["stage1_label"]]


def _labelled(rows: list[dict], domain: str) -> list[dict]:
    """The rows of `domain` a selection may keep."""
    return [r for r in _selectable(rows) if r["domain"] == domain]


def _scored(row: dict, score: str) -> bool:
    """Whether the row has a finite value for `score` (disc_tta: both parts)."""
    parts = ("disc", "tta") if score == "disc_tta" else (score,)
    return all(math.isfinite(_ranking_value(row, part)) for part in parts)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Rank of each value (0 = lowest), tied values sharing the mean of their places: ranked by position, ties
    were broken by the rows' order in the manifest instead of by id."""
    places = np.empty(len(values))
    places[np.argsort(values, kind="stable")] = np.arange(len(values))
    _, group, size = np.unique(values, return_inverse=True, return_counts=True)
    return np.bincount(group, weights=places)[group] / size[group]


def select_top_k(rows: list[dict], keep: dict[str, float], score: str = "disc") -> dict[str, int]:
    """Mark `selected` on the best rows of each domain: keep[domain] is a fraction (< 1) or a count (>= 1).

    score: disc (discriminator P(real)), tta (test-time-augmentation agreement) or disc_tta (mean of the two
    ranks). Ties go to the smaller id, so selection is deterministic. Rows without a finite score are never
    selected; domains not named in `keep` keep nothing."""
    if score not in SCORES:
        raise DapError(f"selection score must be one of {', '.join(SCORES)}, got {score!r}")
    counts = {}
    for r in rows:
        r["selected"] = False
    for domain, k in keep.items():
        # ranked among the rows with a score (disc_tta: both, else a row without one had a finite rank sum)
        cand = [r for r in _labelled(rows, domain) if _scored(r, score)]
        if score == "disc_tta":
            ranks = {part: _average_ranks(np.array([_ranking_value(r, part) for r in cand], dtype=np.float64))
                     for part in ("disc", "tta")}
            value = {r["id"]: float(ranks["disc"][i] + ranks["tta"][i]) for i, r in enumerate(cand)}
        else:
            value = {r["id"]: _ranking_value(r, score) for r in cand}
        cand.sort(key=lambda r: (-value[r["id"]], r["id"]))
        chosen = cand[:keep_count(len(cand), k)]
        for r in chosen:
            r["selected"] = True
        counts[domain] = len(chosen)
    return counts


def select_pool(pool: str | os.PathLike, keep: dict[str, float], score: str = "disc") -> dict[str, int]:
    from dap.io import folder_lock

    pool = Path(pool)
    with folder_lock(pool, "dap curate select"):
        rows = read_manifest(pool)
        if score in ("disc", "disc_tta") and not any(math.isfinite(r["disc_score"]) for r in rows):
            raise DapError(f"{pool} has no discriminator scores: run `dap curate score` first, or select by --score "
                           "tta")
        if score in ("tta", "disc_tta") and not any(math.isfinite(r["stage1_tta_absrel"]) for r in rows):
            raise DapError(f"{pool} has no test-time-augmentation scores: label it with TTA (`dap curate label` "
                           "without --no-tta), or select by --score disc")
        if problem := keep_problem(keep, "--keep"):
            raise DapError(problem)
        check_labels_present(pool, rows, "stage1", "score and select")  # or train on rows without one
        # nor on a row whose stored image is gone: training on the selection would stop there, hours in
        if lost := [r for r in _selectable(rows) if not stored_image(pool, r)]:
            raise DatasetLayoutError(lost_images_problem(pool, lost, "stage1") + ", then select")
        counts = select_top_k(rows, keep, score)
        write_manifest(pool, rows)
        # labelled since the last `dap curate score`: the fraction was taken of the scored rows only, without a word
        unscored = {d: sum(not _scored(r, score) for r in _labelled(rows, d)) for d in keep}
        if sum(unscored.values()):
            shown = ", ".join(f"{d} {n}" for d, n in unscored.items() if n)
            print(f"dap curate select: note: labelled rows without a {score} score were not ranked ({shown}); run "
                  "`dap curate score` (or label with TTA) and select again to rank them too", file=sys.stderr)
        return counts
