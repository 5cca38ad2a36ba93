"""codebook: FAISS k-means fit/assign, the stage's artifacts, the pixel-palette path, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from safetensors import safe_open

from pipeline.core.errors import PipelineError
from pipeline.tokenizer import files as token_files
from pipeline.tokenizer import kmeans as cb
from pipeline.tokenizer.palette import palette_decode
from stages.codebook import codebook as codebook_stage


def blob_grids(n_images: int, grid: int, centers: np.ndarray, seed: int, noise: float = 1e-3):
    """(N, grid, grid, C) float16 features: every cell is one of `centers` plus tiny noise; and blob ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, len(centers), (n_images, grid, grid))
    feats = centers[ids] + noise * rng.standard_normal((*ids.shape, centers.shape[1]))
    return feats.astype(np.float16), ids


def write_features(path: Path, train: np.ndarray, test: np.ndarray, encoder: str = "synthetic", **attrs) -> Path:
    """A features.h5 following the contract (tweak `attrs`, or edit the file after, to break it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for split, feats in (("train", train), ("val", test), ("test", test)):
            f[f"{split}/features"] = feats
            f[f"{split}/labels"] = (np.arange(len(feats)) % 10).astype(np.uint8)
        f.attrs.update(
            dict(
                encoder=encoder,
                layers=["layer3"],
                layer_channels=[train.shape[-1]],
                grid=train.shape[1],
                input_size=32,
                pool="avg",
                standardized=False,
                weights_sha256="0" * 64,
                normalization="none",
            ),
        )
        f.attrs.update(attrs)
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, repo_params):
    """A cwd with a params.yaml whose codebook section is small; returns (dir, write_params)."""
    monkeypatch.chdir(tmp_path)

    def write_params(**codebook) -> Path:
        repo_params["codebook"].update(
            dict(
                k=8,
                niter=20,
                seed=0,
                sample_size=100_000,
                max_points_per_centroid=10_000,
                init="kmeans++",
                pca_dims=None,
                device="cpu",
            )
            | codebook,
        )
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(repo_params, sort_keys=False))
        return path

    return tmp_path, write_params


CENTERS = 10.0 * np.eye(8, dtype=np.float32)  # 8 blobs, pairwise distance ~14, noise 1e-3


def test_stage_on_separated_blobs_writes_the_contract(workdir):
    root, write_params = workdir
    train, train_ids = blob_grids(40, 4, CENTERS, seed=1)
    test, test_ids = blob_grids(10, 4, CENTERS, seed=2)
    write_features(root / "data/features/features.h5", train, test)
    codebook_stage(params=write_params())

    with h5py.File(root / "data/tokens/tokens.h5") as f:
        assert f["train/tokens"].shape == (40, 16) and f["train/tokens"].dtype == np.uint16
        assert f["test/tokens"].shape == (10, 16) and f["test/labels"].dtype == np.uint8
        np.testing.assert_array_equal(f["train/labels"][:], np.arange(40) % 10)
        attrs = dict(f.attrs)
        tokens = {s: f[f"{s}/tokens"][:] for s in ("train", "test")}
    assert (attrs["k"], attrs["grid_h"], attrs["grid_w"], attrs["n_classes"]) == (8, 4, 4, 10)
    assert attrs["encoder"] == "synthetic" and attrs["feature_dim"] == 8 and list(attrs["classes"])[0] == "airplane"
    # Known clusters: each blob maps to one code and each code to one blob, on train and test alike.
    code_of_blob = {}
    for split, ids in (("train", train_ids), ("test", test_ids)):
        for blob, code in zip(ids.reshape(-1), tokens[split].reshape(-1)):
            assert code_of_blob.setdefault(blob, code) == code
    assert sorted(code_of_blob.values()) == list(range(8))

    with safe_open(root / "data/tokens/codebook.safetensors", "numpy") as f:
        centroids, meta = f.get_tensor("centroids"), json.loads(f.metadata()["codebook"])
    assert centroids.shape == (8, 8) and centroids.dtype == np.float32
    assert meta["k"] == 8 and meta["encoder"] == "synthetic" and meta["seed"] == 0
    # tokens and codebook name the same centroids; everything made from the tokens inherits the hash
    assert attrs["codebook_sha256"] == meta["codebook_sha256"] == token_files.centroids_sha256(centroids)
    assert token_files.read_meta(root / "data/tokens/tokens.h5").codebook_sha256 == attrs["codebook_sha256"]
    np.testing.assert_allclose(centroids[[code_of_blob[b] for b in range(8)]], CENTERS, atol=1e-2)

    metrics = json.loads((root / "metrics/codebook.json").read_text())
    assert metrics["rel_quant_error_train"] < 1e-4 and metrics["rel_quant_error_test"] < 1e-4
    assert metrics["dead_codes"] == 0 and 7.5 < metrics["perplexity"] <= 8.0 + 1e-9
    rows = (root / "plots/codebook_usage.csv").read_text().splitlines()
    assert rows[0] == "rank,code,count" and len(rows) == 9
    counts = [int(r.split(",")[2]) for r in rows[1:]]
    assert counts == sorted(counts, reverse=True) and sum(counts) == 40 * 16
    assert (root / "plots/codebook_usage.png").read_bytes()[:4] == b"\x89PNG"


def test_pixel_palette_tokenizer_round_trips(workdir):
    """encoder = pixels: RGB in [0, 1] on a 32x32 grid -> 1,024 tokens per image; the palette decodes them."""
    root, write_params = workdir
    palette = np.random.default_rng(0).integers(0, 256, (16, 3)).astype(np.uint8)
    rng = np.random.default_rng(1)
    images = {s: palette[rng.integers(0, 16, (n, 32, 32))] for s, n in (("train", 6), ("test", 2))}
    pixels = {s: (im / 255.0).astype(np.float16) for s, im in images.items()}
    write_features(root / "data/features/features.h5", pixels["train"], pixels["test"], encoder="pixels")
    codebook_stage(params=write_params(k=16))

    centroids = token_files.load_codebook(root / "data/tokens/codebook.safetensors")
    for split in ("train", "test"):
        with h5py.File(root / "data/tokens/tokens.h5") as f:
            tokens = f[f"{split}/tokens"][:]
        assert tokens.shape == (len(images[split]), 1024)
        decoded = palette_decode(tokens, centroids, grid=32)
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, images[split])


def test_two_codes_per_cell_quantise_the_first_codes_residual(workdir):
    """codebook.codes_per_cell = 2: every cell's two codes sit side by side, the second from a vocabulary
    offset by k; the sum of the two centroids is nearer the features than the first alone."""
    root, write_params = workdir
    rng = np.random.default_rng(0)
    train, test = (rng.standard_normal((n, 4, 4, 6)).astype(np.float16) for n in (60, 20))
    write_features(root / "data/features/features.h5", train, test)
    codebook_stage(params=write_params(k=8, codes_per_cell=2))

    with h5py.File(root / "data/tokens/tokens.h5") as f:
        tokens, attrs = f["test/tokens"][:], dict(f.attrs)
    assert tokens.shape == (20, 32) and (attrs["k"], attrs["codes_per_cell"]) == (16, 2)
    assert tokens[:, 0::2].max() < 8 and tokens[:, 1::2].min() >= 8 and tokens[:, 1::2].max() < 16
    centroids = token_files.load_codebook(root / "data/tokens/codebook.safetensors")
    assert centroids.shape == (16, 6)
    cells = test.astype(np.float32).reshape(-1, 6)
    both = centroids[tokens[:, 0::2].ravel()] + centroids[tokens[:, 1::2].ravel()]
    metrics = json.loads((root / "metrics/codebook.json").read_text())
    sst = np.square(cells - cells.mean(axis=0)).sum()
    assert metrics["rel_quant_error_test"] == pytest.approx(np.square(cells - both).sum() / sst, rel=1e-3)
    assert metrics["rel_quant_error_test"] < metrics["rel_quant_error_test_first_code"] < 1
    info = json.loads((root / "info/codebook.json").read_text())
    assert info["tokens_per_image"] == 32 and info["codes_per_cell"] == 2
    # the first code is the one-code codebook's: the same k-means on the same sample
    codebook_stage(params=write_params(k=8, codes_per_cell=1))
    with h5py.File(root / "data/tokens/tokens.h5") as f:
        np.testing.assert_array_equal(f["test/tokens"][:], tokens[:, 0::2])
    assert json.loads((root / "metrics/codebook.json").read_text())["rel_quant_error_test"] == pytest.approx(
        metrics["rel_quant_error_test_first_code"]
    )


def test_pixel_palette_takes_one_code_per_cell(workdir):
    root, write_params = workdir
    pixels = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float16)
    write_features(root / "data/features/features.h5", pixels, pixels, encoder="pixels")
    with pytest.raises(
        PipelineError, match=r"codebook.codes_per_cell = 2: the pixel palette .* set codebook.codes_per_cell to 1"
    ):
        codebook_stage(params=write_params(k=8, codes_per_cell=2))


def test_vocabulary_of_all_codes_must_fit_uint16(repo_params):
    from pipeline.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match=r"codebook.*40000 x 2 token ids do not fit uint16"):
        parse_params(repo_params | {"codebook": repo_params["codebook"] | {"k": 40_000, "codes_per_cell": 2}})


def test_palette_decode_undoes_standardisation():
    colours = np.array([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25]], dtype=np.float32)
    mean, std = np.array([0.5, 0.4, 0.3]), np.array([0.2, 0.25, 0.5])
    out = palette_decode(np.array([[1, 0, 0, 1]]), (colours - mean) / std, grid=2, mean=mean, std=std)
    assert out.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(out[0, 0, 0], [255, 0, 64])
    with pytest.raises(ValueError, match="RGB centroids"):
        palette_decode(np.zeros((1, 4), np.uint16), np.zeros((2, 8), np.float32), grid=2)


def test_same_seed_same_codebook_and_tokens():
    x = np.random.default_rng(0).standard_normal((20, 8, 8, 16)).astype(np.float16)

    def tokenise(seed):
        sample = cb.sample_vectors(x, 1000, seed)
        fit = cb.fit_kmeans(sample, 32, 10, seed, 1000)
        return sample, fit.centroids, cb.assign(x, fit.centroids).tokens

    first, again, other = tokenise(0), tokenise(0), tokenise(1)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])


def test_sample_reads_h5_like_memory_and_draws_real_cells(tmp_path, monkeypatch):
    x = np.random.default_rng(0).standard_normal((30, 4, 4, 5)).astype(np.float16)
    path = write_features(tmp_path / "f.h5", x, x[:3])
    monkeypatch.setattr(cb, "ASSIGN_BATCH_VECTORS", 48)  # several batches of 3 images: exercises the batch boundaries
    in_memory = cb.sample_vectors(x, 200, seed=3)
    with h5py.File(path) as f:
        from_h5 = cb.sample_vectors(f["train/features"], 200, seed=3)
        everything = cb.sample_vectors(f["train/features"], 10**9, seed=3)
    np.testing.assert_array_equal(in_memory, from_h5)
    rows = {r.tobytes() for r in x.astype(np.float32).reshape(-1, 5)}
    assert len(in_memory) == 200 and all(r.tobytes() in rows for r in in_memory)
    assert len({r.tobytes() for r in in_memory}) == 200  # without replacement
    np.testing.assert_array_equal(everything, x.astype(np.float32).reshape(-1, 5))


def test_layer_weights_decide_which_layer_the_codes_keep(workdir, repo_params):
    """Two 'layers' of 4 channels, each cell one of 4 blobs in each, independently: 4 codes can keep
    one layer's blobs exactly, not both. The weighted layer is the one kept; centroids stay unweighted."""
    root, write_params = workdir
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, (2, 60, 4, 4))  # (layer, image, row, col)
    eye = np.eye(4, dtype=np.float32)
    feats = np.concatenate([3.0 * eye[ids[0]], 1.0 * eye[ids[1]]], axis=-1)  # the first layer has more variance
    feats = (feats + 1e-3 * rng.standard_normal(feats.shape)).astype(np.float16)
    write_features(root / "data/features/features.h5", feats, feats[:20], layers=["a", "b"], layer_channels=[4, 4])
    repo_params["extract"]["layers"] = ["a", "b"]
    errors = {}
    for weights in ({}, {"b": 20.0}):
        codebook_stage(params=write_params(k=4, max_points_per_centroid=1000, layer_weights=weights))
        metrics = json.loads((root / "metrics/codebook.json").read_text())
        errors[str(weights)] = (metrics["rel_quant_error_test_a"], metrics["rel_quant_error_test_b"])
        centroids = token_files.load_codebook(root / "data/tokens/codebook.safetensors")
        kept = slice(0, 4) if not weights else slice(4, 8)
        # each stored centroid is one blob of the kept layer, in the features' own units (3 or 1, not 20)
        assert np.allclose(np.sort(centroids[:, kept].max(axis=1)), 3.0 if not weights else 1.0, atol=0.05)
    assert errors["{}"][0] < 0.01 < 0.5 < errors["{}"][1]  # unweighted: the larger-variance layer wins
    assert errors["{'b': 20.0}"][1] < 0.01 < 0.5 < errors["{'b': 20.0}"][0]


