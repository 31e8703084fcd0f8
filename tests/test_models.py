"""Model families: building, channel groups, counting, config round trip, width primitive."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from test_export import tflite_interpreter
from torch.utils.data import TensorDataset

from nestdnn.arch import model_graph
from nestdnn.errors import NestError
from nestdnn.export import export_descendant
from nestdnn.models import (
    ARCHS,
    ModelConfig,
    NestNet,
    build_from_config,
    build_model,
    default_widths,
    full_widths,
    prefix_state_dict,
)
from nestdnn.nested import load_descendant
from nestdnn.nestfile import NestDescendant, NestMeta, write_nest
from pruning.importance import L1, TRR
from pruning.prune import channels_to_keep
from recovery.freeze import Freezer

HAS_LITERT = importlib.util.find_spec("litert_torch") is not None

SMALL_ARCHS = ["vgg11", "vgg16", "resnet20", "resnet18", "resnet50", "mobilenetv2", "vgg16-tv"]
ROUND_TRIP_ARCHS = ["vgg11", "vgg16-tv", "resnet20", "resnet50", "mobilenetv2"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("in_channels", "size"), [(1, 28), (3, 32)])
def test_every_family_runs_forward(arch: str, in_channels: int, size: int) -> None:
    model = build_model(arch, in_channels=in_channels, num_classes=7, input_size=size,
                        width_mult=0.125).eval()
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["vgg11", "resnet20", "resnet18", "resnet50", "mobilenetv2"])
def test_imagenet_input_size_runs(arch: str) -> None:
    model = build_model(arch, input_size=224, width_mult=0.0625).eval()
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_random_width_configs_build_and_run(arch: str) -> None:
    gen = torch.Generator().manual_seed(0)
    base = default_widths(arch, 32, 0.25)
    for _ in range(3):
        widths = {g: int(torch.randint(1, w + 1, (1,), generator=gen)) for g, w in base.items()}
        model = build_model(arch, in_channels=3, input_size=32, widths=widths).eval()
        assert model.groups() == widths
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_vgg11_params_and_macs_match_hand_count() -> None:
    widths = {g: 2 for g in full_widths("vgg11", 8)}
    model = build_model("vgg11", in_channels=1, num_classes=3, input_size=8, widths=widths)
    # conv1: 1->2 (3x3, bias) + BN(2); seven convs 2->2 (3x3, bias) + BN(2); linear 2->3.
    params = (1 * 2 * 9 + 2 + 4) + 7 * (2 * 2 * 9 + 2 + 4) + (2 * 3 + 3)
    assert model.count_params() == params
    # Spatial sizes with ceil-mode pooling on 8x8: 8, 4, 2, 2, 1, 1, 1, 1 for the 8 convs.
    sizes = [8, 4, 2, 2, 1, 1, 1, 1]
    macs = 1 * 2 * 9 * sizes[0] ** 2 + sum(2 * 2 * 9 * s * s for s in sizes[1:]) + 2 * 3
    assert model.count_macs() == macs


def test_resnet20_groups_couple_residual_channels() -> None:
    model = build_model("resnet20", input_size=32)
    groups = model.groups()
    assert {"layer1", "layer2", "layer3"} <= set(groups)
    assert "conv1" not in groups  # the stem adds into layer1's residual stream
    producers = model.producers()
    assert producers["layer1"] == ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"]
    assert "layer2.0.downsample.0" in producers["layer2"]
    assert producers["layer1.0.conv1"] == ["layer1.0.conv1"]


def test_resnet50_stem_is_its_own_group() -> None:
    groups = build_model("resnet50", input_size=224).groups()
    assert groups["conv1"] == 64 and groups["layer1"] == 256 and groups["layer4"] == 2048


@pytest.mark.parametrize(("arch", "tv_builder"), [
    ("resnet18", torchvision.models.resnet18),
    ("resnet50", torchvision.models.resnet50),
])
def test_resnet_imports_torchvision_state_dict(arch: str, tv_builder) -> None:
    model = build_model(arch, input_size=224, num_classes=1000)
    model.load_state_dict(tv_builder().state_dict())  # strict: same names, same shapes


def test_vgg_features_match_torchvision_names() -> None:
    ours = build_model("vgg16", input_size=224).state_dict()
    theirs = torchvision.models.vgg16_bn().state_dict()
    feature_keys = {k for k in theirs if k.startswith("features.")}
    assert feature_keys == {k for k in ours if k.startswith("features.")}
    assert all(ours[k].shape == theirs[k].shape for k in feature_keys)


def test_vgg16_tv_is_torchvisions_vgg16_with_the_first_linear_as_a_conv() -> None:
    config = ModelConfig("vgg16-tv", 3, 1000, 224, full_widths("vgg16-tv", 224))
    ours = {key: spec.shape for key, spec in model_graph(config).state().items()}
    with torch.device("meta"):
        theirs = {key: tuple(t.shape) for key, t in torchvision.models.vgg16().state_dict().items()}
    assert list(ours) == list(theirs)
    assert {key for key in ours if ours[key] != theirs[key]} == {"classifier.0.weight"}
    assert ours["classifier.0.weight"] == (4096, 512, 7, 7)  # torchvision: (4096, 512 * 49)
    assert model_graph(config).producers()["classifier.3"] == ["classifier.3"]
    assert model_graph(config).macs() == 15_470_264_320  # torchvision's 15.47 GFLOPs (MACs)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_config_round_trip(arch: str) -> None:
    model = build_model(arch, in_channels=1, num_classes=5, input_size=28, width_mult=0.25)
    config = ModelConfig.from_dict(model.config.to_dict())
    assert config == model.config
    rebuilt = build_from_config(config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def _mask_channels(model: NestNet, removed: dict[str, torch.Tensor]) -> None:
    """Silence the removed channels in place: zero their filters (and biases) in every
    producer of their group and their scale and shift in every batch norm over it."""
    modules = dict(model.named_modules())
    for group, names in model.producers().items():
        for name in names + model.norms()[group]:
            with torch.no_grad():
                modules[name].weight[removed[group]] = 0
                if modules[name].bias is not None:
                    modules[name].bias[removed[group]] = 0


@pytest.mark.parametrize("arch", ["vgg11", "vgg16-tv", "resnet20", "resnet50", "mobilenetv2"])
def test_extract_equals_masking_in_the_larger_model(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, input_size=32, width_mult=0.25)
    model.train()
    with torch.no_grad():  # give BN non-trivial statistics
        for _ in range(3):
            model(torch.randn(8, 3, 32, 32))
    model.eval()
    gen = torch.Generator().manual_seed(1)
    kept, removed = {}, {}
    for g, w in model.groups().items():
        perm = torch.randperm(w, generator=gen)
        n_keep = max(1, w // 2)
        kept[g], removed[g] = perm[:n_keep], perm[n_keep:]
    small = model.extract(kept).eval()
    assert small.groups() == {g: int(k.numel()) for g, k in kept.items()}
    assert small.count_params() < model.count_params()
    _mask_channels(model, removed)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)


def test_extract_rejects_bad_indices() -> None:
    model = build_model("vgg11", input_size=32, width_mult=0.125)
    group, width = next(iter(model.groups().items()))
    with pytest.raises(NestError, match="indices must lie in"):
        model.extract({group: torch.tensor([width])})
    with pytest.raises(NestError, match="repeated"):
        model.extract({group: torch.tensor([0, 0])})
    with pytest.raises(NestError, match="at least one"):
        model.extract({group: torch.tensor([], dtype=torch.long)})
    with pytest.raises(NestError, match="unknown channel group"):
        model.extract({"nope": torch.tensor([0])})


def test_bad_arch_and_widths_are_clear_errors() -> None:
    with pytest.raises(NestError, match="unknown arch 'vgg17'"):
        build_model("vgg17")
    widths = full_widths("vgg11", 32)
    group = next(iter(widths))
    with pytest.raises(NestError, match=f"width of group '{group}' is 65"):
        build_model("vgg11", widths={**widths, group: 65})
    with pytest.raises(NestError, match="missing"):
        build_model("vgg11", widths={group: 8})
    with pytest.raises(NestError, match="missing num_classes, input_size, widths"):
        ModelConfig.from_dict({"arch": "vgg11", "in_channels": 3})


# ------------------------------------------------------------------------- MobileNetV2


def test_mobilenetv2_groups_follow_the_blocks() -> None:
    model = build_model("mobilenetv2", input_size=32)
    producers, responses = model.producers(), model.graph.responses()
    # block 1 expands by 1: its depthwise conv works on the stem's channels
    assert producers["features.0"] == ["features.0.0", "features.1.conv.0.0"]
    # a hidden group: the expansion conv and the depthwise conv on its channels
    assert producers["features.5.conv.0"] == ["features.5.conv.0.0", "features.5.conv.1.0"]
    assert responses["features.5.conv.0"] == ["features.5.conv.0.2", "features.5.conv.1.2"]
    # a stage: every block's projection, coupled by the residual adds; linear bottlenecks
    assert producers["stage3"] == [f"features.{n}.conv.2" for n in (4, 5, 6)]
    assert responses["stage3"] == [f"features.{n}.conv.3" for n in (4, 5, 6)]
    assert producers["features.18"] == ["features.18.0"]
    axes = model.param_axes()
    assert axes["features.5.conv.1.0.weight"] == ("features.5.conv.0", None, None, None)
    assert axes["features.5.conv.2.weight"] == ("stage3", "features.5.conv.0", None, None)
    assert axes["classifier.1.weight"] == (None, "features.18")
    groups = model.groups()
    assert groups["features.5.conv.0"] == 6 * groups["stage3"]
    assert sum(g.startswith("stage") for g in groups) == 7


@pytest.mark.parametrize(("size", "last_map"), [(28, 4), (32, 4), (64, 2), (224, 7)])
def test_mobilenetv2_strides_are_cifar_style_below_64(size: int, last_map: int) -> None:
    graph = model_graph(ModelConfig("mobilenetv2", 3, 10, size,
                                    default_widths("mobilenetv2", size, 0.25)))
    last_conv = next(n for n in graph.nodes if getattr(n, "name", "") == "features.18.0")
    assert graph.shapes()[last_conv.output].height == last_map


@pytest.mark.parametrize("width_mult", [1.0, 0.5])
def test_mobilenetv2_has_torchvisions_layout(width_mult: float) -> None:
    ours = build_model("mobilenetv2", input_size=224, num_classes=1000, width_mult=width_mult)
    # strict: the same names and shapes, torchvision's width rounding included
    ours.load_state_dict(torchvision.models.mobilenet_v2(width_mult=width_mult).state_dict())
    assert ours.groups()["features.18"] == 1280


# ---------------------------------------------------------------- prune / grow round trip


def _busy_batch_norms(model: NestNet, size: int) -> None:
    """Give every batch norm running statistics of its own (train-mode forward passes)."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, size, size))
    model.eval()


