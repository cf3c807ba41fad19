"""Model zoo (tta.models.zoo) on the CPU, never downloading: robustbench checkpoints are saved
by the test in robustbench's layout, downloads are mocked to fail, torchvision and timm models
are built without weights."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_net

from tta.classes import ClassCountError, check_num_classes, count_classes
from tta.models.normalized import Normalized
from tta.models.resnet import resnet20
from tta.models.robustbench_import import import_robustbench, lend_pkg_resources
from tta.models.zoo import (
    is_checkpoint_spec,
    load_model,
    model_for_benchmark,
    parse_checkpoint_spec,
)


def require_robustbench():
    """robustbench through our import shims. Not `pytest.importorskip("robustbench")`: a plain
    `import robustbench` fails on PyPI's 1.1.1, which would skip these tests silently."""
    if importlib.util.find_spec("robustbench") is None:
        pytest.skip("robustbench is not installed (pip install 'tta[models]')")
    return import_robustbench()


def robustbench_net(dataset: str, name: str) -> torch.nn.Module:
    from tta.models.robustbench_zoo import zoo

    torch.manual_seed(0)
    return zoo(dataset)["corruptions"][name]["model"]().eval()


@pytest.fixture
def offline(monkeypatch):
    """Every robustbench / torch hub download fails as it would without internet."""

    def no_internet(*args, **kwargs):
        raise ConnectionError("no internet (test)")

    if importlib.util.find_spec("robustbench") is not None:
        require_robustbench()
        monkeypatch.setattr("robustbench.utils.download_gdrive_new", no_internet)
    monkeypatch.setattr("torchvision.models._api.WeightsEnum.get_state_dict", no_internet)


def test_robustbench_imports_with_its_packaging_shims():
    rb = require_robustbench()
    assert callable(rb.utils.load_model)
    assert "autoattack" in sys.modules  # robustbench.eval imported it: aliased or real
    assert sys.modules.get("pkg_resources") is None or hasattr(
        sys.modules["pkg_resources"], "resource_filename"
    )
    import robustbench.loaders

    ids = robustbench.loaders.pkg_resources.resource_filename(
        "robustbench.loaders", "helper_files/imagenet_test_image_ids.txt"
    )
    assert len(open(ids).read().split()) == 5000


def test_pkg_resources_stand_in_is_lent_only_during_the_import(monkeypatch):
    monkeypatch.delitem(sys.modules, "pkg_resources", raising=False)
    monkeypatch.setattr("tta.models.robustbench_import._importable", lambda name: False)
    with lend_pkg_resources():
        import pkg_resources

        path = pkg_resources.resource_filename("tta.models.zoo", "zoo.py")
        assert path.endswith("tta/models/zoo.py")
    assert "pkg_resources" not in sys.modules


def test_robustbench_standard_loads_from_a_local_checkpoint(tmp_path):
    require_robustbench()
    net = robustbench_net("cifar10", "Standard")  # WRN-28-10, 36M parameters
    assert sum(p.numel() for p in net.parameters()) > 36e6
    path = tmp_path / "cifar10" / "corruptions" / "Standard.pt"
    path.parent.mkdir(parents=True)
    # As robustbench's checkpoints: a dict with a DataParallel-prefixed state dict.
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)

    model, info = load_model("Standard", dataset="cifar10", model_dir=tmp_path)

    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)
    assert not model.training
    assert info["model_source"] == "robustbench" and info["threat_model"] == "corruptions"
    assert info["checkpoint"] == str(path) and info["num_classes"] == 10
    assert info["normalization"]["mean"] is None  # trained on unnormalized [0, 1] inputs
    assert info["input_size"] == [3, 32, 32]


def test_robustbench_class_count_mismatch_is_refused_before_loading(tmp_path):
    require_robustbench()
    with pytest.raises(ClassCountError, match="predicts 10 classes but the benchmark has 100"):
        load_model("Standard", num_classes=100, dataset="cifar10", model_dir=tmp_path)
    assert not (tmp_path / "cifar10").exists()


