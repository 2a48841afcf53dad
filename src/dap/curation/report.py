"""`dap curate status`: where a pool stands, score histograms and contact sheets of the best and worst labels."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from dap.curation.manifest import STAGES, labelled_arrays, lost_labels, read_manifest


def reason_kind(reason: str) -> str:
    """What kind of rejection a row's reason is, for counting: its numbers and names left out."""
    kinds = (("near-duplicate", "near-duplicate"), ("camera tilted", "camera tilted beyond --max-tilt"),
             ("must be exactly 2:1", "not a 2:1 panorama"), ("cannot decode", "cannot decode"),
             ("cannot read", "cannot read the file"), ("is missing or empty", "its stored image is gone"),
             ("its file has changed since", "its file has changed since"))
    for needle, kind in kinds:
        if needle in reason:
            return kind
    # whole numbers only: a number inside an id or a file name is part of it (images/3ec4... read images/NecN...)
    return re.sub(r"\b\d+(\.\d+)?\b", "N", re.split(r"[:;(]|\. ", reason)[0]).strip()


def pool_summary(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    reasons = Counter(reason_kind(r["reason"]) for r in rows if r["status"] != "ok")
    out = {
        "rows": len(rows), "accepted": len(ok), "rejected": dict(reasons),
        "sources": dict(Counter(r["source"] for r in ok)), "kinds": dict(Counter(r["kind"] for r in ok)),
        "domains": dict(Counter(f"{r['domain'] or 'unknown'} ({r['domain_from'] or '-'})" for r in ok)),
        "selected": dict(Counter(r["domain"] for r in ok if r["selected"])),
        "disc_scored": sum(math.isfinite(r["disc_score"]) for r in ok),
    }
    for stage in STAGES:
        out[f"{stage}_labelled"] = sum(bool(r[f"{stage}_label"]) for r in ok)
    return out


def format_summary(s: dict) -> str:
    lines = [f"rows {s['rows']}: accepted {s['accepted']}, rejected {sum(s['rejected'].values())}"]
    for k in ("rejected", "sources", "kinds", "domains", "selected"):
        if s[k]:
            lines.append(f"  {k}: " + ", ".join(f"{n} {v}" for n, v in sorted(s[k].items())))
    lines.append("  labelled: " + ", ".join(f"{st} {s[f'{st}_labelled']}" for st in STAGES)
                 + f"; discriminator-scored {s['disc_scored']}")
    if lost := {st: n for st, n in s.get("label_files_gone", {}).items() if n}:
        lines.append("  label files gone (deleted since labelling; `dap curate label` makes them again): "
                     + ", ".join(f"{st} {n}" for st, n in lost.items()))
    return "\n".join(lines)


HISTOGRAMS = {"disc_score": "discriminator P(real) of the stage-1 label",
              "stage1_tta_absrel": "stage-1 TTA disagreement (AbsRel)",
              "tilt_deg": "estimated camera tilt (degrees)"}
"""The signals `write_histograms` plots, with their titles."""
CONTACT_SHEET = "contact_sheet_disc.png"


def histogram_name(key: str) -> str:
    return f"hist_{key}.png"


def write_histograms(rows: list[dict], out: Path) -> list[Path]:
    """One PNG per signal (discriminator score, TTA disagreement, tilt), a histogram per domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dap.io import atomic_write

    ok = [r for r in rows if r["status"] == "ok"]
    written = []
    for key, title in HISTOGRAMS.items():
        groups = {d: [r[key] for r in ok if (r["domain"] or "unknown") == d and math.isfinite(r[key])]
                  for d in sorted({r["domain"] or "unknown" for r in ok})}
        groups = {d: v for d, v in groups.items() if v}
        if not groups:
            continue
        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        ax.hist(list(groups.values()), bins=20, label=[f"{d} ({len(v)})" for d, v in groups.items()], stacked=True)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("panoramas")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / histogram_name(key)
        with atomic_write(path) as tmp:
            fig.savefig(tmp)
        plt.close(fig)
        written.append(path)
    return written


def contact_sheet(pool: Path, rows: list[dict], path: Path, *, key: str = "disc_score", stage: str = "stage1",
                  n: int = 4, height: int = 96) -> Path | None:
    """Top-n and bottom-n rows by `key`: each line RGB | label depth (turbo, 0-20 m, out of range black),
    the best first, then a gap, then the worst. None when no row has the score."""
    import cv2

    from dap.io import colorize_depth, write_rgb

    scored = [r for r in rows if r["status"] == "ok" and r[f"{stage}_label"] and math.isfinite(r[key])]
    if not scored:
        return None
    scored.sort(key=lambda r: -r[key])
    picks = scored[:n] + scored[max(n, len(scored) - n):]
    lines = []
    for i, r in enumerate(picks):
        rgb, depth, oor = labelled_arrays(pool, r, stage)
        depth[oor] = 0
        size = (2 * height, height)
        color = colorize_depth(depth, min_depth=0.0, max_depth=20.0)
        line = np.concatenate([cv2.resize((rgb * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA),
                               cv2.resize(color, size, interpolation=cv2.INTER_NEAREST)], axis=1)
        cv2.putText(line, f"{r[key]:.3f} {r['domain']}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
        lines.append(line)
        if i == n - 1 and len(picks) > n:
            lines.append(np.full((8, line.shape[1], 3), 255, np.uint8))
    write_rgb(path, np.concatenate(lines, axis=0))
    return path


PLOTS = (*map(histogram_name, HISTOGRAMS), CONTACT_SHEET)
"""What `status` may write into its plots folder (`write_histograms` and `contact_sheet`)."""


def status(pool: str | Path, plots: str | Path | None = None) -> tuple[dict, list[Path]]:
    """The pool's summary and, with `plots`, the plots written there. A plot this run has no data for is removed
    from `plots` when an earlier run wrote it: it would stand beside this run's as if it were its own."""
    pool = Path(pool)
    rows = read_manifest(pool)
    gone = {stage: {r["id"] for r in lost_labels(pool, rows, stage)} for stage in STAGES}  # one look at the files
    written: list[Path] = []
    if plots is not None:
        plots = Path(plots)
        written += write_histograms(rows, plots)
        # without the rows whose stage-1 label file is gone: the sheet reads the labels
        readable = [r for r in rows if r["id"] not in gone["stage1"]]
        sheet = contact_sheet(pool, readable, plots / CONTACT_SHEET)
        written += [sheet] if sheet else []
        for name in set(PLOTS) - {p.name for p in written}:
            (plots / name).unlink(missing_ok=True)
    summary = pool_summary(rows)
    summary["label_files_gone"] = {stage: len(ids) for stage, ids in gone.items()}
    return summary, written