def _two_layer_features(rng: np.random.Generator, n_images: int = 60) -> np.ndarray:
    """Layer a: 1 channel of wide Gaussian noise (no clusters); layer b: 3 narrow channels, each cell at one
    of 4 corners of a tetrahedron of edge ~0.3. Plain k-means with 4 codes cuts the wide layer; whitened, the
    corners win."""
    wide = 10 * rng.standard_normal((n_images, 4, 4, 1))
    tetrahedron = 0.1 * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    corners = tetrahedron[rng.integers(0, 4, (n_images, 4, 4))]
    corners = corners + 1e-3 * rng.standard_normal(corners.shape)
    return np.concatenate([wide, corners], axis=-1).astype(np.float16)


def test_whitening_lets_the_codes_find_low_variance_clusters(workdir, repo_params):
    root, write_params = workdir
    feats = _two_layer_features(np.random.default_rng(0))
    write_features(root / "data/features/features.h5", feats, feats[:20], layers=["a", "b"], layer_channels=[1, 3])
    repo_params["extract"]["layers"] = ["a", "b"]
    errors = {}
    for whiten in (False, True):
        codebook_stage(params=write_params(k=4, max_points_per_centroid=1000, whiten=whiten))
        metrics = json.loads((root / "metrics/codebook.json").read_text())
        errors[whiten] = metrics["rel_quant_error_test_b"]
        assert metrics["pca_variance_kept"] == pytest.approx(1.0)  # whitening alone drops no component
        centroids = token_files.load_codebook(root / "data/tokens/codebook.safetensors")
        assert centroids.shape == (4, 4)  # stored in the feature space
    assert errors[True] < 0.01 < 0.5 < errors[False]
    with safe_open(root / "data/tokens/codebook.safetensors", "np") as f:
        made = json.loads(f.metadata()["codebook"])
    assert made["whiten"] is True and made["pca_dims"] is None