def test_robustbench_augmix_reports_its_inner_normalization(tmp_path):
    require_robustbench()
    net = robustbench_net("cifar100", "Hendrycks2020AugMix_ResNeXt")
    path = tmp_path / "cifar100" / "corruptions" / "Hendrycks2020AugMix_ResNeXt.pt"
    path.parent.mkdir(parents=True)
    state = {k: v for k, v in net.state_dict().items() if k not in ("mu", "sigma")}
    torch.save(state, path)  # the released file lacks the mu/sigma buffers
    _, info = load_model("Hendrycks2020AugMix_ResNeXt", dataset="cifar100", model_dir=tmp_path)
    assert info["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert info["normalization"]["std"] == [0.5, 0.5, 0.5]
    assert info["num_classes"] == 100


def test_robustbench_standard_r50_is_resnet50_behind_imagenet_normalization(tmp_path, monkeypatch):
    require_robustbench()
    from torchvision.models import resnet50

    state = resnet50().state_dict()  # stands in for torchvision's IMAGENET1K_V1 download
    monkeypatch.setattr(
        "torchvision.models._api.WeightsEnum.get_state_dict", lambda self, *a, **k: state
    )
    model, info = load_model("Standard_R50", dataset="imagenet", model_dir=tmp_path)
    assert info["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert info["normalization"]["std"] == [0.229, 0.224, 0.225]
    assert info["input_size"] == [3, 224, 224] and info["checkpoint"].endswith("0676ba61.pth")
    assert torch.equal(model.model.fc.weight, state["fc.weight"])


def test_robustbench_missing_checkpoint_offline_says_where_and_how(tmp_path, offline):
    require_robustbench()
    with pytest.raises(FileNotFoundError) as caught:
        load_model("Hendrycks2020AugMix_ResNeXt", 100, "cifar100", tmp_path)
    message = str(caught.value)
    expected = tmp_path / "cifar100" / "corruptions" / "Hendrycks2020AugMix_ResNeXt.pt"
    assert str(expected) in message
    assert "drive.google.com" in message and "no internet" in message


def test_robustbench_web_page_instead_of_checkpoint(tmp_path):
    require_robustbench()
    path = tmp_path / "cifar100" / "corruptions" / "Hendrycks2020AugMix_ResNeXt.pt"
    path.parent.mkdir(parents=True)
    path.write_text("<html>Google Drive quota exceeded</html>")
    with pytest.raises(RuntimeError, match="web page, not a checkpoint"):
        load_model("Hendrycks2020AugMix_ResNeXt", 100, "cifar100", tmp_path)


def test_robustbench_unknown_name_suggests_close_ones():
    require_robustbench()
    with pytest.raises(ValueError, match="did you mean Standard"):
        load_model("Standrd", 10, "cifar10")
    with pytest.raises(ValueError, match="needs a dataset"):
        load_model("Standard", 10)


def test_torchvision_without_weights():
    model, info = load_model("torchvision:resnet18:none", num_classes=10)
    assert info["weights"] is None and info["normalization"]["mean"] is None
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 10)


def test_torchvision_weights_mismatch_and_offline_errors(tmp_path, monkeypatch, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ClassCountError, match="predicts 1000 classes but the benchmark has 10"):
        load_model("torchvision:resnet18:IMAGENET1K_V1", num_classes=10)
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth") as caught:
        load_model("torchvision:resnet18:IMAGENET1K_V1", num_classes=1000)
    assert str(tmp_path) in str(caught.value)
    with pytest.raises(ValueError, match="has no weights 'V9'"):
        load_model("torchvision:resnet18:V9")
    with pytest.raises(ValueError, match="did you mean resnet18"):
        load_model("torchvision:resnt18")


def test_torchvision_checkpoint_is_normalized_inside_with_its_weights_statistics(tmp_path):
    from torchvision.models import ResNet18_Weights, resnet18

    torch.manual_seed(0)
    net = resnet18(num_classes=7).eval()
    torch.save(net.state_dict(), tmp_path / "ft.pt")
    model, info = load_model(f"{tmp_path}/ft.pt,arch=torchvision:resnet18:IMAGENET1K_V1", 7)

    transforms = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert info["normalization"]["mean"] == list(transforms.mean)
    assert info["normalization"]["std"] == list(transforms.std)
    mean = torch.tensor(transforms.mean).view(1, 3, 1, 1)
    std = torch.tensor(transforms.std).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), net((x - mean) / std), atol=1e-5)
    with pytest.raises(ClassCountError, match=r"fc.weight \[7, 512\]"):
        load_model(f"{tmp_path}/ft.pt,arch=torchvision:resnet18", 10)
    # A saved Normalized wrapper brings its own statistics.
    torch.save(Normalized(net, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)).state_dict(), tmp_path / "w.pt")
    _, info = load_model(f"{tmp_path}/w.pt,arch=torchvision:resnet18:none", 7)
    assert info["normalization"]["mean"] == pytest.approx([0.1, 0.2, 0.3])


