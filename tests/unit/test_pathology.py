"""Tests for the PathMNIST generator and the MedMNIST npz reader/writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from synthetic.errors import DataFormatError
from synthetic.pathology import (
    CLASS_NAMES,
    CLASS_SHARES,
    SPLITS,
    Stain,
    generate_pathmnist,
    load_pathmnist_npz,
    save_pathmnist_npz,
)

# Another engineer's tests share this two-core machine.
torch.set_num_threads(1)

ADIPOSE, BACKGROUND, LYMPHOCYTES, MUSCLE, TUMOUR = 0, 1, 3, 5, 8


@pytest.fixture(scope="module")
def sample() -> tuple[np.ndarray, np.ndarray]:
    return generate_pathmnist(1800, seed=5)


def _medmnist_arrays(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays with MedMNIST's real key names, dtypes and (N, 1) label shape."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in SPLITS:
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 9, (n, 1), dtype=np.uint8)
    return arrays


def _write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez_compressed(path, **arrays)
    return path


# --- generator -------------------------------------------------------------------------------


def test_constants_describe_nine_pathmnist_classes() -> None:
    assert len(CLASS_NAMES) == 9
    assert CLASS_NAMES[0] == "adipose" and CLASS_NAMES[8].startswith("colorectal adeno")
    assert CLASS_SHARES.shape == (9,)
    assert CLASS_SHARES.sum() == pytest.approx(1.0)
    assert CLASS_SHARES[8] == pytest.approx(0.143)
    assert SPLITS == ("train", "val", "test")


def test_generated_shapes_and_dtypes(sample: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample

    assert images.shape == (1800, 28, 28, 3) and images.dtype == np.uint8
    assert labels.shape == (1800, 1) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(9))


def test_zero_images_gives_empty_arrays() -> None:
    images, labels = generate_pathmnist(0, seed=1)

    assert images.shape == (0, 28, 28, 3) and labels.shape == (0, 1)


def test_same_seed_same_data_other_seed_other_data() -> None:
    first = generate_pathmnist(300, seed=9)
    again = generate_pathmnist(300, seed=9)
    other = generate_pathmnist(300, seed=10)

    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])


def test_class_counts_follow_default_shares(sample: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = sample

    counts = np.bincount(labels[:, 0], minlength=9)

    assert counts.sum() == 1800
    assert np.all(np.abs(counts - 1800 * CLASS_SHARES) < 1)


def test_class_counts_follow_custom_shares() -> None:
    shares = np.array([0, 0, 1, 1, 0, 0, 0, 0, 2.0])  # a hospital that sees three classes

    _, labels = generate_pathmnist(400, seed=3, class_shares=shares)

    counts = np.bincount(labels[:, 0], minlength=9)
    assert counts.tolist() == [0, 0, 100, 100, 0, 0, 0, 0, 200]


@pytest.mark.parametrize(
    "shares", [np.ones(8), -np.ones(9), np.zeros(9), np.full(9, np.nan)], ids=str
)
def test_invalid_class_shares_are_rejected(shares: np.ndarray) -> None:
    with pytest.raises(ValueError, match="class_shares"):
        generate_pathmnist(10, seed=0, class_shares=shares)


def test_classes_have_their_tissue_brightness(sample: tuple[np.ndarray, np.ndarray]) -> None:
    """Glass and fat are near white, lymphocyte sheets the darkest, as on a real slide."""
    images, labels = sample
    brightness = np.array([images[labels[:, 0] == c].mean() for c in range(9)])

    assert brightness[BACKGROUND] > 200 and brightness[ADIPOSE] > 200
    assert brightness.argmin() in (LYMPHOCYTES, TUMOUR)
    assert brightness[LYMPHOCYTES] < brightness[MUSCLE] - 15


def test_tissue_is_pink_and_purple_not_green(sample: tuple[np.ndarray, np.ndarray]) -> None:
    """H&E absorbs green most, so stained tissue has green as its weakest channel."""
    images, labels = sample
    tissue = images[~np.isin(labels[:, 0], [ADIPOSE, BACKGROUND])].reshape(-1, 3).mean(axis=0)

    assert tissue[1] < tissue[0] and tissue[1] < tissue[2]


def test_hospital_stain_shifts_mean_colour_reference_does_not() -> None:
    reference = generate_pathmnist(400, seed=2)[0].reshape(-1, 3).mean(axis=0)
    again = generate_pathmnist(400, seed=2, stain=Stain.reference())[0].reshape(-1, 3).mean(0)
    hospitals = [
        generate_pathmnist(400, seed=2, stain=Stain.for_hospital(i, seed=7))[0]
        .reshape(-1, 3)
        .mean(axis=0)
        for i in range(3)
    ]

    np.testing.assert_array_equal(reference, again)
    for i, colour in enumerate(hospitals):
        assert np.abs(colour - reference).max() > 4, f"hospital {i} looks like the reference"
    assert np.abs(hospitals[0] - hospitals[1]).max() > 2
    assert np.abs(hospitals[1] - hospitals[2]).max() > 2


def test_hospital_stain_is_deterministic_and_plausible() -> None:
    stains = [Stain.for_hospital(i, seed=4) for i in range(10)]

    assert stains[3] == Stain.for_hospital(3, seed=4)
    assert stains[3] != Stain.for_hospital(3, seed=5)
    assert len(set(stains)) == 10
    for stain in stains:
        od = stain.od_matrix()
        assert np.all(od >= 0)
        assert od[0].argmin() == 2, "hematoxylin absorbs blue least, so it looks blue-purple"
        assert od[1].argmax() == 1, "eosin absorbs green most, so it looks pink"
        assert min(stain.illuminant) > 0.9


def test_invalid_stain_is_rejected() -> None:
    with pytest.raises(ValueError, match="eosin_strength"):
        Stain(hematoxylin=(0.65, 0.70, 0.29), eosin=(0.1, 0.9, 0.4), eosin_strength=0.0)
    with pytest.raises(ValueError, match="hematoxylin"):
        Stain(hematoxylin=(-0.65, 0.70, 0.29), eosin=(0.1, 0.9, 0.4))


def _small_cnn() -> nn.Module:
    """About 52k parameters, GroupNorm rather than BatchNorm as DP training requires."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 24),
        nn.ReLU(),
        nn.Linear(24, 9),
    )


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(0.5)
    return x, torch.from_numpy(labels[:, 0].astype(np.int64))


