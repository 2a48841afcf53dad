"""Training DAP (`dap train`): one process or under torchrun (`-m dap.train`), resumable bit for bit.

config         TrainConfig and its sections, load_config (YAML + --set overrides), the checks
data           data sources, loader items as training samples, the seeded mixture, the validation set
distributed    joining a torchrun job (Dist), reductions across ranks
checkpoints    the run folder: checkpoints (list/load/save/prune), RNG states, metrics.jsonl
loop           model and optimiser, LR schedule, EMA, validation, `train`
See docs/training.md.
"""

from dap.errors import CheckpointError, RunExistsError
from dap.losses import RANGE_THRESHOLDS
from dap.train.checkpoints import (
    CHECKPOINT_VERSION,
    check_run_folder,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    read_metrics,
)
from dap.train.config import (
    DataSection,
    ModelSection,
    OptimSection,
    RunSection,
    SourceConfig,
    TrainConfig,
    _build,
    _merge,
    check_config,
    load_config,
)
from dap.train.data import (
    MixtureDataset,
    MixtureSampler,
    RenderedSynthetic,
    RoomsDataset,
    ValidationSet,
    augment_sample,
    build_source,
    resize_sample,
    seed_of,
    to_training_sample,
)
from dap.train.distributed import Dist, setup_distributed
from dap.train.loop import TrainResult, build_model, ema_decay_at, ema_update, lr_factor, train, validate

__all__ = [
    "CHECKPOINT_VERSION", "RANGE_THRESHOLDS", "CheckpointError", "DataSection", "Dist", "MixtureDataset",
    "MixtureSampler", "ModelSection", "OptimSection", "RenderedSynthetic", "RoomsDataset", "RunExistsError",
    "RunSection", "SourceConfig", "TrainConfig", "TrainResult", "ValidationSet", "_build", "check_config",
    "_merge", "augment_sample", "build_model", "build_source", "check_run_folder", "checkpoint_step",
    "ema_decay_at", "ema_update", "list_checkpoints", "load_checkpoint", "load_config", "lr_factor",
    "read_metrics", "resize_sample", "seed_of", "setup_distributed", "to_training_sample", "train", "validate",
]
