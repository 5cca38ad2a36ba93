"""Pre-trained weight files in the torch hub cache ($TORCH_HOME/hub/checkpoints), verified before every use.

torch.hub names a published file `<name>-<first hex digits of its sha256>.<ext>` but checks that prefix
only while it downloads; a file already in the cache is loaded as it is, truncated or modified. Here
each use hashes the file first and compares it with the published digest (the full one where the
project knows it, else the prefix in the name): a damaged file is a PipelineError naming it and the
fix, never a load error or silently different weights. The hash returned is the file's real one.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch

from pipeline.core.errors import PipelineError
from pipeline.core.hashing import sha256_file


def hub_path(url: str) -> Path:
    """Where torch.hub caches the file of `url`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def published_hash(url: str, sha256: str | None = None) -> str:
    """The digest (or digest prefix) the file of `url` must have: `sha256`, else the prefix in its name."""
    match = torch.hub.HASH_REGEX.search(hub_path(url).name)
    return sha256 or (match.group(1) if match else "")


def verified_weights(url: str, sha256: str | None = None) -> tuple[Path, str]:
    """(path, real sha256) of the published weights at `url`: from the hub cache, downloaded when absent
    (and online), and checked against their published hash either way."""
    path, expected = hub_path(url), published_hash(url, sha256)
    if not path.is_file():
        _download(url, path, expected)
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise PipelineError(
            f"{path}: sha256 {actual[:16]}... is not the published {expected[:16]}... of {path.name}: the file is "
            f"truncated or modified. Delete it and run again online to download it again from {url}, or put the "
            f"published file there (or set TORCH_HOME to a folder whose hub/checkpoints/ holds it)"
        )
    return path, actual


def _download(url: str, path: Path, expected: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=expected or None, progress=True)
    except OSError as e:  # URLError is an OSError: offline
        raise PipelineError(
            f"{path}: not in the torch hub cache and cannot be downloaded ({e}); put the published "
            f"{path.name} there, or set TORCH_HOME to a folder whose hub/checkpoints/ holds it "
            "(e.g. TORCH_HOME=../shared/torch-home)"
        ) from None
    except RuntimeError as e:  # torch.hub's hash check of the download
        raise PipelineError(f"{url}: the download does not match its published hash ({e}); try again later") from None
