"""domainbed: leave-one-domain-out streams over image folders, resizing, source training."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import TinyNet
from PIL import Image

import tta
from tta.data.benchmarks import BENCHMARKS
from tta.harness.stream import StreamSpec, run_stream
from tta.models.domainbed_train import TrainConfig, train_source

DOMAINS = ("cartoon", "photo", "sketch")
CLASSES = ("dog", "horse")


def write_dataset(root, name="Toy", per_class=3):
    """<root>/<name>/<domain>/<class>/*.png|jpg of assorted sizes, class-coloured."""
    for d, domain in enumerate(DOMAINS):
        for k, cls in enumerate(CLASSES):
            folder = root / name / domain / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (40 + 8 * i, 30 + 4 * d)
                color = (200 * k, 60 + 20 * d, 100)
                suffix = "png" if i % 2 else "jpg"
                Image.new("RGB", size, color).save(folder / f"{i}.{suffix}")


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TTA_DATA", raising=False)
    monkeypatch.setenv("TTA_QUIET", "1")
    write_dataset(tmp_path / "data")
    return tmp_path / "data"


def bench(root, **options):
    options.setdefault("image_size", 32)
    return BENCHMARKS.create("domainbed", data_root=str(root), dataset="Toy", **options)


def test_domains_classes_and_leave_one_domain_out(root):
    b = bench(root, target="photo")
    assert b.domain_names() == DOMAINS and b.classes == list(CLASSES) and b.num_classes == 2
    assert b.default_domains() == ("photo",)
    assert b.source_domains() == ("cartoon", "sketch")
    assert b.describe()["source_domains"] == ["cartoon", "sketch"]


def test_images_are_resized_to_the_benchmark_size(root):
    b = bench(root, target="photo", image_size=24)
    images, labels = b.load("photo", None, None, 0)
    batch = images[np.arange(len(images))]
    assert batch.shape == (6, 24, 24, 3) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert abs(int(batch[0, 12, 12, 0]) - 0) <= 2 and abs(int(batch[3, 12, 12, 0]) - 200) <= 2
    assert bench(root, target="photo").image_size == 32
    assert BENCHMARKS.create("domainbed", data_root=str(root), dataset="Toy").image_size == 224
    subset, subset_labels = b.load("photo", None, 4, 0)
    assert len(subset) == 4 and len(subset_labels) == 4


def test_stream_over_the_target_domain(root):
    b = bench(root, target="sketch")
    spec = StreamSpec(
        benchmark="domainbed",
        corruptions=b.default_domains(),
        severity=None,
        batch_size=4,
        n_per_domain=None,
    )
    b.prepare(spec.domains(), spec.n_per_domain, spec.seed)
    torch.manual_seed(0)
    adapted = tta.adapt(TinyNet(num_classes=2).eval(), loss="tent")
    result = run_stream(adapted, spec, b)
    assert result.per_domain[0]["domain"] == "sketch" and result.per_domain[0]["severity"] is None
    assert result.n_images == 6 and result.counters["n_steps"] == 2


def test_source_training_fine_tunes_on_the_other_domains(root):
    b = bench(root, target="photo")
    torch.manual_seed(0)
    model = TinyNet(num_classes=2)
    before = [p.detach().clone() for p in model.parameters()]
    record = train_source(model, b, TrainConfig(steps=3, batch_size=2, lr=1e-2, eval_every=2))
    assert record["source_domains"] == ["cartoon", "sketch"] and record["target"] == "photo"
    assert set(record["held_out_accuracy"]) == {"cartoon", "sketch", "mean"}
    assert not model.training
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


def test_source_samples_come_from_the_source_domains(root):
    b = bench(root, target="photo")
    images, labels = b.source_samples(5, seed=0)
    assert images.shape == (5, 32, 32, 3) and len(labels) == 5


def test_classes_must_agree_across_domains(root):
    shutil.rmtree(root / "Toy" / "sketch" / "horse")
    (root / "Toy" / "sketch" / "zebra").mkdir()
    with pytest.raises(
        RuntimeError, match=r"'sketch' differ .*missing \['horse'\], extra \['zebra'\]"
    ):
        bench(root, target="photo").prepare([("photo", None)], None, 0)


def test_empty_class_folder_and_missing_dataset(root, tmp_path):
    for path in (root / "Toy" / "photo" / "dog").iterdir():
        path.unlink()
    with pytest.raises(RuntimeError, match=r"photo/dog: no images"):
        bench(root, target="photo").prepare([("photo", None)], None, 0)
    (tmp_path / "none").mkdir()  # an explicit data root must exist
    with pytest.raises(
        FileNotFoundError, match="(?s)dataset PACS not found. Looked in.*domainbed.scripts.download"
    ):
        BENCHMARKS.create("domainbed", data_root=str(tmp_path / "none"), dataset="PACS").scan()


def test_known_dataset_with_the_wrong_number_of_classes(root):
    shutil.move(root / "Toy", root / "PACS")
    with pytest.raises(RuntimeError, match="found 2 classes .* PACS has 7"):
        BENCHMARKS.create("domainbed", data_root=str(root), dataset="PACS").scan()


def test_target_and_domain_errors(root):
    with pytest.raises(
        ValueError, match="choose a target domain .* one of: cartoon, photo, sketch"
    ):
        bench(root).default_domains()
    b = bench(root, target="art")
    with pytest.raises(ValueError, match="unknown domainbed domain 'art'; known: cartoon, photo"):
        b.source_domains()
    with pytest.raises(ValueError, match="have no severity"):
        bench(root, target="photo").prepare([("photo", 5)], None, 0)
    with pytest.raises(ValueError, match="does not download"):
        bench(root, download=True)
    with pytest.raises(
        ValueError, match=r"for domainbed\) predicts 5 classes but the benchmark has 2"
    ):
        bench(root, target="photo").check_model(TinyNet())