def test_small_cnn_learns_the_classes_but_not_perfectly() -> None:
    """Neither trivially separable nor noise: the band around PathMNIST's reported ~0.9.

    The ceiling is below the ~0.96 this setup reaches when the class overlap is switched off,
    so the test notices if the overlap is lost.
    """
    torch.manual_seed(0)
    x_train, y_train = _as_tensors(*generate_pathmnist(6000, seed=21))
    x_test, y_test = _as_tensors(*generate_pathmnist(1500, seed=22))
    model = _small_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)

    for _ in range(4):
        for batch in torch.randperm(len(x_train)).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = (model.eval()(x_test).argmax(1) == y_test).float().mean().item()

    assert 0.75 < accuracy < 0.94


# --- npz format ------------------------------------------------------------------------------


def test_npz_round_trip(tmp_path: Path) -> None:
    train = generate_pathmnist(50, seed=1)
    test = generate_pathmnist(20, seed=2)
    path = tmp_path / "pathmnist.npz"

    save_pathmnist_npz(path, {"train": train, "test": test})
    loaded = load_pathmnist_npz(path)

    assert set(loaded) == {"train", "test"}
    for split, (images, labels) in {"train": train, "test": test}.items():
        np.testing.assert_array_equal(loaded[split][0], images)
        np.testing.assert_array_equal(loaded[split][1], labels)
        assert loaded[split][1].dtype == np.uint8 and loaded[split][1].shape == (len(images), 1)
    with np.load(path) as archive:
        keys = set(archive.files)
    assert keys == {"train_images", "train_labels", "test_images", "test_labels"}


def test_save_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "pathmnist.npz"
    first = {split: generate_pathmnist(10, seed=1) for split in SPLITS}
    save_pathmnist_npz(path, first)
    bad = {"train": (np.zeros((3, 28, 28), np.uint8), np.zeros(3)), "test": first["test"]}

    with pytest.raises(DataFormatError):
        save_pathmnist_npz(path, bad)
    second = {split: generate_pathmnist(10, seed=2) for split in SPLITS}
    save_pathmnist_npz(path, second)

    assert [p.name for p in tmp_path.iterdir()] == ["pathmnist.npz"]
    np.testing.assert_array_equal(load_pathmnist_npz(path)["val"][0], second["val"][0])


