"""Typed, validated view of params.yaml.

params.yaml is the single source of settings. It is parsed here once, at the edge, into frozen
pydantic models; every stage receives the typed section(s) it needs and nothing else. A bad value
fails with a message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.core.errors import PipelineError

DEFAULT_PARAMS = Path("params.yaml")
CPU_PRESET = Path("presets/cpu.args")  # `-S section.key=value` overrides, one per line
CPU_PRESET_COMMAND = f"dvc exp run $(grep -v '^#' {CPU_PRESET})"
CHECKOUT_PRESET = Path(__file__).resolve().parents[1] / CPU_PRESET  # the same file, wherever the cwd is

Device = Literal["auto", "cpu", "cuda"]
# auto: what the hardware does natively (pipeline/core/runtime.py has the table); fp16 is for CUDA
# cards without bf16.
Precision = Literal["auto", "fp32", "bf16", "fp16"]
# torch.compile mode of the GPT step (none: eager); auto: default mode on one GPU, else eager (docs/benchmarks.md)
Compile = Literal["auto", "none", "default", "reduce-overhead"]
# Inception features: an explicit precision, never hardware-dependent, so references compare across machines.
FeaturePrecision = Literal["auto", "fp32", "bf16"]  # auto: bf16 on a CPU with native bf16, else fp32
Evaluator = Literal["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56"]  # pre-trained classifiers


class ParamsError(PipelineError):
    """A params.yaml value is missing, of the wrong type or out of range."""


class Section(BaseModel):
    # strict: YAML `true` is no epoch count and `1` no switch (lax pydantic would take them as 1 and True);
    # an integer is still a valid float (`-S train.lr=1`). No float may be inf or nan (`.inf` is valid YAML):
    # a non-finite learning rate or weight trains a model of NaNs that would be saved as a success.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DownloadParams(Section):
    # "torchvision" downloads with torchvision.datasets.CIFAR10 into cache_dir; anything else is a
    # path to a local .npz (x_train, y_train, x_test, y_test) or a cifar-10-batches-py folder.
    source: str
    cache_dir: str
    # Expected image counts; a source with other counts is rejected (null: accept any count).
    expect_train: int | None = Field(ge=1)
    expect_test: int | None = Field(ge=1)
    # Validation split: this many training images (the same number per class, drawn with val_seed) are
    # held out for model selection; the test split is read only by the evaluate stage.
    val_size: int = Field(ge=10)
    val_seed: int = Field(ge=0)


class ExtractParams(Section):
    # Registry name, see pipeline.features.encoders: cifar_resnet20/32/44/56, resnet18, resnet50, vgg16_bn,
    # efficientnet_lite0, or "pixels" (the classic demo's pixel-palette tokenizer).
    encoder: str
    layers: list[str]
    grid: int = Field(ge=1, le=64)  # every layer is pooled/resized to grid x grid and concatenated
    pool: Literal["avg", "unshuffle"]  # how a layer larger than the grid is brought to it
    input_size: int = Field(ge=8, le=512)  # images are resized to this before the encoder
    standardize: bool  # per-channel mean/std fitted on train
    flip: bool  # also encode every train image mirrored left-right (augmentation for the GPT)
    batch_size: int = Field(ge=1)
    precision: Precision
    device: Device


class CodebookParams(Section):
    k: int = Field(ge=2, le=65_535)  # tokens are stored as uint16
    niter: int = Field(ge=1)
    seed: int = Field(ge=0)
    sample_size: int = Field(ge=1)  # training vectors sampled for k-means
    # FAISS silently subsamples to this many points per centroid; set explicitly.
    max_points_per_centroid: int = Field(ge=1)
    init: Literal["random", "kmeans++"]  # FAISS centroid initialisation
    # extract layer -> factor on its standardised features before k-means (unnamed layers: 1): a layer at w
    # counts w^2 in the distance, so the codes spend more of themselves on it. Centroids are stored unweighted.
    layer_weights: dict[str, float]
    # k-means on the first pca_dims principal components of the (weighted) features (null: all dims, no PCA);
    # whiten: each component scaled to unit variance first (k-means in the Mahalanobis metric)
    pca_dims: int | None = Field(ge=1)
    whiten: bool
    # residual quantisation: code 2 of a cell quantises what code 1 left (k more codes, k-means on the features'
    # residuals, unweighted, no PCA), and so on; tokens per image = grid^2 x this, the GPT's vocabulary k x this
    codes_per_cell: int = Field(ge=1, le=8)
    device: Device

    @field_validator("layer_weights")
    @classmethod
    def _positive_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        bad = {name: w for name, w in weights.items() if not w > 0}
        if bad:
            raise ValueError(f"weights must be > 0 (drop a layer from extract.layers instead), got {bad}")
        return weights

    @model_validator(mode="after")
    def _vocabulary_fits_uint16(self) -> CodebookParams:
        if self.k * self.codes_per_cell > 65_536:
            raise ValueError(
                f"k x codes_per_cell = {self.k} x {self.codes_per_cell} token ids do not fit uint16 tokens; "
                "keep their product <= 65,536"
            )
        return self

    @model_validator(mode="after")
    def _pca_fits_the_sample(self) -> CodebookParams:
        if self.pca_dims is not None and self.pca_dims > self.sample_size:
            raise ValueError(
                f"pca_dims ({self.pca_dims}) exceeds sample_size ({self.sample_size}): the PCA is fitted on the "
                f"sampled cells, which need at least as many as its dims; raise sample_size or lower pca_dims"
            )
        return self


class AdversarialParams(Section):
    # The decoder's PatchGAN term, VQGAN-style (pipeline/tokenizer/adversarial.py). weight 0: off, the decoder
    # trains on its pixel + perceptual loss alone.
    weight: float = Field(ge=0)  # x lambda: VQGAN's adaptive weight (adaptive) or 1
    adaptive: bool
    start_step: int = Field(ge=0)  # the discriminator and the term start at this decoder step
    loss: Literal["hinge", "non_saturating"]
    lr: float = Field(gt=0)  # the discriminator's AdamW, on the decoder's warm-up + cosine schedule
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    channels: int = Field(ge=8)  # the discriminator's first width, doubling per layer (at most 8x)
    layers: int = Field(ge=1, le=3)  # stride-2 convolutions before the patch logits
    spectral_norm: bool
    r1_gamma: float = Field(ge=0)  # R1 gradient penalty on real images (0: off)


class DecoderParams(Section):
    channels: int = Field(ge=8)  # width at the token grid; halves (to >= 32) at each 2x upsampling
    res_blocks: int = Field(ge=0)  # residual blocks at the token grid
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)  # linear warm-up, then cosine decay to 0
    weight_decay: float = Field(ge=0)
    pixel_loss: Literal["l1", "mse"]
    perceptual_weight: float = Field(ge=0)
    # fraction of training cells whose token is swapped for a random code: robustness to a GPT's wrong codes
    token_noise: float = Field(ge=0, lt=1)
    # the epoch kept: highest val PSNR, or lowest Inception FID of the curve's val reconstructions against the
    # reference's train statistics (an adversarial term trades PSNR for realism, so PSNR would reject it)
    select: Literal["psnr", "fid"]
    seed: int = Field(ge=0)
    precision: Precision
    device: Device
    adversarial: AdversarialParams


class TrainParams(Section):
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_embd: int = Field(ge=8)
    dropout: float = Field(ge=0, lt=1)
    # docs/attention_study.md. Which earlier slots each layer attends to (pipeline/gpt/attention_masks.py).
    attention: Literal["full", "local", "axial", "strided"]
    window: int = Field(ge=1)  # local: the slots each one sees, itself included
    # grouped-query attention: n_head / n_kv_head query heads share each key/value head (null: n_head, plain MHA)
    n_kv_head: int | None = Field(ge=1)
    pos_emb: Literal["1d", "2d", "rope2d", "none"]
    conditional: bool
    label_dropout: float = Field(ge=0, le=1)
    flip: bool  # each epoch, each image as it is or mirrored (needs extract.flip), half and half
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    min_lr: float = Field(ge=0)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    grad_clip: float = Field(ge=0)
    seed: int = Field(ge=0)
    precision: Precision
    compile: Compile
    device: Device

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TrainParams:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                f"e.g. n_head in {_divisors(self.n_embd, 16)}"
            )
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(
                f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head}); "
                f"e.g. n_kv_head in {_divisors(self.n_head, self.n_head)} or null (one per query head)"
            )
        head_dim = self.n_embd // self.n_head
        if self.pos_emb == "rope2d" and head_dim % 4:
            raise ValueError(
                f"pos_emb rope2d needs a head width n_embd / n_head ({head_dim}) divisible by 4 (half of it "
                f"rotates by row, half by column, in pairs); e.g. n_head in "
                f"{[h for h in _divisors(self.n_embd, 16) if self.n_embd // h % 4 == 0]}"
            )
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        return self


def _divisors(n: int, up_to: int) -> list[int]:
    return [d for d in range(1, up_to + 1) if n % d == 0]


class SampleParams(Section):
    n_per_class: int = Field(ge=1)  # conditional models; unconditional: n_per_class * 10 images
    temperature: float = Field(gt=0)
    top_k: int | None = Field(ge=1)
    top_p: float | None = Field(gt=0, le=1)
    cfg_scale: float = Field(ge=0)  # classifier-free guidance; 1.0 = off
    batch_size: int = Field(ge=1)
    seed: int = Field(ge=0)
    device: Device


class ReferenceParams(Section):
    # Real images whose Inception features are the reference: a seeded subset of each split (null: all).
    # Sample FID/KID compare with the train statistics, rFID and the floor use the test set.
    n_train: int | None = Field(ge=2)
    n_test: int | None = Field(ge=2)
    kid_images: int = Field(ge=2)  # train features kept (a seeded subset) for the samples' KID
    batch_size: int = Field(ge=1)
    precision: FeaturePrecision  # of the Inception features; evaluate and reconstruct use the same
    seed: int = Field(ge=0)
    device: Device


class ReconstructParams(Section):
    # Test images reconstructed from their tokens and scored (the first n; null: all, as published rFIDs).
    n_images: int | None = Field(ge=2)
    batch_size: int = Field(ge=1)
    device: Device


class EvaluateParams(Section):
    # The classifier that scores images (reconstructions in the reconstruct stage, samples here). It must
    # not be the tokenizer's own network (extract.encoder): see Params._evaluator_is_independent.
    evaluator: Evaluator
    # Samples scored (a seeded subset of data/samples, which must hold at least this many): Inception
    # FID/KID against the train statistics and, for the floor, as many test images the same way. FID
    # depends on the set size, so every FID of this stage uses this many images.
    n_samples: int = Field(ge=2)
    batch_size: int = Field(ge=1)
    kid_subset_size: int = Field(ge=2)  # KID averages over 100 random subsets of this size
    seed: int = Field(ge=0)  # the subset of samples and the KID subsets
    device: Device

    @model_validator(mode="after")
    def _kid_subset_fits(self) -> EvaluateParams:
        if self.kid_subset_size > self.n_samples:
            raise ValueError(f"kid_subset_size ({self.kid_subset_size}) must not exceed n_samples ({self.n_samples})")
        return self


class Params(Section):
    download: DownloadParams
    extract: ExtractParams
    codebook: CodebookParams
    decoder: DecoderParams
    train: TrainParams
    sample: SampleParams
    reference: ReferenceParams
    reconstruct: ReconstructParams
    evaluate: EvaluateParams

    @field_validator("*", mode="before")
    @classmethod
    def _section_is_mapping(cls, value):
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"expected a mapping of keys, got {type(value).__name__}")
        return value if value is not None else {}

    @model_validator(mode="after")
    def _weighted_layers_exist(self) -> Params:
        unknown = sorted(set(self.codebook.layer_weights) - set(self.extract.layers))
        if unknown:
            raise ValueError(
                f"codebook.layer_weights names {unknown}, which are not in extract.layers {self.extract.layers}; "
                "weight only extracted layers"
            )
        return self

    @model_validator(mode="after")
    def _evaluator_is_independent(self) -> Params:
        if self.evaluate.evaluator == self.extract.encoder:
            raise ValueError(
                f"evaluate.evaluator = {self.evaluate.evaluator!r} is also extract.encoder, the tokenizer's network "
                "(its features are the tokens and the decoder's perceptual loss): an evaluator must be independent "
                "of what it grades; set evaluate.evaluator to another of " + ", ".join(Evaluator.__args__)
            )
        return self


def _explain(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: {error.error_count()} invalid value(s)"]
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<top level>"
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a rule across sections: its message names the keys
            lines.append(f"  {msg}")
        elif e["type"] == "value_error" and len(e["loc"]) == 1:  # a rule across a section's keys: no input dump
            lines.append(f"  {key}: {msg}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; allowed keys are in pipeline/params.py)")
        elif e["type"] == "missing":
            lines.append(f"  {key}: missing")
        elif e["type"] == "finite_number":
            lines.append(f"  {key} = {e.get('input')!r}: must be a finite number (inf and nan train models of NaNs)")
        else:
            lines.append(f"  {key} = {e.get('input')!r}: {msg}")
    return "\n".join(lines)


def parse_params(raw: dict, path: Path = DEFAULT_PARAMS) -> Params:
    """Validate a params mapping (as loaded from YAML) into typed sections."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of stage sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise ParamsError(_explain(e, path)) from None