def test_whitening_survives_directions_without_variance():
    """Channels that are linear mixtures of others (as neighbouring stem values nearly are) leave directions of
    no variance, whose eigenvalues FAISS computes as 0 or slightly negative: whitening must not divide by them
    (k-means would then refuse the NaNs)."""
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((20_000, 40)).astype(np.float32)
    sample[:, 20:] = sample[:, :20] @ rng.standard_normal((20, 20)).astype(np.float32)
    space = cb.search_space(sample, None, None, whiten=True)
    mapped = space(sample)
    assert np.isfinite(mapped).all() and mapped.shape == (20_000, 40)
    assert np.isfinite(cb.fit_kmeans(mapped, 8, 5, 0, 1000).centroids).all()


def test_pca_keeps_the_leading_components_and_stores_feature_space_centroids(workdir):
    """8 blobs in a 3-dim subspace of 8 dims, tiny noise elsewhere: k-means on 3 principal components finds
    the same codes as on all 8 dims, and the stored centroids are the blob centres in the original 8 dims."""
    root, write_params = workdir
    centers = 10.0 * np.random.default_rng(1).standard_normal((8, 3)) @ np.random.default_rng(2).standard_normal((3, 8))
    train, ids = blob_grids(80, 4, centers.astype(np.float32), seed=3)
    write_features(root / "data/features/features.h5", train, train[:20])
    codebook_stage(params=write_params(pca_dims=3))
    metrics = json.loads((root / "metrics/codebook.json").read_text())
    assert metrics["pca_variance_kept"] > 0.999 and metrics["rel_quant_error_test"] < 1e-4
    centroids = token_files.load_codebook(root / "data/tokens/codebook.safetensors")
    assert centroids.shape == (8, 8)
    assert np.abs(np.sort(centroids, axis=0) - np.sort(centers, axis=0)).max() < 0.01
    with h5py.File(root / "data/tokens/tokens.h5") as f:
        tokens = f["train/tokens"][:]
    # one code per blob: the token of a cell is a relabelling of its blob id
    assert len(set(zip(tokens.ravel().tolist(), ids.reshape(len(ids), -1).ravel().tolist()))) == 8

    with pytest.raises(
        PipelineError, match=r"codebook.pca_dims = 9, but the features have 8 dims; set it to at most 8"
    ):
        codebook_stage(params=write_params(pca_dims=9))


