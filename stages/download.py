"""download: CIFAR-10 (torchvision download or a local file) -> data/raw/cifar10.h5."""

import logging
from pathlib import Path

from stages import PARAMS_OPTION, app
from pipeline.paths import RAW

log = logging.getLogger(__name__)


@app.command()
def download(params: Path = PARAMS_OPTION) -> None:
    """Get CIFAR-10 and write it, validated, to data/raw/cifar10.h5."""
    from pipeline.data import cifar10
    from pipeline.params import load_params

    p = load_params(params).download
    log.info("loading CIFAR-10 from %s", p.source)
    data = cifar10.load_source(p.source, p.cache_dir)
    data = cifar10.validate(data, {"train": p.expect_train, "test": p.expect_test})
    counts = cifar10.write_h5(data, RAW, p.val_size, p.val_seed)
    log.info("wrote %s: %s images", RAW, counts)