def test_timm_is_normalized_with_its_pretrained_cfg():
    pytest.importorskip("timm")
    model, info = load_model("timm:test_vit:none", num_classes=10)
    assert isinstance(model, Normalized)
    assert info["normalization"]["mean"] == [0.5, 0.5, 0.5]  # its cfg's, not ImageNet's
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - 0.5) / 0.5), atol=1e-5)
        assert model(x).shape == (2, 10)


def test_timm_pretrained_errors_come_before_any_download(monkeypatch):
    timm = pytest.importorskip("timm")
    with pytest.raises(ClassCountError, match="predicts 1000 classes"):
        load_model("timm:test_vit", num_classes=10)

    def offline_create(name, pretrained=False, **kwargs):
        raise OSError("no internet (test)")

    monkeypatch.setattr(timm, "create_model", offline_create)
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub"):
        load_model("timm:test_vit", num_classes=1000)


def test_tta_checkpoint_names_its_own_arch(tmp_path):
    net = resnet20(num_classes=10, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)).eval()
    torch.save({"state_dict": net.state_dict(), "config": {"arch": "resnet20"}}, tmp_path / "s.pt")
    model, info = load_model(str(tmp_path / "s.pt"), num_classes=10)
    assert info["arch"] == "resnet20" and info["input_size"] == [3, 32, 32]
    assert info["normalization"]["mean"] == pytest.approx([0.1, 0.2, 0.3])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), net(x))


def test_checkpoint_errors(tmp_path):
    torch.save(resnet20().state_dict(), tmp_path / "r.pt")
    with pytest.raises(ValueError, match="which architecture"):
        load_model(str(tmp_path / "r.pt"), 10)
    with pytest.raises(RuntimeError, match="does not fit arch resnet32"):
        load_model(f"{tmp_path}/r.pt,arch=resnet32", 10)
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        load_model(f"{tmp_path}/missing.pt,arch=resnet20", 10)
    with pytest.raises(ValueError, match="unknown arch"):
        load_model(f"{tmp_path}/r.pt,arch=vgg", 10)


def test_spec_parsing():
    assert is_checkpoint_spec("runs/x.pt") and is_checkpoint_spec("x.pth")
    assert is_checkpoint_spec("weights,arch=resnet20")
    assert not is_checkpoint_spec("Hendrycks2020AugMix_ResNeXt")
    assert parse_checkpoint_spec("a/b.pt,arch=timm:resnet18", None) == ("a/b.pt", "timm:resnet18")
    with pytest.raises(ValueError, match="unknown checkpoint option"):
        parse_checkpoint_spec("a.pt,mean=0.5", None)


def test_check_num_classes_leaves_the_model_as_it_was():
    model = make_tiny_net().train()  # 5 classes, BatchNorm
    before = [t.clone() for t in model.state_dict().values()]
    with pytest.raises(ClassCountError, match="predicts 5 classes but the benchmark has 10"):
        check_num_classes(model, 10, (3, 8, 8))
    assert model.training and model.bn1.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))
    assert count_classes(model) == 5  # from the last Linear, without a forward pass
    with pytest.raises(ValueError, match="cannot take images of shape"):
        check_num_classes(model, 5, (1, 8, 8))


def test_model_for_benchmark_checks_classes_and_robustbench_coverage(tmp_path):
    torch.save(
        {"state_dict": resnet20().state_dict(), "config": {"arch": "resnet20"}}, tmp_path / "s.pt"
    )
    cifar100 = SimpleNamespace(name="cifar100-c", num_classes=100, image_size=32)
    with pytest.raises(ClassCountError, match="predicts 10 classes but the benchmark has 100"):
        model_for_benchmark(str(tmp_path / "s.pt"), cifar100)
    fmnist = SimpleNamespace(name="fmnist-c", num_classes=10, image_size=32)
    with pytest.raises(ValueError, match="robustbench has none for benchmark 'fmnist-c'"):
        model_for_benchmark("Standard", fmnist)
    model, info = model_for_benchmark(str(tmp_path / "s.pt"), fmnist)
    assert info["num_classes"] == 10
