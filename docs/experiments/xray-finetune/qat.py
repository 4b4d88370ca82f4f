"""Step 2b (GPU, PyTorch): quantisation-aware fine-tuning of the kept model, so that its int8 TFLite
conversion agrees with its float32 (``python qat.py RESULTS_DIR``; reads RESULTS_DIR/finetuned.npz and
``.xft/``, writes ``qat.npz``, ``qat_preds.npz`` and ``qat.json`` to ``$OUT`` or ``--out``).

TFLite's int8 is simulated in the forward pass (``finetune.ActRange``, ``fake_quant_weight``: weights
symmetric per output channel, activations asymmetric per tensor after every convolution, residual
addition, the pooling and the logits), with gradients passed straight through. Activation ranges start
from the min and max over the training images (what the converter's calibration does), then follow a
moving average. Fixed before any result: float32 throughout (bf16 cannot hold the rounding), Adam 1e-5,
batch 64, the same augmentation and class weights, up to 6 epochs, the epoch with the lowest
validation loss under simulation kept (epoch 0, the model as it came, included).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from finetune import PACK, MobileNetV2, augment, infer


def agreement(model: MobileNetV2, x: torch.Tensor) -> dict:
    """How often simulated int8 gives float32's class, and the mean and max |dp|."""
    model.fake_quant(False)
    p, _ = infer(model, x, bf16=False)
    model.fake_quant(True)
    q, _ = infer(model, x, bf16=False)
    return {"agreement": float(np.mean(p.argmax(1) == q.argmax(1))), "mean_abs_dp": float(np.abs(p - q).mean()),
            "max_abs_dp": float(np.abs(p - q).max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", type=Path)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    t0 = time.time()
    pack = np.load(PACK / "images.npz")
    offsets, part, cls = pack["offsets"], pack["part"], pack["cls"]
    keep = np.arange(len(offsets) - 1)
    if args.smoke:
        keep = np.concatenate([np.flatnonzero(part == p)[:16] for p in ("train", "val", "holdout", "external")])
    images = np.stack([cv2.imdecode(pack["jpeg"][offsets[i]:offsets[i + 1]], cv2.IMREAD_GRAYSCALE) for i in keep])
    part, cls = part[keep], cls[keep]
    x = torch.from_numpy(images).float()[:, None].to(device).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(cls).long().to(device)
    tr, va = np.flatnonzero(part == "train"), np.flatnonzero(part == "val")
    model = MobileNetV2().to(device).to(memory_format=torch.channels_last)
    model.load_keras(dict(np.load(args.results / "finetuned.npz")))
    model.eval()
    model.fake_quant(True, observe=True)
    for m in model.modules():
        if hasattr(m, "lo"):
            m.lo.fill_(float("inf"))
            m.hi.fill_(float("-inf"))
    infer(model, x[tr], bf16=False)
    model.fake_quant(True)
    log: dict = {"before": {"train": agreement(model, x[tr]), "val": agreement(model, x[va])}}
    print("simulated int8 vs float32 before:", log["before"], flush=True)
    counts = torch.bincount(y[tr], minlength=3).float()
    weight = (len(tr) / (3 * counts.clamp_min(1))).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    torch.manual_seed(0)

    def val_loss() -> float:
        model.fake_quant(True)
        p, _ = infer(model, x[va], bf16=False)
        return float(F.nll_loss(torch.log(torch.from_numpy(p).clamp_min(1e-7)), y[va].cpu()))

    best = (val_loss(), {k: v.clone() for k, v in model.state_dict().items()}, 0)
    history = {"val_loss": [best[0]], "loss": []}
    opt = torch.optim.Adam(model.parameters(), 1e-5)
    for epoch in range(1, (1 if args.smoke else args.epochs) + 1):
        model.train()
        model.fake_quant(True)
        order = torch.randperm(len(tr), generator=g, device=device)
        total = 0.0
        for i in range(0, len(tr), 64):
            idx = tr[order[i:i + 64].cpu().numpy()]
            loss = F.cross_entropy(model(augment(x[idx], g).contiguous(memory_format=torch.channels_last)), y[idx], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history["loss"].append(total / len(tr))
        v = val_loss()
        history["val_loss"].append(v)
        print(f"epoch {epoch}: loss {history['loss'][-1]:.4f} val {v:.4f} {time.time() - t0:.0f} s", flush=True)
        if v < best[0]:
            best = (v, {k: t.clone() for k, t in model.state_dict().items()}, epoch)
    model.load_state_dict(best[1])
    model.eval()
    log |= {"after": {"train": agreement(model, x[tr]), "val": agreement(model, x[va])}, "kept_epoch": best[2],
            "best_val_loss": best[0], "history": history, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    print("simulated int8 vs float32 after:", log["after"], "kept epoch", best[2], flush=True)
    model.fake_quant(False)
    float_probs, _ = infer(model, x, bf16=False)
    model.fake_quant(True)
    int8_probs, _ = infer(model, x, bf16=False)
    np.savez(out / "qat_preds.npz", float32=float_probs, simulated_int8=int8_probs)
    np.savez(out / "qat.npz", **model.keras_weights())
    (out / "qat.json").write_text(json.dumps(log | {"seconds": time.time() - t0}, indent=2))


if __name__ == "__main__":
    main()
