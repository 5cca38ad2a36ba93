"""Device choice, precision context and logging shared by every stage."""

from __future__ import annotations

import logging

import torch

from pipeline.core.errors import PipelineError

log = logging.getLogger("pipeline")


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"device: {device!r} was asked for but CUDA is not available here; set the stage's "
                            "device param to 'auto' or 'cpu'")
    return torch.device(device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast context when asked for, a no-op context for fp32."""
    enabled = precision == "bf16"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)
