"""train: data/tokens/tokens.h5 -> GPT (data/models/gpt), metrics/train.json, plots/train_loss.*

Resumes from data/checkpoints/gpt (persisted by DVC) after an interruption. Multi-GPU:
`torchrun --nproc_per_node=N -m stages train` (train.batch_size is the global batch).
"""

import logging
from pathlib import Path

from pipeline.gpt_training import TrainPaths, distributed, train as train_gpt
from pipeline.params import load_params
from stages import PARAMS_OPTION, app
from stages.paths import GPT_CHECKPOINTS, GPT_DIR, METRICS, PLOTS, TOKENS

log = logging.getLogger(__name__)


@app.command()
def train(params: Path = PARAMS_OPTION) -> None:
    """Train the token GPT (resumable; DDP under torchrun)."""
    p = load_params(params).train
    paths = TrainPaths(TOKENS, GPT_DIR, GPT_CHECKPOINTS, METRICS / "train.json", PLOTS)
    with distributed(p.device) as info:
        train_gpt(p, paths, info)
