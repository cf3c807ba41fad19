"""imagenet-c: the JPEG tree, its image subset, no resizing, decoding, and its bad inputs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import make_tiny_net
from PIL import Image

import tta
from tta.data.benchmarks import BENCHMARKS
from tta.data.image_files import ImageFiles
from tta.harness.stream import StreamSpec, run_stream

WNIDS = ["n00000003", "n00000001", "n00000002"]  # sorted: ...01 is class 0
PER_CLASS = 6
TREE = {"fog": (3, 5), "snow": (5,)}


def write_tree(root, tree=TREE, size=224):
    """<root>/ImageNet-C/<corruption>/<severity>/<wnid>/*.JPEG, 224x224 JPEGs."""
    rng = np.random.default_rng(0)
    for corruption, severities in tree.items():
        for severity in severities:
            for k, wnid in enumerate(sorted(WNIDS)):
                folder = root / "ImageNet-C" / corruption / str(severity) / wnid
                folder.mkdir(parents=True)
                for i in range(PER_CLASS):
                    pixels = np.full((size, size, 3), 40 * k + 5 * i, dtype=np.uint8)
                    pixels[: size // 2] += rng.integers(0, 30, (size // 2, size, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"ILSVRC2012_val_{k}{i:07d}.JPEG")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("inc")
    write_tree(root)
    return root


@pytest.fixture
def copy(tree, tmp_path, monkeypatch):
    """A private copy of the tree, for tests that break it."""
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tree / "ImageNet-C", tmp_path / "ImageNet-C")
    return tmp_path


@pytest.fixture(autouse=True)
def quiet(monkeypatch, tmp_path):
    monkeypatch.setenv("TTA_QUIET", "1")
    monkeypatch.delenv("TTA_DATA", raising=False)
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))


def bench(root, **options):
    return BENCHMARKS.create("imagenet-c", data_root=str(root), wnids=WNIDS, **options)


def test_class_balanced_subset_224_without_resizing(tree):
    b = bench(tree)
    b.prepare([("fog", 3), ("snow", 5)], 15, 0)
    images, labels = b.load("fog", 3, 15, 0)
    assert b.describe()["imagenet_subset"] == "seeded-5-per-class"
    assert len(images) == 15 and np.bincount(labels).tolist() == [5, 5, 5]
    batch = images[np.arange(15)]
    assert batch.shape == (15, 224, 224, 3) and batch.dtype == np.uint8
    for i in (0, 7):
        expected = np.asarray(Image.open(images.paths[i]).convert("RGB"))
        assert np.array_equal(batch[i], expected), "pixels as decoded, no resize or crop"
        assert images.paths[i].parent.name == sorted(WNIDS)[labels[i]]
    snow, snow_labels = b.load("snow", 5, 15, 0)
    assert [p.name for p in snow.paths] == [p.name for p in images.paths], "same images"
    assert np.array_equal(snow_labels, labels)


def test_first_n_of_the_subset_or_all_images(tree):
    b = bench(tree)
    five, _ = b.load("fog", 5, 5, 0)
    fifteen, _ = b.load("fog", 5, 15, 0)
    assert five.paths == fifteen.paths[:5]
    everything, labels = b.load("fog", 5, None, 0)
    assert len(everything) == 3 * PER_CLASS and np.bincount(labels).tolist() == [6, 6, 6]
    with pytest.raises(ValueError, match="asked for 16 images .* subset .* has 15"):
        b.prepare([("fog", 5)], 16, 0)


def test_root_may_be_the_imagenet_c_folder_itself(tree):
    images, _ = bench(tree / "ImageNet-C").load("snow", 5, 3, 0)
    assert len(images) == 3


def test_robustbench_list_is_used_when_installed(tree, monkeypatch):
    b = bench(tree)
    fog5 = tree / "ImageNet-C" / "fog" / "5"
    ids = [
        f"{w}/{p.name}"
        for w in ("n00000002", "n00000001")
        for p in sorted((fog5 / w).iterdir())[:2]
    ]
    monkeypatch.setattr("tta.data.imagenet_c.robustbench_ids", lambda: ids)
    monkeypatch.setattr("tta.data.imagenet_c.known_wnids", lambda: sorted(WNIDS))
    official = BENCHMARKS.create("imagenet-c", data_root=str(tree))
    assert (
        official.num_classes == 1000
        and official.describe()["imagenet_subset"] == "robustbench-5000"
    )
    images, labels = official.load("fog", 5, 4, 0)
    assert [f"{p.parent.name}/{p.name}" for p in images.paths] == ids
    assert labels.tolist() == [1, 1, 0, 0]
    assert b.describe()["imagenet_subset"] == "seeded-5-per-class", "custom classes: own subset"


def test_stream_mixed_over_lazily_decoded_domains(tree):
    b = bench(tree)
    spec = StreamSpec(
        benchmark="imagenet-c",
        corruptions=("fog", "snow"),
        setting="mixed",
        batch_size=4,
        n_per_domain=6,
    )
    b.prepare(spec.domains(), spec.n_per_domain, spec.seed)
    adapted = tta.adapt(make_tiny_net(), loss="norm")
    result = run_stream(adapted, spec, b)
    assert [(d["domain"], d["n"]) for d in result.per_domain] == [("fog", 6), ("snow", 6)]
    assert result.counters["n_forward"] == 3


def test_missing_severity_and_corruption(copy):
    shutil.rmtree(copy / "ImageNet-C" / "fog" / "3")
    with pytest.raises(
        FileNotFoundError,
        match=r"missing severity folder .*fog/3 \(fog has severities 5; expected 1..5\)",
    ):
        bench(copy).prepare([("fog", 5), ("fog", 3)], 5, 0)
    with pytest.raises(
        FileNotFoundError, match=r"missing corruption folder .*frost \(found: fog, snow\).*zenodo"
    ):
        bench(copy).prepare([("frost", 5)], 5, 0)


def test_class_folders_must_be_the_classes(copy):
    (copy / "ImageNet-C" / "fog" / "5" / "n09999999").mkdir()
    with pytest.raises(
        RuntimeError,
        match=r"do not match the 3 ImageNet classes .*unexpected, e.g. \['n09999999'\]",
    ):
        bench(copy).prepare([("fog", 5)], 5, 0)
    monkey_free = BENCHMARKS.create("imagenet-c", data_root=str(copy))
    if monkey_free.wnids is None:  # neither robustbench nor timm installed
        with pytest.raises(RuntimeError, match="expected 1000 class folders named by wnid"):
            monkey_free.prepare([("snow", 5)], 5, 0)
    else:
        with pytest.raises(RuntimeError, match="do not match the 1000 ImageNet classes"):
            monkey_free.prepare([("snow", 5)], 5, 0)


def test_empty_class_folder(copy):
    folder = copy / "ImageNet-C" / "snow" / "5" / "n00000002"
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(RuntimeError, match="1 empty class folder"):
        bench(copy).prepare([("snow", 5)], 5, 0)


def test_other_sizes_are_refused_not_resized(copy):
    folder = copy / "ImageNet-C" / "snow" / "5"
    for path in folder.glob("*/*.JPEG"):
        Image.new("RGB", (256, 256)).save(path)
    with pytest.raises(RuntimeError, match="is 256x256, expected 224x224.*does not resize"):
        bench(copy).prepare([("snow", 5)], 5, 0)
    files = ImageFiles(sorted(folder.glob("*/*.JPEG")), note="x")
    with pytest.raises(RuntimeError, match="256x256"):
        files[np.arange(3)]


def test_download_is_refused_with_instructions(tree):
    with pytest.raises(ValueError, match="cannot be downloaded.*zenodo.org/records/2235448"):
        bench(tree, download=True)