def _complement(kept: torch.Tensor, width: int) -> torch.Tensor:
    """The channels of a group of ``width`` that ``kept`` leaves out, ascending."""
    dropped = torch.ones(width, dtype=torch.bool)
    dropped[kept] = False
    return torch.nonzero(dropped).flatten()


def _train_frozen(model: NestNet, freezer: Freezer, data: TensorDataset) -> None:
    """Two SGD steps with the freezer's blocks restored after each, as recovery trains."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images, labels = data.tensors
    model.train()
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images[:16]), labels[:16]).backward()
        optimizer.step()
        freezer.restore()
    model.eval()


@pytest.mark.parametrize("arch", ROUND_TRIP_ARCHS)
def test_prune_grow_round_trip_keeps_shapes_and_nesting(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(arch, in_channels=3, num_classes=4, input_size=32, width_mult=0.25)
    _busy_batch_norms(model, 32)
    data = TensorDataset(torch.randn(48, 3, 32, 32), torch.arange(48) % 4)
    groups = model.groups()
    # prune: both criteria score every channel of every group
    trr, l1 = TRR(triplets=6).scores(model, data), L1().scores(model, data)
    for scores in (trr, l1):
        assert {g: s.shape for g, s in scores.items()} == {g: (w,) for g, w in groups.items()}
        assert all(s.abs().sum() > 0 for s in scores.values())
    keep = {g: channels_to_keep(trr[g], max(1, w // 2)) for g, w in groups.items()}
    small = model.extract(keep).eval()
    assert small.groups() == {g: max(1, w // 2) for g, w in groups.items()}
    # grow: the full model in level order (kept channels first), the small block frozen
    level_order = {g: torch.cat([keep[g], _complement(keep[g], w)]) for g, w in groups.items()}
    big = model.extract(level_order)
    _train_frozen(big, Freezer(big, small.groups()), data)
    assert big.groups() == groups
    nested = [k for k, t in small.state_dict().items() if t.dim() >= 2]
    prefix = prefix_state_dict(big.state_dict(), big.param_axes(), small.groups())
    assert all(torch.equal(prefix[k], small.state_dict()[k]) for k in nested)
    before = model.extract(level_order).state_dict()
    assert any(not torch.equal(big.state_dict()[k], before[k]) for k in nested)  # it grew
    # the two descendants nest in a .nest file and load back unchanged
    path = tmp_path / "model.nest"
    write_nest(path, [NestDescendant(m.state_dict(), m.config, 0.5 + k / 4)
                      for k, m in enumerate((small, big))],
               NestMeta("synthetic", [f"c{i}" for i in range(4)], [0.5] * 3, [0.25] * 3))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        for k, expected in enumerate((small, big)):
            assert torch.equal(load_descendant(path, k)(x), expected(x))


# --------------------------------------------------------------------- MobileNetV2 exports


@pytest.fixture(scope="module")
def mobilenet_nest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-level MobileNetV2 .nest: the first half of every group, then the whole model."""
    torch.manual_seed(0)
    big = build_model("mobilenetv2", in_channels=3, num_classes=4, input_size=32,
                      width_mult=0.25)
    _busy_batch_norms(big, 32)
    half = {g: max(1, w // 2) for g, w in big.groups().items()}
    small = prefix_state_dict(big.state_dict(), big.param_axes(), half)
    path = tmp_path_factory.mktemp("mobilenet") / "model.nest"
    write_nest(path, [
        NestDescendant({k: t.clone() for k, t in small.items()},
                       replace(big.config, widths=half), 0.5),
        NestDescendant(big.state_dict(), big.config, 0.75),
    ], NestMeta("synthetic", [f"c{i}" for i in range(4)], [0.5] * 3, [0.25] * 3))
    return path


def _exported_logits(path: Path, fmt: str, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"input": x})[0]
    interpreter = tflite_interpreter(path)
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("tflite", marks=[
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_LITERT, reason="litert-torch (extra 'export') is not installed"),
])])
def test_mobilenetv2_descendants_export(mobilenet_nest: Path, tmp_path: Path, fmt: str) -> None:
    out = export_descendant(mobilenet_nest, 0, fmt, tmp_path / f"d0.{fmt}")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = load_descendant(mobilenet_nest, 0)(x).numpy()
    np.testing.assert_allclose(_exported_logits(out, fmt, x.numpy()), expected, atol=1e-4,
                               rtol=0)
