"""Step 2 (GPU, PyTorch): fine-tune the whole ImageNet MobileNetV2 trunk on the radiographs, and the
same for each source left out. Reads ``.xft/`` (written by ``pack.py``), writes to ``$OUT`` (or ``--out``).

The network is tf_keras' MobileNetV2 1.0 224 rebuilt in PyTorch: the same layers in the same order,
Keras' padding (stride-2 convolutions pad one pixel right and bottom only), ReLU6, and each batch
normalisation folded into its convolution's bias, as in Coral's file (so normalisation stays frozen, as
in the package's fine-tuning). Before training, the port's pooled features must equal those tf_keras
computed for ``check.npz`` (else the run stops).

Protocol, fixed before any result was seen:
- main: train on ``train``, early stopping and the kept epoch on ``val``; hold-out and external never
  used. Stage 1: trunk frozen, the head (dropout 0.3, linear) for 30 epochs on the pooled features,
  Adam 1e-3. Stage 2: everything trainable, Adam 1e-4, up to 15 epochs, one random augmentation per
  image (rotation +-10 degrees, scale 0.9-1.1, shift +-5%, brightness +-0.1, contrast 0.9-1.1), class
  weights balanced, batch 64, early stopping on the validation loss (patience 3, best epoch kept).
  Seeds 0, 1, 2; the model kept is the seed with the lowest validation loss.
- leave one source out: the same, seed 0, with every image of that source removed from ``train``
  and ``val``; scored on every image of the left-out source.
Outputs: ``preds.npz`` (probabilities of every image under every run), ``features_base.npz`` and
``features_ft.npz`` (pooled features of every image, frozen ImageNet trunk and kept model, float16),
``finetuned.npz`` (the kept model's weights in Keras layout), ``runs.json`` (histories, timings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PACK = Path(__file__).resolve().parents[3] / ".xft"
BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """TFLite's int8 weights: symmetric, per output channel, [-127, 127]; gradients pass straight through."""
    scale = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8) / 127
    return w + (torch.clamp(torch.round(w / scale), -127, 127) * scale - w).detach()


