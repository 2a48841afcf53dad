"""Data-in-the-loop curation (the DAP paper's three-stage pseudo-labelling): ingest an unlabeled pool, label
it with a Scene-Invariant Labeler, score the labels with a depth-quality discriminator, keep the top-k per
domain, train a Realism-Invariant Labeler, re-label, and train on the result. See docs/curation.md."""

from dap.curation.discriminator import DepthDiscriminator, train_discriminator
from dap.curation.ingest import IngestOptions, ingest
from dap.curation.label import LabelOptions, label_pool
from dap.curation.manifest import PseudoLabelDataset, read_manifest, write_manifest
from dap.curation.pipeline import CurateConfig, Pipeline, load_curate_config
from dap.curation.selection import score_pool, select_pool, select_top_k

__all__ = [
    "CurateConfig", "DepthDiscriminator", "IngestOptions", "LabelOptions", "Pipeline", "PseudoLabelDataset",
    "ingest", "label_pool", "load_curate_config", "read_manifest", "score_pool", "select_pool", "select_top_k",
    "train_discriminator", "write_manifest",
]
