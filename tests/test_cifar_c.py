"""cifar10-c / cifar100-c: the on-disk CIFAR-C layout, its download path and its bad inputs."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TinyNet, make_tiny_net

import tta
from tta.data.benchmarks import BENCHMARKS
from tta.harness.stream import StreamSpec, run_stream

PER_SEVERITY = 4  # the real release has 10000


def write_cifar_c(
    root, folder="CIFAR-10-C", corruptions=("fog", "snow", "speckle_noise"), classes=10, seed=0
):
    """A CIFAR-C tree with PER_SEVERITY images per severity; returns (images, labels) by name."""
    rng = np.random.default_rng(seed)
    directory = root / folder
    directory.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, classes, PER_SEVERITY)
    labels[0] = classes - 1
    np.save(directory / "labels.npy", np.tile(labels, 5))
    data = {}
    for name in corruptions:
        images = rng.integers(0, 256, (5 * PER_SEVERITY, 32, 32, 3), dtype=np.uint8)
        np.save(directory / f"{name}.npy", images)
        data[name] = images
    return data, labels


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TTA_DATA", raising=False)
    monkeypatch.setenv("TTA_QUIET", "1")
    root = tmp_path / "data"
    data, labels = write_cifar_c(root)
    return SimpleNamespace(root=root, dir=root / "CIFAR-10-C", data=data, labels=labels)


def test_a_domain_is_the_first_n_images_of_its_severity_memory_mapped(cifar_root):
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.root))
    assert (bench.num_classes, bench.image_size) == (10, 32)
    bench.prepare([("fog", 3), ("snow", 5)], 3, 0)
    images, labels = bench.load("fog", 3, 3, 0)
    assert isinstance(images, np.memmap), "not copied into memory"
    assert np.array_equal(images, cifar_root.data["fog"][2 * PER_SEVERITY : 2 * PER_SEVERITY + 3])
    assert labels.dtype == np.int64 and np.array_equal(labels, cifar_root.labels[:3])
    everything, _ = bench.load("snow", 5, None, 0)
    assert len(everything) == PER_SEVERITY
    assert bench.describe()["images_per_severity"] == PER_SEVERITY


def test_found_through_tta_data_and_through_the_folder_itself(cifar_root, monkeypatch):
    monkeypatch.setenv("TTA_DATA", str(cifar_root.root))
    assert BENCHMARKS.create("cifar10-c").load("fog", 1, 2, 0)[0].shape == (2, 32, 32, 3)
    monkeypatch.delenv("TTA_DATA")
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.dir))
    assert bench.load("fog", 1, 2, 0)[0].shape == (2, 32, 32, 3)


def test_stream_over_cifar10_c_with_the_heldout_set(cifar_root):
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.root))
    spec = StreamSpec(
        benchmark="cifar10-c", corruptions="fog,speckle_noise", batch_size=2, n_per_domain=4
    )
    bench.prepare(spec.domains(), spec.n_per_domain, spec.seed)
    torch.manual_seed(0)
    adapted = tta.adapt(TinyNet(num_classes=10).eval(), loss="tent")
    result = run_stream(adapted, spec, bench)
    assert [d["domain"] for d in result.per_domain] == ["fog", "speckle_noise"]
    assert result.n_images == 8 and result.counters["n_steps"] == 4


def test_missing_release_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TTA_DATA", raising=False)
    (tmp_path / "empty").mkdir()  # an explicit data root must exist
    bench = BENCHMARKS.create("cifar100-c", data_root=str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as error:
        bench.prepare([("fog", 5)], 10, 0)
    message = str(error.value)
    assert "Looked in" in message and str(tmp_path / "empty" / "CIFAR-100-C") in message
    assert "zenodo.org/records/3555552" in message and "--download" in message


def test_download_only_when_missing_and_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TTA_DATA", raising=False)
    calls = []

    def fake_download(record, files, save_dir):
        calls.append((record, files, save_dir))
        write_cifar_c(save_dir)

    fake = SimpleNamespace(zenodo_download=fake_download)
    monkeypatch.setattr("tta.data.cifar_c.zenodo_module", lambda: fake)
    root = tmp_path / "data"
    root.mkdir()  # an explicit data root must exist
    bench = BENCHMARKS.create("cifar10-c", data_root=str(root), download=True)
    bench.prepare([("fog", 5)], 2, 0)
    assert calls == [("2535967", {"CIFAR-10-C.tar"}, root)]
    BENCHMARKS.create("cifar10-c", data_root=str(root), download=True).prepare([("fog", 5)], 2, 0)
    assert len(calls) == 1, "files on disk are not downloaded again"


def test_download_without_robustbench_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tta.data.robustbench_files.package_dir", lambda name="robustbench": None)
    bench = BENCHMARKS.create("cifar10-c", data_root=str(tmp_path), download=True)
    with pytest.raises(RuntimeError, match="pip install robustbench"):
        bench.prepare([("fog", 5)], 2, 0)


def bad(cifar_root, name, array):
    np.save(cifar_root.dir / name, array)
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.root))
    return lambda: bench.prepare([("fog", 5), ("snow", 5)], 2, 0)


@pytest.mark.parametrize(
    "name, array, error, message",
    [
        ("fog.npy", np.zeros((20, 32, 32, 3), np.float32), RuntimeError, "expected uint8"),
        ("fog.npy", np.zeros((20, 28, 28, 3), np.uint8), RuntimeError, r"\(50000, 32, 32, 3\)"),
        ("fog.npy", np.zeros((15, 32, 32, 3), np.uint8), RuntimeError, "has 15 rows but"),
        ("labels.npy", np.zeros(19, np.int64), RuntimeError, "5 severities"),
        ("labels.npy", np.zeros(20, np.float32), RuntimeError, "integer class labels"),
        ("labels.npy", np.arange(20), RuntimeError, "severity 2 differ from those of severity 1"),
        ("labels.npy", np.full(20, 12), RuntimeError, "labels span 12..12 but cifar10-c has 10"),
    ],
)
def test_bad_files_are_refused_before_any_adaptation(cifar_root, name, array, error, message):
    with pytest.raises(error, match=message):
        bad(cifar_root, name, array)()


def test_missing_corruption_file_and_truncated_file(cifar_root):
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.root))
    with pytest.raises(FileNotFoundError, match=r"missing .*CIFAR-10-C/frost\.npy.*zenodo"):
        bench.prepare([("fog", 5), ("frost", 5)], 2, 0)
    (cifar_root.dir / "snow.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(RuntimeError, match="corrupt or truncated"):
        bench.prepare([("snow", 5)], 2, 0)


def test_cifar100_c_pointed_at_cifar10_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    write_cifar_c(tmp_path, folder="CIFAR-100-C", classes=10)
    bench = BENCHMARKS.create("cifar100-c", data_root=str(tmp_path))
    with pytest.raises(RuntimeError, match="is this CIFAR-10-C"):
        bench.prepare([("fog", 5)], 2, 0)


def test_more_images_than_the_release_has_and_unknown_names(cifar_root):
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.root))
    with pytest.raises(ValueError, match="asked for 5 images per domain .* holds 4"):
        bench.prepare([("fog", 5)], 5, 0)
    with pytest.raises(ValueError, match="unknown corruption 'fgo'"):
        bench.prepare([("fgo", 5)], 2, 0)
    with pytest.raises(ValueError, match="severity must be 1..5"):
        bench.prepare([("fog", 0)], 2, 0)


def test_a_model_with_the_wrong_number_of_classes_is_refused(cifar_root):
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.root))
    model = make_tiny_net()  # 5 classes
    with pytest.raises(
        ValueError, match=r"for cifar10-c\) predicts 5 classes but the benchmark has 10"
    ):
        bench.check_model(model)
    assert not model.training, "the model's mode is left as it was"
    bench.check_model(TinyNet(num_classes=10))


def test_source_samples_from_the_python_release(cifar_root):
    folder = cifar_root.root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [i, 0, 1]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    bench = BENCHMARKS.create("cifar10-c", data_root=str(cifar_root.root))
    images, labels = bench.source_samples(6, seed=0)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert set(labels) <= {0, 1, 2, 3, 4, 5}