def test_layer_weights_name_extracted_layers_and_are_positive(repo_params):
    from pipeline.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match="layer_weights.*not in extract.layers"):
        parse_params(repo_params | {"codebook": repo_params["codebook"] | {"layer_weights": {"layer9": 2.0}}})
    with pytest.raises(ParamsError, match="layer_weights.*must be > 0"):
        parse_params(repo_params | {"codebook": repo_params["codebook"] | {"layer_weights": {"stem": 0.0}}})


def test_features_without_layer_channels_say_rerun_extract(workdir):
    root, write_params = workdir
    train, _ = blob_grids(40, 4, CENTERS, seed=1)
    path = write_features(root / "data/features/features.h5", train, train[:10])
    with h5py.File(path, "a") as f:
        del f.attrs["layer_channels"]
    with pytest.raises(PipelineError, match="no layer_channels.*re-run the extract stage"):
        codebook_stage(params=write_params())


def test_max_points_per_centroid_is_honoured():
    """FAISS's objective sums over the points it trained on: k * max_points_per_centroid of them."""
    x = np.random.default_rng(0).standard_normal((4000, 8)).astype(np.float32)
    sub = cb.fit_kmeans(x, 4, 10, 0, max_points_per_centroid=10)
    full = cb.fit_kmeans(x, 4, 10, 0, max_points_per_centroid=1000)
    assert (sub.n_fit, full.n_fit) == (40, 4000)
    assert sub.objective < full.objective / 50  # ~1/100 of the points
    sse = cb.assign(x.reshape(4000, 1, 1, 8), full.centroids).sse
    assert 0.95 * full.objective < sse <= full.objective * 1.0001


