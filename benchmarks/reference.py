"""Reference implementations of SPAT, TRADES and PGD-AT written in the style of the official code.

What "official style" means here (and what the benchmark therefore charges the reference with):

* SPAT (puerrrr/Self-Paced-Adversarial-Training, ``spat.py``) and TRADES (yaodongyu/TRADES,
  ``trades.py``): the clean forward ``model(x_natural)`` is recomputed at EVERY attack step, with
  the parameters still requiring grad; ``model.eval()`` / ``model.train()`` are flipped inside the
  loss function; everything in fp32, eager, contiguous (NCHW) tensors; TRADES' robust term runs a
  third forward ``model(x_natural)`` in the outer step (its code does), SPAT's reuses ``logits``.
* SPAT's cosine classifier (``resnet.py`` / ``wrn.py`` with ``normalize=True``): the features are
  L2-normalised and the ``nn.Linear``'s ``weight.data`` is OVERWRITTEN with its row-normalised
  self on every forward (outside autograd); the network returns temperature-1 cosine logits z and
  the losses multiply by s.
* PGD-AT (Madry et al., arXiv 1706.06083): uniform random start in the ε-ball, K sign steps on the
  cross-entropy in eval mode, then CE on the adversarial batch in train mode.
* Data: a ``torch.utils.data.Dataset`` over uint8 HWC arrays whose ``__getitem__`` applies the
  per-sample transforms (``ToTensor``, and random crop + flip for 32x32 colour data) on the CPU,
  batched by a ``DataLoader`` (``num_workers=1, pin_memory=True`` on CUDA, in-process on the CPU,
  as the official scripts), each batch moved with ``.to(device)``. (No PIL round trip, which the
  official torchvision datasets add: this favours the reference.)

Two things are NOT official, so that the two implementations can be checked equal (the fairness
check of ``bench.py`` and ``tests/test_benchmarks.py``):

* the random start is drawn from an explicit ``generator`` with exactly the calls of
  ``spat.attacks.geometry`` (``torch.randn`` / ``torch.rand`` on that generator) instead of the
  global generator (``torch.randn(x.shape).cuda()`` / ``uniform_``);
* the random start is clipped to the [0, 1] box, as ours (and Madry's code) does; the official
  SPAT/TRADES code takes the first gradient at the unclipped x + 0.001·N(0, I). One clamp of the
  input: no measurable cost.

This file is written for the benchmark; it does not copy the official code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

# --------------------------------------------------------------------------------------------
# model: the official cosine head, and a copy of our network around it


class RefCosineLinear(nn.Module):
    """The official SPAT cosine classifier: ``nn.Linear`` whose weight is re-normalised IN PLACE
    (``weight.data = F.normalize(weight)``) at every forward; returns z = ŵᵀĝ + b (temperature 1).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, features: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        if normalize:
            features = F.normalize(features, p=2, dim=1)
            for _, module in self.linear.named_modules():
                if isinstance(module, nn.Linear):
                    module.weight.data = F.normalize(module.weight, p=2, dim=1)
        return self.linear(features)


