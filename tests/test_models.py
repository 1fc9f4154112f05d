"""Tests for spat.models: backbones, heads, Classifier, build_model and the unwrapping helpers.

Parametrised over MODELS, so a newly registered model gets its tests. Models with more than
HEAVY_PARAMS parameters (the WideResNets) only get a parameter count and one batch-1 forward
on 32x32 inputs per head; the same WideResNet code is exercised in full through "wrn16_4".
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spat.errors import SpatError
from spat.models import (
    HEADS,
    MODELS,
    Classifier,
    CosineLinear,
    Normalize,
    build_model,
    count_parameters,
    logit_scale,
    model_names,
    unwrap,
)
from spat.models.small_cnn import SmallCNN

HEAVY_PARAMS = 20_000_000
INPUTS = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def _meta_params(name: str) -> int:
    with torch.device("meta"):
        model = build_model(name, num_classes=10, in_channels=3, image_size=(32, 32))
    return count_parameters(model)


HEAVY = {name for name in MODELS if _meta_params(name) > HEAVY_PARAMS}


def _build(name: str, head: str = "linear", shape: tuple[int, int, int] = (3, 32, 32),
           num_classes: int = 10, **kw: object) -> Classifier:
    torch.manual_seed(0)
    c, h, w = shape
    return build_model(name, num_classes=num_classes, in_channels=c, image_size=(h, w),
                       head=head, **kw)


# ---------------------------------------------------------------- registry, counts, errors


def test_model_names_are_the_registry_and_all_wrns_are_heavy() -> None:
    assert model_names() == list(MODELS)
    assert {"small_cnn", "resnet18", "preact_resnet18", "wrn28_10", "wrn34_10"} <= set(MODELS)
    assert HEADS == ("linear", "cosine")
    assert {"wrn28_10", "wrn34_10"} <= HEAVY
    assert not {"small_cnn", "resnet18", "preact_resnet18"} & HEAVY


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("resnet18", 11_173_962),  # kuangliu / SPAT resnet.py ResNet18: 11.17 M
        ("preact_resnet18", 11_172_170),  # PreActResNet18 11,171,146 + final BN(512)
        ("wrn34_10", 46_160_474),  # TRADES WRN-34-10 without its unused sub_block1: 46.16 M
        ("wrn28_10", 36_479_194),
    ],
)
def test_parameter_counts(name: str, expected: int) -> None:
    n = _meta_params(name)
    print(name, n)
    assert n == expected


def test_parameter_counts_match_the_papers_within_1_percent() -> None:
    assert abs(_meta_params("resnet18") - 11.17e6) <= 0.01 * 11.17e6
    assert abs(_meta_params("wrn34_10") - 46.16e6) <= 0.01 * 46.16e6
    # materialised (not meta) build gives the same count
    assert count_parameters(_build("resnet18")) == 11_173_962


def test_small_cnn_on_mnist_is_trades_small_cnn() -> None:
    model = _build("small_cnn", shape=(1, 28, 28))
    assert count_parameters(model) == 312_202  # TRADES SmallCNN incl. its fc3 (our head)
    assert isinstance(model.backbone, SmallCNN)
    assert not model.backbone.padded and model.backbone.flat_dim == 64 * 4 * 4
    small = _build("small_cnn", shape=(1, 8, 8)).backbone
    assert isinstance(small, SmallCNN)
    assert small.padded and small.flat_dim == 64 * 2 * 2
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(m.padding == (0, 0) and (m.bias == 0).all() for m in convs)


def test_small_cnn_rejects_tiny_inputs() -> None:
    with pytest.raises(SpatError, match="small_cnn"):
        _build("small_cnn", shape=(1, 3, 3))


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(SpatError) as info:
        _build("resnet1000")
    msg = str(info.value)
    assert "resnet1000" in msg
    for name in MODELS:
        assert name in msg
    assert "wrn<depth>_<width>" in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["wrn30_10", "wrn4_2", "wrn35_1", "wrn16_0"])
def test_bad_wrn_names(name: str) -> None:
    with pytest.raises(SpatError):
        _build(name)


def test_unknown_head_and_bad_values() -> None:
    with pytest.raises(SpatError, match="head"):
        _build("small_cnn", head="arcface")
    with pytest.raises(SpatError):
        _build("small_cnn", head="cosine", cosine_scale=0.0)
    with pytest.raises(SpatError):
        _build("small_cnn", num_classes=1)
    with pytest.raises(SpatError):
        build_model("small_cnn", num_classes=10, in_channels=0, image_size=(28, 28))


def test_generic_wrn_name() -> None:
    model = _build("wrn16_4", head="cosine")
    assert model.backbone.out_dim == 256 and model.out_dim == 256
    model.eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(model) == 2_748_890  # WRN-16-4: 2.7 M in arXiv 1605.07146


# ---------------------------------------------------------------- every model x head


def _case(name: str, head: str, shape: tuple[int, int, int]) -> object:
    return pytest.param(name, head, shape, id=f"{name}-{head}-{'x'.join(map(str, shape))}")


def _cases() -> list[object]:
    return [
        _case(name, head, shape)
        for name in MODELS
        for head in HEADS
        for shape in INPUTS
        if name not in HEAVY or shape == (3, 32, 32)
    ]


@pytest.mark.parametrize(("name", "head", "shape"), _cases())
def test_forward_and_feature_shapes(name: str, head: str, shape: tuple[int, int, int]) -> None:
    model = _build(name, head, shape, num_classes=7).eval()
    n = 1 if name in HEAVY else 3
    x = torch.rand(n, *shape)
    with torch.no_grad():
        logits = model(x)
        if name not in HEAVY:
            feats = model.features(x)
            assert feats.shape == (n, model.backbone.out_dim)
            torch.testing.assert_close(model.head(feats), logits)
    assert logits.shape == (n, 7)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert isinstance(model.backbone.out_dim, int)
    assert isinstance(model.head, CosineLinear if head == "cosine" else nn.Linear)


def _grad_cases() -> list[object]:
    names = [n for n in MODELS if n not in HEAVY] + ["wrn16_4"]
    return [_case(n, h, s) for n in names for h in HEADS for s in [(1, 8, 8), (3, 32, 32)]]


@pytest.mark.parametrize(("name", "head", "shape"), _grad_cases())
def test_gradients_reach_every_parameter(
    name: str, head: str, shape: tuple[int, int, int]
) -> None:
    model = _build(name, head, shape).train()
    x = torch.rand(2, *shape)
    loss = F.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.head.weight.grad.abs().sum() > 0


def test_features_do_not_run_the_head() -> None:
    model = _build("small_cnn", "cosine", (1, 8, 8)).eval()

    def boom(*args: object) -> None:
        raise AssertionError("head called")

    model.head.forward = boom  # type: ignore[method-assign]
    with torch.no_grad():
        assert model.features(torch.rand(2, 1, 8, 8)).shape == (2, 200)


# ---------------------------------------------------------------- cosine head


def _head(scale: float = 8.0, bias: bool = True) -> CosineLinear:
    torch.manual_seed(1)
    head = CosineLinear(16, 5, scale=scale, bias=bias)
    if bias:
        with torch.no_grad():
            head.bias.uniform_(-0.5, 0.5)
    return head


def test_cosine_logits_by_hand() -> None:
    head = _head(scale=8.0)
    g = torch.randn(6, 16) * 3
    logits = head(g)
    cos = F.cosine_similarity(g[:, None, :], head.weight[None, :, :], dim=-1)
    expected = 8.0 * (cos + head.bias)
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(head.cosine(g), cos + head.bias, atol=1e-6, rtol=0)
    assert isinstance(head.scale, float) and head.scale == 8.0
    assert "scale" not in dict(head.named_parameters())
    assert "scale=8.0" in repr(head)


def test_cosine_without_bias() -> None:
    head = _head(scale=3.0, bias=False)
    assert head.bias is None and [k for k, _ in head.named_parameters()] == ["weight"]
    g = torch.randn(4, 16)
    cos = F.cosine_similarity(g[:, None, :], head.weight[None, :, :], dim=-1)
    torch.testing.assert_close(head(g), 3.0 * cos, atol=1e-6, rtol=0)


def test_cosine_logits_are_bounded() -> None:
    head = _head(scale=8.0)
    g = torch.randn(64, 16) * 1e3
    z = head(g) / head.scale - head.bias
    assert z.abs().max() <= 1 + 1e-6


def test_cosine_invariant_to_weight_row_and_feature_scaling() -> None:
    head = _head()
    g = torch.randn(8, 16)
    ref = head(g).detach()
    torch.testing.assert_close(head(g * 0.01), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(head(g * 250.0), ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        head.weight[2] *= 17.0
        head.weight[4] *= 0.05
    torch.testing.assert_close(head(g), ref, atol=1e-5, rtol=0)


def test_cosine_forward_does_not_modify_parameters() -> None:
    model = _build("small_cnn", "cosine", (1, 8, 8)).eval()
    norms = model.head.weight.norm(dim=1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=1e-3)
    before = copy.deepcopy(model.state_dict())
    model(torch.rand(3, 1, 8, 8))
    model.train()(torch.rand(3, 1, 8, 8)).sum().backward()
    after = model.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            continue
        assert torch.equal(v, after[k]), k
    torch.testing.assert_close(model.head.weight.norm(dim=1), norms)


def test_cosine_weight_gradient_is_orthogonal_to_the_weight_rows() -> None:
    head = _head()
    F.cross_entropy(head(torch.randn(8, 16)), torch.arange(8) % 5).backward()
    radial = (head.weight.grad * head.weight).sum(dim=1)
    assert radial.abs().max() < 1e-5


def test_cosine_under_bf16_autocast_is_float32() -> None:
    head = _head()
    g = torch.randn(8, 16)
    ref = head(g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(g)
        out_bf16_in = head(g.bfloat16())
    assert out.dtype == torch.float32 and out_bf16_in.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-2, rtol=0)
    torch.testing.assert_close(out_bf16_in, ref, atol=0.1, rtol=0)
    model = _build("small_cnn", "cosine", (1, 8, 8)).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.float32


def test_cosine_head_compiles_without_graph_breaks() -> None:
    head = _head()
    g = torch.randn(4, 16)
    compiled = torch.compile(head, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(g), head(g))
    assert logit_scale(compiled) == 8.0


def test_bad_cosine_scale() -> None:
    with pytest.raises(SpatError):
        CosineLinear(4, 3, scale=-1.0)


# ---------------------------------------------------------------- logit_scale, unwrap


class _DDPLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class _CompiledLike(nn.Module):
    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_logit_scale_and_unwrap() -> None:
    cos = _build("small_cnn", "cosine", (1, 8, 8), cosine_scale=5.5)
    lin = _build("small_cnn", "linear", (1, 8, 8))
    assert logit_scale(cos) == 5.5
    assert logit_scale(lin) is None
    for wrap in (_DDPLike, _CompiledLike, lambda m: _CompiledLike(_DDPLike(m)),
                 lambda m: _DDPLike(_CompiledLike(m)), torch.compile):
        assert logit_scale(wrap(cos)) == 5.5
        assert logit_scale(wrap(lin)) is None
        assert unwrap(wrap(cos)) is cos
        assert unwrap(wrap(lin)) is lin
    assert unwrap(cos) is cos
    with pytest.raises(TypeError):
        unwrap(nn.Linear(2, 2))
    # non-Classifier models: a lone cosine head is found, otherwise None
    assert logit_scale(nn.Sequential(nn.Flatten(), CosineLinear(4, 3, scale=2.0))) == 2.0
    assert logit_scale(nn.Sequential(nn.Linear(4, 3))) is None


def test_real_ddp_single_process(tmp_path: object) -> None:
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    store = dist.FileStore(os.path.join(str(tmp_path), "store"), 1)
    try:
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    except RuntimeError as exc:  # e.g. no usable network interface for gloo in a sandbox
        pytest.skip(f"gloo process group unavailable: {exc}")
    try:
        model = _build("small_cnn", "cosine", (1, 8, 8), cosine_scale=4.0)
        ddp = nn.parallel.DistributedDataParallel(model)
        before = {k: v.clone() for k, v in model.named_parameters()}
        ddp(torch.rand(2, 1, 8, 8)).sum().backward()
        assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
        assert logit_scale(ddp) == 4.0 and unwrap(ddp) is model
    finally:
        dist.destroy_process_group()


def test_count_parameters() -> None:
    assert count_parameters(nn.Linear(3, 2)) == 8
    assert count_parameters(CosineLinear(3, 2, bias=False)) == 6


# ---------------------------------------------------------------- Normalize


def test_normalize_known_values() -> None:
    norm = Normalize(3, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    x = torch.tensor([1.0, 0.5, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = norm(x)
    expected = torch.tensor([1.0, 1.0, 0.5]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    torch.testing.assert_close(out, expected)
    assert norm.mean.shape == (1, 3, 1, 1) and norm.std.shape == (1, 3, 1, 1)
    sd = norm.state_dict()
    assert set(sd) == {"mean", "std"}
    torch.testing.assert_close(sd["std"].flatten(), torch.tensor([0.5, 0.25, 2.0]))
    assert list(norm.parameters()) == []


def test_normalize_identity_broadcast_and_errors() -> None:
    x = torch.rand(2, 4, 3, 3)
    ident = Normalize(4)
    torch.testing.assert_close(ident(x), x)
    assert ident.mean.shape == (1, 4, 1, 1)
    torch.testing.assert_close(Normalize(4, mean=[0.5], std=[0.5])(x), 2 * x - 1)
    with pytest.raises(SpatError):
        Normalize(3, mean=(0.1, 0.2))
    with pytest.raises(SpatError):
        Normalize(1, std=(0.0,))


def test_classifier_state_dict_carries_normalisation() -> None:
    model = build_model("small_cnn", num_classes=10, in_channels=3, image_size=(32, 32),
                        mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616))
    sd = model.state_dict()
    assert "normalize.mean" in sd and "normalize.std" in sd
    torch.testing.assert_close(sd["normalize.mean"].flatten(),
                               torch.tensor([0.4914, 0.4822, 0.4465]))
    clone = build_model("small_cnn", num_classes=10, in_channels=3, image_size=(32, 32))
    clone.load_state_dict(sd)
    torch.testing.assert_close(clone.normalize.std, model.normalize.std)