def test_relative_error_and_usage_metrics():
    x = np.random.default_rng(0).standard_normal((50, 2, 2, 4)).astype(np.float32)
    mean_only = cb.assign(x, x.reshape(-1, 4).mean(0, keepdims=True))
    assert mean_only.relative_error == pytest.approx(1.0, rel=1e-6)  # the mean explains no variance
    assert cb.assign(x, np.unique(x.reshape(-1, 4), axis=0)).relative_error == pytest.approx(0.0, abs=1e-9)
    counts = cb.code_counts(np.array([[0, 0, 1, 3]], np.uint16), k=5)
    np.testing.assert_array_equal(counts, [2, 1, 0, 1, 0])
    assert cb.perplexity(np.array([5, 5, 5, 5])) == pytest.approx(4.0)
    assert cb.perplexity(np.array([9, 0, 0])) == pytest.approx(1.0)


def _drop(name):
    def edit(f):
        del f[name]

    return edit


def _replace(name, data):
    def edit(f):
        del f[name]
        f[name] = data

    return edit


@pytest.mark.parametrize(
    "edit, words",
    [
        (_drop("test/labels"), "missing dataset test/labels"),
        (_replace("train/features", np.zeros((4, 4, 4, 8), np.int32)), "dtype int32"),
        (_replace("train/features", np.zeros((4, 16, 8), np.float16)), "expected a non-empty (N, H, W, C)"),
        (_replace("test/features", np.zeros((2, 4, 4, 6), np.float16)), "but test are (4, 4, 6)"),
        (_replace("train/labels", np.zeros(3, np.uint8)), "expected uint8 (4,)"),
        (lambda f: f.attrs.__setitem__("grid", 8), "grid = 8 does not match the feature grid 4 x 4"),
        (lambda f: f.attrs.__delitem__("encoder"), "attributes ['encoder'] missing"),
    ],
)
def test_malformed_features_name_the_file_and_the_fix(workdir, edit, words):
    root, write_params = workdir
    path = write_features(root / "data/features/features.h5", *(np.zeros((n, 4, 4, 8), np.float16) for n in (4, 2)))
    with h5py.File(path, "a") as f:
        edit(f)
    with pytest.raises(PipelineError) as err:
        codebook_stage(params=write_params())
    assert "data/features/features.h5" in str(err.value) and "extract" in str(err.value)
    assert words in str(err.value)
    assert not (root / "data/tokens").exists()


def test_too_few_vectors_for_k(workdir):
    root, write_params = workdir
    write_features(root / "data/features/features.h5", *blob_grids(2, 2, CENTERS, seed=0)[:1] * 2)
    with pytest.raises(PipelineError, match="only 8 training vectors for k = 16.*codebook.k"):
        codebook_stage(params=write_params(k=16))


@pytest.mark.skipif(cb.faiss.get_num_gpus() > 0, reason="this FAISS build has a GPU")
def test_cuda_without_faiss_gpu_is_a_clear_error():
    with pytest.raises(PipelineError, match="codebook.device = 'cuda'.*make faiss-gpu.*'auto' or 'cpu'"):
        cb.use_faiss_gpu("cuda")
    assert not cb.use_faiss_gpu("auto")


def test_missing_features_file_says_run_extract(workdir):
    _, write_params = workdir
    with pytest.raises(PipelineError, match="features.h5: features not found; run the extract stage"):
        codebook_stage(params=write_params())