def test_save_without_test_split_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="test"):
        save_pathmnist_npz(tmp_path / "p.npz", {"train": generate_pathmnist(5, seed=0)})


def test_loader_reads_medmnist_layout_unchanged(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    path = _write_npz(tmp_path / "pathmnist.npz", **arrays)

    loaded = load_pathmnist_npz(path)

    assert list(loaded) == ["train", "val", "test"]
    for split in SPLITS:
        images, labels = loaded[split]
        np.testing.assert_array_equal(images, arrays[f"{split}_images"])
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])
        assert labels.dtype == np.uint8 and labels.shape == (12, 1)


def test_loader_accepts_flat_int64_labels_without_changing_values(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    flat = {k: v[:, 0].astype(np.int64) if k.endswith("labels") else v for k, v in arrays.items()}
    del flat["val_images"], flat["val_labels"]  # val is optional
    path = _write_npz(tmp_path / "flat.npz", **flat)

    loaded = load_pathmnist_npz(path)

    assert set(loaded) == {"train", "test"}
    np.testing.assert_array_equal(loaded["train"][1], arrays["train_labels"])
    assert loaded["train"][1].dtype == np.uint8 and loaded["train"][1].shape == (12, 1)


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (["test_images", "test_labels"], "test_images, test_labels"),
        (["train_labels"], "train_labels"),
        (["val_images"], "val_images"),  # half a val split is a broken file, not "no val"
    ],
)
def test_missing_keys_are_named(tmp_path: Path, drop: list[str], named: str) -> None:
    arrays = {k: v for k, v in _medmnist_arrays().items() if k not in drop}
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError, match=f"missing {named};"):
        load_pathmnist_npz(path)


def test_wrong_image_shape_says_expected_and_found(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    arrays["train_images"] = np.zeros((12, 28, 28), np.uint8)
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError) as caught:
        load_pathmnist_npz(path)

    assert "train_images must be uint8 of shape (N, 28, 28, 3), found uint8 (12, 28, 28)" in str(
        caught.value
    )


def test_wrong_image_dtype_says_expected_and_found(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    arrays["test_images"] = arrays["test_images"].astype(np.float32) / 255
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError, match=r"found float32 \(12, 28, 28, 3\)"):
        load_pathmnist_npz(path)


@pytest.mark.parametrize("bad", [9, 255])
def test_labels_outside_0_to_8_are_rejected(tmp_path: Path, bad: int) -> None:
    arrays = _medmnist_arrays()
    arrays["val_labels"][[2, 5]] = bad
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError, match="2 of 12 val_labels lie outside 0-8"):
        load_pathmnist_npz(path)


def test_negative_labels_are_rejected(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    arrays["train_labels"] = arrays["train_labels"].astype(np.int64)
    arrays["train_labels"][0] = -1
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError, match="outside 0-8"):
        load_pathmnist_npz(path)


def test_float_labels_are_rejected(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    arrays["train_labels"] = arrays["train_labels"].astype(np.float64)
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError, match="train_labels must be integers"):
        load_pathmnist_npz(path)


def test_label_image_count_mismatch_is_rejected(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    arrays["test_labels"] = arrays["test_labels"][:10]
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError, match="test has 12 images but 10 labels"):
        load_pathmnist_npz(path)


@pytest.mark.parametrize("content", ["text", "npy", "truncated"])
def test_not_an_npz_file_is_rejected(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pathmnist.npz"
    if content == "text":
        path.write_text("patient_id,label\n1,3\n")
    elif content == "npy":
        with path.open("wb") as handle:
            np.save(handle, np.zeros((2, 28, 28, 3), np.uint8))
    else:
        _write_npz(path, **_medmnist_arrays())
        path.write_bytes(path.read_bytes()[:200])

    with pytest.raises(DataFormatError, match="is not a readable npz archive"):
        load_pathmnist_npz(path)


def test_errors_never_quote_pixel_values(tmp_path: Path) -> None:
    arrays = _medmnist_arrays()
    arrays["train_images"] = np.full((12, 28, 28, 3), 0.123456, np.float32)
    path = _write_npz(tmp_path / "p.npz", **arrays)

    with pytest.raises(DataFormatError) as caught:
        load_pathmnist_npz(path)

    assert "0.123" not in str(caught.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pathmnist_npz(tmp_path / "absent.npz")