class RefNet(nn.Module):
    """``normalize → backbone → head`` with an official-style head (plain ``nn.Linear`` for
    TRADES / PGD-AT, :class:`RefCosineLinear` for SPAT)."""

    def __init__(self, normalize: nn.Module, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.backbone(self.normalize(x))
        if isinstance(self.head, RefCosineLinear):
            return self.head(features, normalize=normalize)
        return self.head(features)


def reference_model(model: nn.Module) -> tuple[RefNet, float | None]:
    """A reference network with exactly our ``model``'s weights (deep copies): same input
    normalisation and backbone; the head becomes an ``nn.Linear`` (linear head) or the official
    in-place-normalising cosine layer (cosine head). Returns ``(net, s)``, s the cosine scale the
    official losses multiply by (``None`` for a linear head)."""
    from spat.models import CosineLinear, unwrap

    ours = unwrap(model)
    normalize = copy.deepcopy(ours.normalize)
    backbone = copy.deepcopy(ours.backbone)
    head: nn.Module
    if isinstance(ours.head, CosineLinear):
        if ours.head.bias is None:
            raise ValueError("the official cosine layer has a bias; build the model with one")
        head = RefCosineLinear(ours.head.in_features, ours.head.out_features)
        with torch.no_grad():
            head.linear.weight.copy_(ours.head.weight)
            head.linear.bias.copy_(ours.head.bias)
        scale: float | None = ours.head.scale
    else:
        head = copy.deepcopy(ours.head)
        scale = None
    ref = RefNet(normalize, backbone, head)
    p = next(ours.parameters())
    return ref.to(device=p.device, dtype=p.dtype), scale


def load_into_ours(ref: RefNet, model: nn.Module) -> nn.Module:
    """Copy a (trained) reference network's weights into a deep copy of our ``model`` so that
    both are evaluated by the same evaluator. Our cosine head computes the same z for any row
    norm, so the official in-place-normalised rows load as they are."""
    from spat.models import unwrap

    out = copy.deepcopy(unwrap(model))
    out.normalize.load_state_dict(ref.normalize.state_dict())
    out.backbone.load_state_dict(ref.backbone.state_dict())
    head = ref.head.linear if isinstance(ref.head, RefCosineLinear) else ref.head
    with torch.no_grad():
        out.head.weight.copy_(head.weight)
        if out.head.bias is not None:
            out.head.bias.copy_(head.bias)
    return out


# --------------------------------------------------------------------------------------------
# random starts (drawn as spat.attacks.geometry draws them, see the module docstring)


def _draw(fn: Callable[..., torch.Tensor], x: torch.Tensor,
          generator: torch.Generator | None) -> torch.Tensor:
    if generator is None or generator.device == x.device:
        return fn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return fn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


def normal_start(x_natural: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """x + 0.001·N(0, I) (SPAT/TRADES), clipped to [0, 1] (see the module docstring)."""
    x_adv = x_natural.detach() + 0.001 * _draw(torch.randn, x_natural, generator).detach()
    return torch.clamp(x_adv, 0.0, 1.0)


def uniform_start(x_natural: torch.Tensor, epsilon: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """x + U(−ε, ε) per pixel, clipped to [0, 1] (Madry et al.)."""
    noise = epsilon * (2.0 * _draw(torch.rand, x_natural, generator) - 1.0)
    return torch.clamp(x_natural.detach() + noise, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# SPAT (official spat.py style)


def sp_logits(logits: torch.Tensor, s: float, m: float, y: torch.Tensor,
              num_classes: int = 10) -> torch.Tensor:
    """Self-paced logits s·[(1 + m − z_y)·z_y, (z_j + m)·z_j] from temperature-1 logits z."""
    mask = F.one_hot(y, num_classes=num_classes)
    alpha_p = (1 + m - logits) * mask
    alpha_n = (logits + m) * (1 - mask)
    return s * (alpha_p * logits + alpha_n * logits)


def kl_loss(logits: torch.Tensor, adv_logits: torch.Tensor, s: float, n: float,
            criterion: nn.Module, batch_size: int) -> torch.Tensor:
    """HCP-ECP: (1/B)·Σ_i Σ_j k_ij(k_ij + n), k = p·(log p − log q), p, q softmaxes at scale s."""
    p = F.softmax(s * logits, dim=1)
    q = F.softmax(s * adv_logits, dim=1)
    kl = criterion(torch.log(q), p)
    return (1.0 / batch_size) * torch.sum(torch.sum(kl * (kl + n), dim=1))


def perturb_spat(model: nn.Module, x_natural: torch.Tensor, *, step_size: float,
                 epsilon: float, perturb_steps: int, s: float, n: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """SPAT's training adversary; the model must already be in eval mode."""
    criterion_kl = nn.KLDivLoss(reduction="none")
    batch_size = len(x_natural)
    x_adv = normal_start(x_natural, generator)
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            logits = model(x_natural)  # recomputed at every step, as the official code
            adv_logits = model(x_adv)
            loss_kl = kl_loss(logits, adv_logits, s, n, criterion_kl, batch_size)
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def spat_loss(model: nn.Module, x_natural: torch.Tensor, y: torch.Tensor,
              optimizer: torch.optim.Optimizer, step_size: float = 0.007,
              epsilon: float = 0.031, perturb_steps: int = 10, beta: float = 6.0,
              m: float = 0.2, n: float = 0.2, s: float = 8.0, num_classes: int = 10,
              generator: torch.Generator | None = None,
              x_adv: torch.Tensor | None = None) -> torch.Tensor:
    """SPAT's loss; ``model`` returns temperature-1 cosine logits (:class:`RefCosineLinear`).
    ``x_adv``: given adversarial examples (the fairness check only); None: the official attack."""
    criterion_kl = nn.KLDivLoss(reduction="none")
    model.eval()
    batch_size = len(x_natural)
    if x_adv is None:
        x_adv = perturb_spat(model, x_natural, step_size=step_size, epsilon=epsilon,
                             perturb_steps=perturb_steps, s=s, n=n, generator=generator)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach().requires_grad_(False)
    optimizer.zero_grad()
    logits = model(x_natural)
    adv_logits = model(x_adv)
    loss_natural = F.cross_entropy(sp_logits(logits, s, m, y, num_classes), y)
    loss_robust = kl_loss(logits, adv_logits, s, n, criterion_kl, batch_size)
    return loss_natural + beta * loss_robust


# --------------------------------------------------------------------------------------------
# TRADES (official trades.py style)


def perturb_trades(model: nn.Module, x_natural: torch.Tensor, *, step_size: float,
                   epsilon: float, perturb_steps: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES' training adversary (L∞); the model must already be in eval mode."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    x_adv = normal_start(x_natural, generator)
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                   F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


def trades_loss(model: nn.Module, x_natural: torch.Tensor, y: torch.Tensor,
                optimizer: torch.optim.Optimizer, step_size: float = 0.007,
                epsilon: float = 0.031, perturb_steps: int = 10, beta: float = 6.0,
                generator: torch.Generator | None = None,
                x_adv: torch.Tensor | None = None) -> torch.Tensor:
    """TRADES' loss CE(f(x), y) + β·KL(f(x)‖f(x'))/B (three outer forwards, as the official).
    ``x_adv``: given adversarial examples (the fairness check only); None: the official attack."""
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x_natural)
    if x_adv is None:
        x_adv = perturb_trades(model, x_natural, step_size=step_size, epsilon=epsilon,
                               perturb_steps=perturb_steps, generator=generator)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).detach().requires_grad_(False)
    optimizer.zero_grad()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1),
                                                    F.softmax(model(x_natural), dim=1))
    return loss_natural + beta * loss_robust


# --------------------------------------------------------------------------------------------
# PGD-AT (Madry et al.) and the PGD-k white-box evaluation


def perturb_pgd(model: nn.Module, x_natural: torch.Tensor, y: torch.Tensor, *, epsilon: float,
                step_size: float, num_steps: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD-k on the cross-entropy from a uniform start (model in the caller's mode)."""
    x = uniform_start(x_natural, epsilon, generator)
    for _ in range(num_steps):
        x.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
        grad = torch.autograd.grad(loss, [x])[0]
        x = x.detach() + step_size * torch.sign(grad.detach())
        x = torch.min(torch.max(x, x_natural - epsilon), x_natural + epsilon)
        x = torch.clamp(x, 0.0, 1.0)
    return x


def reference_attack(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                     eps: float, step_size: float, steps: int, scale: float | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The training attack of method ``name`` ("spat", "trades" or "pgd_at") in the reference
    style, with our threat-model names (used to check that both implementations agree)."""
    if name == "spat":
        assert scale is not None, "SPAT's attack needs the cosine head's scale s"
        return perturb_spat(model, x, step_size=step_size, epsilon=eps, perturb_steps=steps,
                            s=scale, n=0.2, generator=generator)
    if name == "trades":
        return perturb_trades(model, x, step_size=step_size, epsilon=eps, perturb_steps=steps,
                              generator=generator)
    return perturb_pgd(model, x, y, epsilon=eps, step_size=step_size, num_steps=steps,
                       generator=generator)


def pgd_at_loss(model: nn.Module, x_natural: torch.Tensor, y: torch.Tensor,
                optimizer: torch.optim.Optimizer, step_size: float = 2 / 255,
                epsilon: float = 8 / 255, perturb_steps: int = 10,
                generator: torch.Generator | None = None,
                x_adv: torch.Tensor | None = None) -> torch.Tensor:
    """Madry's PGD-AT loss CE(f(x'), y), x' = PGD-K(x) computed in eval mode.
    ``x_adv``: given adversarial examples (the fairness check only); None: the attack."""
    model.eval()
    if x_adv is None:
        x_adv = perturb_pgd(model, x_natural, y, epsilon=epsilon, step_size=step_size,
                            num_steps=perturb_steps, generator=generator)
    model.train()
    optimizer.zero_grad()
    return F.cross_entropy(model(x_adv.detach()), y)


def eval_adv_test(model: nn.Module, device: torch.device, test_loader: DataLoader, *,
                  epsilon: float, num_steps: int, step_size: float,
                  generator: torch.Generator | None = None) -> tuple[int, int, int, float]:
    """The official evaluation loop: per batch, clean forward, PGD-k, adversarial forward, and
    host reads of the loss and counts (``.item()``). Returns (clean correct, robust correct, N,
    summed clean loss)."""
    model.eval()
    test_loss, correct, adv_correct, total = 0.0, 0, 0, 0
    for data, target in test_loader:
        data, target = data.to(device), target.to(device)
        with torch.no_grad():
            output = model(data)
        test_loss += F.cross_entropy(output, target).item()
        correct += output.max(1, keepdim=True)[1].eq(target.view(-1, 1)).sum().item()
        x_adv = perturb_pgd(model, data, target, epsilon=epsilon, step_size=step_size,
                            num_steps=num_steps, generator=generator)
        with torch.no_grad():
            adv_output = model(x_adv)
        adv_correct += adv_output.max(1, keepdim=True)[1].eq(target.view(-1, 1)).sum().item()
        total += len(target)
    return correct, adv_correct, total, test_loss


# --------------------------------------------------------------------------------------------
# data path and training loop (official train_*.py style)


class ArrayDataset(Dataset):
    """(image, label) pairs from uint8 images, stored HWC as torchvision's CIFAR/MNIST datasets
    keep them; each image goes through the per-sample transform in ``__getitem__``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: str = "none") -> None:
        self.data = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())  # (N, H, W, C)
        self.targets = [int(t) for t in labels.tolist()]
        steps: list[Callable] = [transforms.ToTensor()]
        if augment == "crop_flip":
            steps += [transforms.RandomCrop(self.data.shape[1], padding=4),
                      transforms.RandomHorizontalFlip()]
        elif augment != "none":
            raise ValueError(f"unknown augmentation {augment!r}")
        self.transform = transforms.Compose(steps)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img, target = self.data[index], self.targets[index]
        return self.transform(img), target


def make_loader(images: torch.Tensor, labels: torch.Tensor, *, batch_size: int,
                device: torch.device, shuffle: bool, augment: str = "none",
                generator: torch.Generator | None = None, drop_last: bool = False) -> DataLoader:
    """The official loader: ``num_workers=1, pin_memory=True`` on CUDA, in-process otherwise."""
    kwargs = {"num_workers": 1, "pin_memory": True} if device.type == "cuda" else {}
    return DataLoader(ArrayDataset(images, labels, augment), batch_size=batch_size,
                      shuffle=shuffle, generator=generator, drop_last=drop_last, **kwargs)


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9,
                   weight_decay: float = 2e-4) -> torch.optim.SGD:
    """``optim.SGD(model.parameters(), lr, momentum, weight_decay)`` as the official scripts."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                           weight_decay=weight_decay)


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.optim.Optimizer], torch.Tensor]


def train_epoch(model: nn.Module, device: torch.device, train_loader: DataLoader,
                optimizer: torch.optim.Optimizer, loss_fn: LossFn,
                log_interval: int = 80) -> list[float]:
    """The official ``train()``: per batch ``.to(device)``, loss, backward, SGD step; the loss
    is read on the host every ``log_interval`` batches (the official progress print)."""
    model.train()
    logged = []
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model, data, target, optimizer)
        loss.backward()
        optimizer.step()
        if batch_idx % log_interval == 0:
            logged.append(loss.item())
    return logged