class ActRange(nn.Module):
    """Identity, or (``enabled``) TFLite's 8-bit activation: asymmetric, per tensor, over the range seen
    (min/max while ``observe``, then a moving average while training); gradients pass straight through."""

    def __init__(self):
        super().__init__()
        self.enabled, self.observe = False, False
        self.register_buffer("lo", torch.tensor(0.0))
        self.register_buffer("hi", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        lo, hi = x.detach().min().float(), x.detach().max().float()
        if self.observe:
            self.lo.copy_(torch.minimum(self.lo, lo))
            self.hi.copy_(torch.maximum(self.hi, hi))
        elif self.training:
            self.lo.mul_(0.99).add_(0.01 * torch.minimum(lo, torch.zeros_like(lo)))
            self.hi.mul_(0.99).add_(0.01 * torch.maximum(hi, torch.zeros_like(hi)))
        scale = (self.hi - self.lo).clamp_min(1e-8) / 255
        zero = torch.round(-self.lo / scale)
        q = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
        return x + (q - x).detach()


class Conv(nn.Module):
    """A Keras convolution + folded batch normalisation (+ ReLU6): 'same' padding at stride 1, one
    pixel right and bottom then 'valid' at stride 2."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, depthwise: bool = False, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=cin if depthwise else 1, bias=True)
        self.k, self.stride, self.relu, self.depthwise = k, stride, relu, depthwise
        self.act = ActRange()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.k == 3:
            x = F.pad(x, (0, 1, 0, 1) if self.stride == 2 else (1, 1, 1, 1))
        w = fake_quant_weight(self.conv.weight) if self.act.enabled else self.conv.weight
        x = F.conv2d(x, w, self.conv.bias, self.stride, 0, 1, self.conv.groups)
        return self.act(F.relu6(x) if self.relu else x)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, t: int, stride: int):
        super().__init__()
        mid = cin * t
        self.expand = Conv(cin, mid, 1) if t != 1 else None
        self.depthwise = Conv(mid, mid, 3, stride, depthwise=True)
        self.project = Conv(mid, cout, 1, relu=False)
        self.residual = stride == 1 and cin == cout
        self.add = ActRange()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return self.add(x + y) if self.residual else y

    def convs(self) -> list[Conv]:
        return ([self.expand] if self.expand is not None else []) + [self.depthwise, self.project]


class MobileNetV2(nn.Module):
    """Grey (N, 1, 224, 224) in [0, 255] -> pooled 1280 features (``features``) and 3 logits."""

    def __init__(self, n_classes: int = 3, dropout: float = 0.3):
        super().__init__()
        layers, cin = [Conv(3, 32, 3, 2)], 32
        for t, c, n, s in BLOCKS:
            for i in range(n):
                layers.append(Block(cin, c, t, s if i == 0 else 1))
                cin = c
        layers.append(Conv(cin, 1280, 1))
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Linear(1280, n_classes)
        self.pool_act, self.logits_act = ActRange(), ActRange()

    def convs(self) -> list[Conv]:
        out: list[Conv] = []
        for m in self.trunk:
            out += m.convs() if isinstance(m, Block) else [m]
        return out

    def features(self, grey: torch.Tensor) -> torch.Tensor:
        x = (grey / 127.5 - 1.0).expand(-1, 3, -1, -1)
        return self.pool_act(self.trunk(x).mean(dim=(2, 3)))

    def forward(self, grey: torch.Tensor) -> torch.Tensor:
        return self.logits_act(self.logits(self.dropout(self.features(grey))))

    def fake_quant(self, enabled: bool, observe: bool = False) -> None:
        """Simulate TFLite's int8 (weights per channel, activations per tensor) or not; ``observe``:
        record the activations' min and max (calibration) instead of using them."""
        for m in self.modules():
            if isinstance(m, ActRange):
                m.enabled, m.observe = enabled, observe

    def load_keras(self, weights: dict[str, np.ndarray]) -> None:
        """Kernels (Keras layout) and folded biases k0, b0, ... in graph order (the classifier, if any, ignored)."""
        for i, c in enumerate(self.convs()):
            k = weights[f"k{i}"]
            k = k.transpose(2, 3, 0, 1) if c.depthwise else k.transpose(3, 2, 0, 1)
            c.conv.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(k)))
            c.conv.bias.data.copy_(torch.from_numpy(weights[f"b{i}"]))
        if "logits_kernel" in weights:
            self.logits.weight.data.copy_(torch.from_numpy(weights["logits_kernel"].T.copy()))
            self.logits.bias.data.copy_(torch.from_numpy(weights["logits_bias"]))

    def keras_weights(self) -> dict[str, np.ndarray]:
        out = {}
        for i, c in enumerate(self.convs()):
            k = c.conv.weight.detach().float().cpu().numpy()
            out[f"k{i}"] = k.transpose(2, 3, 0, 1) if c.depthwise else k.transpose(2, 3, 1, 0)
            out[f"b{i}"] = c.conv.bias.detach().float().cpu().numpy()
        out["logits_kernel"] = self.logits.weight.detach().float().cpu().numpy().T
        out["logits_bias"] = self.logits.bias.detach().float().cpu().numpy()
        return out


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random affine (rotation, scale, shift) and intensity change per image; x (N, 1, H, W) in [0, 255]."""
    n = x.shape[0]
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g, device=x.device)  # noqa: E731
    angle, scale = r(-10, 10) * math.pi / 180, r(0.9, 1.1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, r(-0.05, 0.05) * 2], 1), torch.stack([sin, cos, r(-0.05, 0.05) * 2], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * r(0.9, 1.1).view(n, 1, 1, 1) + mean + r(-0.1, 0.1).view(n, 1, 1, 1) * 255
    return y.clamp(0, 255)


@torch.no_grad()
def infer(model: MobileNetV2, x: torch.Tensor, batch: int = 256, bf16: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, pooled features) of every image, inference mode (bf16 on a GPU unless told not to)."""
    model.eval()
    probs, feats = [], []
    for i in range(0, len(x), batch):
        with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda and bf16):
            f = model.features(x[i:i + batch])
        f = f.float()
        probs.append(torch.softmax(model.logits_act(model.logits(f)), 1).cpu().numpy())
        feats.append(f.cpu().numpy())
    return np.concatenate(probs), np.concatenate(feats)


def val_loss(model: MobileNetV2, x: torch.Tensor, y: torch.Tensor) -> float:
    p, _ = infer(model, x)
    return float(F.nll_loss(torch.log(torch.from_numpy(p).clamp_min(1e-7)), y.cpu()).item())


