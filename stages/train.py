"""train: data/tokens/tokens.h5 -> GPT (data/models/gpt), metrics/train.json, plots/train_loss.*

Resumes from data/checkpoints/gpt (persisted by DVC) after an interruption, when params, tokens and
code are unchanged. Multi-GPU: `torchrun --nproc_per_node=N -m stages train` (train.batch_size is the
global batch).
"""

import logging
from pathlib import Path

from pipeline.paths import GPT_CHECKPOINTS, GPT_DIR, PLOTS, TOKENS, results_paths
from stages import PARAMS_OPTION, app

log = logging.getLogger(__name__)


@app.command()
def train(params: Path = PARAMS_OPTION) -> None:
    """Train the token GPT (resumable; DDP under torchrun)."""
    import torch

    from pipeline.core.hashing import code_sha256
    from pipeline.core.results import write_results
    from pipeline.core.runtime import resolve_precision
    from pipeline.gpt.training import TrainPaths, distributed
    from pipeline.gpt.training import train as train_gpt
    from pipeline.hints import slow_cpu_hint
    from pipeline.params import load_params

    p = load_params(params).train
    paths = TrainPaths(TOKENS, GPT_DIR, GPT_CHECKPOINTS, PLOTS)
    with distributed(p.device) as info:
        if info.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for the fp32 parts
        precision = resolve_precision(p.precision, info.device, "train.precision")
        hint = slow_cpu_hint("train", p, precision) if info.device.type == "cpu" else ""
        results = train_gpt(p, paths, info, precision=precision, code=code_sha256("train"), slow_hint=hint)
        if info.main:
            written = write_results(results, results_paths("train"))
            m = results.metrics
            log.info(
                "saved epoch %d of %d (lowest validation NLL %.4f nats/token = %.1f bits/image) -> %s, %s, %s",
                m["gpt_best_epoch"],
                results.info["epochs"],
                m["val_nll"],
                m["val_bits_per_image"],
                GPT_DIR,
                *written,
            )