class _Yaml12Floats(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where a float needs a dot: `1e-06` is a string there. DVC (YAML 1.2) writes
    exactly that for `dvc exp run -S train.min_lr=1e-6`, and researchers type `lr: 3e-4`: read those as floats."""


_Yaml12Floats.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_yaml(text: str):
    """Parse params YAML as DVC does (YAML 1.2 floats), safely (no arbitrary objects)."""
    return yaml.load(text, Loader=_Yaml12Floats)  # a SafeLoader subclass: plain data only


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root or pass --params)")
    try:
        return read_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    return parse_params(_read(Path(path)), Path(path))


def load_cpu_preset(path: str | Path = DEFAULT_PARAMS, args_file: str | Path = CHECKOUT_PRESET) -> Params:
    """params.yaml with the CPU preset applied, as `dvc exp run $(grep -v '^#' presets/cpu.args)` sees it."""
    return parse_params(apply_overrides(_read(Path(path)), args_file), Path(path))


def preset_words(args_file: str | Path = CHECKOUT_PRESET) -> list[str]:
    """The words of a preset file (the CPU preset's format, `#` comments allowed) as the shell splits
    them: `-S`, `section.key=value`, ... - the arguments `dvc exp run` gets."""
    return [w for line in Path(args_file).read_text().splitlines() for w in shlex.split(line, comments=True)]


def preset_overrides(args_file: str | Path = CHECKOUT_PRESET) -> dict[str, dict]:
    """The `-S section.key=value` overrides of `args_file` as {section: {key: value}}, values parsed as
    YAML like `dvc exp run -S` parses them."""
    return overrides_of(preset_words(args_file), str(args_file))


def overrides_of(words: list[str], source: str) -> dict[str, dict]:
    """`-S section.key=value` words (a preset's, a study's) as {section: {key: value}}; `source` names them in errors.
    As in `dvc exp run -S`, a key may go deeper (`section.key.sub=value`) and `+` may mark a new one."""
    overrides: dict[str, dict] = {}
    for flag, override in zip(words[::2], words[1::2]):
        key, sep, value = override.removeprefix("+").partition("=")
        section, *path = key.split(".")
        if flag != "-S" or not sep or not path or section not in Params.model_fields:
            raise ParamsError(f"{source}: expected `-S section.key=value` pairs, got {flag!r} {override!r}")
        node = overrides.setdefault(section, {})
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = read_yaml(value)
    if len(words) % 2:
        raise ParamsError(f"{source}: `{words[-1]}` has no value; expected `-S section.key=value` pairs")
    return overrides


def apply_overrides(raw: dict, args_file: str | Path) -> dict:
    """A copy of the params mapping `raw` with the overrides of `args_file` (`preset_overrides`) applied."""
    return apply_words(raw, preset_words(args_file), str(args_file))


def apply_words(raw: dict, words: list[str], source: str) -> dict:
    """A copy of the params mapping `raw` with `-S` words (`overrides_of`) applied; `source` names them in errors."""
    raw = copy.deepcopy(raw)
    for section, values in overrides_of(words, source).items():
        if not isinstance(raw.get(section), dict):
            raise ParamsError(f"{source}: sets {section}.* but the params have no {section!r} section")
        _merge(raw[section], values)
    return raw


def _merge(target: dict, values: dict) -> None:
    """Set every leaf of `values` in `target`, keeping the keys of `target`'s nested mappings it does not set."""
    for key, value in values.items():
        if isinstance(value, dict) and value and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def cpu_preset_differences(section: str, values: Section, args_file: str | Path = CHECKOUT_PRESET) -> list[str]:
    """`section.key` of every CPU-preset override that `values` (that section's params) does not follow."""
    preset = preset_overrides(args_file).get(section, {})
    return [f"{section}.{key}" for key, value in preset.items() if getattr(values, key) != value]


def declared_keys(stage: str, dvc_yaml: str | Path = "dvc.yaml") -> list[str] | None:
    """The params keys (`section` or `section.key`) that dvc.yaml declares for `stage`; None where there is no
    readable dvc.yaml naming the stage (a stage run by hand outside a checkout)."""
    try:
        stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
        return [str(k) for k in stages[stage].get("params", [])]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def params_values(path: str | Path, keys: list[str] | None) -> object:
    """The values of `keys` in the params file `path` (every section when `keys` is None), to tell whether the
    params a stage read changed while it ran: DVC records the values it finds AFTER the stage, in dvc.lock."""
    try:
        raw = read_yaml(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        return f"unreadable: {e}"
    if keys is None or not isinstance(raw, dict):
        return raw
    values = {}
    for key in keys:
        node = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = node
    return values
