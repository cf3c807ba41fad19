"""Data: Fashion-MNIST IDX reading, the CIFAR-C layout, and fmnist-c generation and caching."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from tta.data.cifar_c_layout import create_files, read_domain
from tta.data.fmnist import FILES, load_fmnist
from tta.data.fmnist_c import benchmark_root, ensure_generated, load_domain


def test_fmnist_is_padded_to_32x32_rgb(fmnist_root):
    images, labels = load_fmnist("test", fmnist_root)
    assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (60,) and labels.max() < 10
    assert (images[:, :2] == 0).all() and (images[:, :, -2:] == 0).all()
    assert (images[..., 0] == images[..., 2]).all()


def test_missing_fmnist_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tta.data.fmnist.DEBIAN_DIR", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()  # an explicit data root must exist
    with pytest.raises(FileNotFoundError, match="(?s)Looked in.*nowhere.*apt-get install"):
        load_fmnist("test", tmp_path / "empty")


def test_truncated_fmnist_file_is_reported(fmnist_root):
    path = fmnist_root / "fashion-mnist" / FILES["test"][0]
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(RuntimeError, match="truncated"):
        load_fmnist("test", fmnist_root)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        load_fmnist("test", fmnist_root)


def test_cifar_c_layout_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 7)
    array = create_files(tmp_path, "fog", (7, 32, 32, 3), labels)
    data = rng.integers(0, 256, (35, 32, 32, 3), dtype=np.uint8)
    array[:] = data
    array.flush()
    for severity in range(1, 6):
        images, got_labels = read_domain(tmp_path, "fog", severity, 5)
        assert np.array_equal(images, data[(severity - 1) * 7 : (severity - 1) * 7 + 5])
        assert np.array_equal(got_labels, labels[:5])
    assert np.load(tmp_path / "fog.npy").shape == (35, 32, 32, 3)


def test_cifar_c_layout_bad_files(tmp_path):
    np.save(tmp_path / "labels.npy", np.zeros(10, dtype=np.int64))
    np.save(tmp_path / "fog.npy", np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(RuntimeError, match="expected uint8"):
        read_domain(tmp_path, "fog", 1)
    np.save(tmp_path / "fog.npy", np.zeros((12, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(RuntimeError, match="N\\*5 rows"):
        read_domain(tmp_path, "fog", 1)
    with pytest.raises(FileNotFoundError, match="missing .*snow.npy"):
        read_domain(tmp_path, "snow", 1)
    (tmp_path / "fog.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        read_domain(tmp_path, "fog", 1)


def test_fmnist_c_generates_only_what_is_asked_and_is_deterministic(fmnist_root):
    ensure_generated([("fog", 5), ("contrast", 3)], 20, seed=0, data_root=fmnist_root)
    root = benchmark_root(fmnist_root, 0)
    manifest = json.loads((root / "manifest.json").read_text())["generated"]
    assert manifest == {"fog": {"5": 20}, "contrast": {"3": 20}}
    first, labels = load_domain("fog", 5, 20, 0, fmnist_root)
    clean, clean_labels = load_fmnist("test", fmnist_root)
    assert np.array_equal(labels, clean_labels[:20])
    assert not np.array_equal(first, clean[:20]), "the corruption changes the images"
    ensure_generated([("fog", 5)], 30, seed=0, data_root=fmnist_root)
    longer, _ = load_domain("fog", 5, 30, 0, fmnist_root)
    assert np.array_equal(longer[:20], first), "extending the cache keeps earlier bytes"
    other_seed, _ = load_domain("fog", 5, 20, 1, fmnist_root)
    assert not np.array_equal(other_seed, first)


def test_fmnist_c_redoes_an_interrupted_generation(fmnist_root):
    ensure_generated([("brightness", 5)], 10, seed=0, data_root=fmnist_root)
    root = benchmark_root(fmnist_root, 0)
    expected = np.load(root / "brightness.npy")[4 * 60 : 4 * 60 + 10].copy()
    (root / "manifest.json").unlink()
    array = np.load(root / "brightness.npy", mmap_mode="r+")
    array[:] = 0
    array.flush()
    images, _ = load_domain("brightness", 5, 10, 0, fmnist_root)
    assert np.array_equal(images, expected)