def train(base: dict, x: torch.Tensor, y: torch.Tensor, tr: np.ndarray, va: np.ndarray, seed: int,
          head_epochs: int, epochs: int, patience: int = 3, batch: int = 64) -> tuple[MobileNetV2, dict]:
    """Stage 1 (head on frozen features) then stage 2 (all trainable), early stopping on ``va``."""
    torch.manual_seed(seed)
    g = torch.Generator(device=x.device).manual_seed(seed)
    model = MobileNetV2().to(x.device).to(memory_format=torch.channels_last)
    model.load_keras(base)
    counts = torch.bincount(y[tr], minlength=3).float()
    weight = (len(tr) / (3 * counts.clamp_min(1))).to(x.device)
    xt, yt, xv, yv = x[tr], y[tr], x[va], y[va]
    history: dict[str, list[float]] = {"head_loss": [], "loss": [], "val_loss": []}
    _, f = infer(model, xt)
    ft = torch.from_numpy(f).to(x.device)
    opt = torch.optim.Adam(model.logits.parameters(), 1e-3)
    for _ in range(head_epochs):
        model.train()
        order = torch.randperm(len(tr), generator=g, device=x.device)
        total = 0.0
        for i in range(0, len(tr), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model.logits(model.dropout(ft[idx])), yt[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        history["head_loss"].append(total / len(tr))
    best = (val_loss(model, xv, yv), {k: v.clone() for k, v in model.state_dict().items()}, 0)
    history["val_loss"].append(best[0])
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(tr), generator=g, device=x.device)
        total = 0.0
        for i in range(0, len(tr), batch):
            idx = order[i:i + batch]
            with torch.autocast("cuda", torch.bfloat16, enabled=x.is_cuda):
                loss = F.cross_entropy(model(augment(xt[idx], g).contiguous(memory_format=torch.channels_last)).float(),
                                       yt[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        history["loss"].append(total / len(tr))
        v = val_loss(model, xv, yv)
        history["val_loss"].append(v)
        if v < best[0]:
            best = (v, {k: t.clone() for k, t in model.state_dict().items()}, epoch)
        elif epoch - best[2] >= patience:
            break
    model.load_state_dict(best[1])
    return model, {"history": history, "best_val_loss": best[0], "best_epoch": best[2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--smoke", action="store_true", help="a few images and epochs, to check the script on a CPU")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    pack = np.load(PACK / "images.npz")
    base = dict(np.load(PACK / "trunk.npz"))
    jpeg, offsets = pack["jpeg"], pack["offsets"]
    n = len(offsets) - 1
    images = np.stack([cv2.imdecode(jpeg[offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE) for i in range(n)])
    part, source, sources = pack["part"], pack["source"], [str(s) for s in pack["sources"]]
    if args.smoke:
        keep = np.concatenate([np.flatnonzero(part == p)[:24] for p in ("train", "val", "holdout", "external")])
        images, part, source, cls = images[keep], part[keep], source[keep], pack["cls"][keep]
    else:
        cls = pack["cls"]
    x = torch.from_numpy(images).float()[:, None].to(device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(cls).long().to(device)
    log = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__, "n_images": int(n)}

    check = np.load(PACK / "check.npz")
    probe = MobileNetV2().to(device)
    probe.load_keras(base)
    probe.eval()
    with torch.no_grad():
        got = probe.features(torch.from_numpy(check["images"]).float()[:, None].to(device)).cpu().numpy()
    diff = float(np.abs(got - check["features"]).max())
    log["port_max_abs_diff"] = diff
    log["port_feature_scale"] = float(np.abs(check["features"]).max())
    print("port check: max |torch - keras| =", diff, "of", log["port_feature_scale"], flush=True)
    if diff > 1e-2 * log["port_feature_scale"]:
        (out / "runs.json").write_text(json.dumps(log, indent=2))
        raise SystemExit("the PyTorch port does not reproduce tf_keras' features")
    torch.backends.cudnn.benchmark = True
    head_epochs, epochs = (2, 1) if args.smoke else (30, 15)
    _, fbase = infer(probe, x)
    np.savez_compressed(out / "features_base.npz", features=fbase.astype(np.float16))
    preds: dict[str, np.ndarray] = {}
    runs: dict[str, dict] = {}
    tr, va = np.flatnonzero(part == "train"), np.flatnonzero(part == "val")
    kept = None
    for seed in (0, 1, 2):
        t = time.time()
        model, info = train(base, x, y, tr, va, seed, head_epochs, epochs)
        preds[f"main_seed{seed}"], f = infer(model, x)
        runs[f"main_seed{seed}"] = info | {"seconds": time.time() - t}
        print(f"main seed {seed}: val loss {info['best_val_loss']:.4f} epoch {info['best_epoch']} {time.time() - t:.0f} s", flush=True)
        if kept is None or info["best_val_loss"] < kept[0]:
            kept = (info["best_val_loss"], seed, model.keras_weights(), f)
        np.savez(out / "preds.npz", **preds)
        (out / "runs.json").write_text(json.dumps(log | {"runs": runs}, indent=2))
    assert kept is not None
    np.savez(out / "finetuned.npz", **kept[2])
    np.savez_compressed(out / "features_ft.npz", features=kept[3].astype(np.float16))
    log["kept_seed"] = kept[1]
    for s in range(len(sources)):
        if sources[s].startswith("external") or not np.any(source == s) or np.all(source[tr] == s):
            continue
        if time.time() - t0 > 450:
            print("time is up: the remaining sources are not left out", flush=True)
            break
        t = time.time()
        model, info = train(base, x, y, tr[source[tr] != s], va[source[va] != s], 0, head_epochs, epochs)
        preds[f"loso_{sources[s]}"], _ = infer(model, x)
        runs[f"loso_{sources[s]}"] = info | {"seconds": time.time() - t}
        print(f"left out {sources[s]}: epoch {info['best_epoch']} {time.time() - t:.0f} s", flush=True)
        np.savez(out / "preds.npz", **preds)
        (out / "runs.json").write_text(json.dumps(log | {"runs": runs}, indent=2))
    log["seconds"] = time.time() - t0
    (out / "runs.json").write_text(json.dumps(log | {"runs": runs}, indent=2))


if __name__ == "__main__":
    main()
