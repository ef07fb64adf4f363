"""The shared, frozen vision tower: pretrained once on dense per-patch labels, then run once over every
image. It plays CLIP's role in the paper; its features make every cell of the grid cheaper, too."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlmscale.fileio import atomic_torch_save, read_json, write_json
from vlmscale.model import build_vision_tower, patch_features

LABEL_CLASSES = {"shape": 5, "colour": 5, "glyph": 11, "object": 17}


def with_object_labels(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the joint (shape, colour) class per patch. Trained to encode it, the tower writes "red circle"
    as one direction, so an average over many patches still says which colour goes with which shape
    (like CLIP's global embedding); separate shape and colour directions would lose that binding."""
    joint = torch.where(labels["shape"] > 0, (labels["shape"] - 1) * 4 + labels["colour"], 0)
    return {**labels, "object": joint}


def load_pixels(root: Path, names: list[str], size: int) -> torch.Tensor:
    from PIL import Image

    arrays = [np.asarray(Image.open(root / n).convert("RGB").resize((size, size), Image.BICUBIC)) for n in names]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0


class PatchLabeller(nn.Module):
    def __init__(self, tower: nn.Module, dim: int):
        super().__init__()
        self.tower = tower
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in LABEL_CLASSES.items()})

    def forward(self, pixels):
        feats = patch_features(self.tower, pixels)
        return {k: head(feats) for k, head in self.heads.items()}


def pretrain(spec: dict, pixels: torch.Tensor, labels: dict[str, torch.Tensor], log=print) -> PatchLabeller:
    """Train the tower (with linear heads) to label every patch: shape, colour and glyph."""
    torch.manual_seed(spec["seed"])
    model = PatchLabeller(build_vision_tower(spec), spec["hidden_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=spec["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec["lr"], total_steps=spec["steps"], pct_start=0.1)
    gen = torch.Generator().manual_seed(spec["seed"])
    n = len(pixels)
    for step in range(spec["steps"]):
        idx = torch.randint(n, (spec["batch_size"],), generator=gen)
        out = model(pixels[idx])
        loss = sum(F.cross_entropy(out[k].flatten(0, 1), labels[k][idx].flatten()) for k in LABEL_CLASSES)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == spec["steps"] - 1:
            log(f"tower step {step}/{spec['steps']} loss {loss.item():.4f}")
    return model.eval()


@torch.no_grad()
def patch_accuracy(model: PatchLabeller, pixels, labels, max_images: int = 1000) -> dict:
    out = model(pixels[:max_images])
    return {k: float((out[k].argmax(-1) == labels[k][:max_images].flatten(1)).float().mean()) for k in LABEL_CLASSES}


@torch.no_grad()
def encode_all(tower: nn.Module, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([patch_features(tower, pixels[i : i + batch]) for i in range(0, len(pixels), batch)])


def pretrained_on_patch_labels(spec: dict, root: Path):
    npz = np.load(root / "patch_labels.npz")
    names = [str(n) for n in npz["images"]]
    pixels = load_pixels(root, names, spec["image_size"])
    labels = with_object_labels({k: torch.from_numpy(npz[k]) for k in ("shape", "colour", "glyph")})
    train = torch.tensor([n.startswith("images/train_") for n in names])
    labeller = pretrain(spec, pixels[train], {k: v[train] for k, v in labels.items()})
    held_out = patch_accuracy(labeller, pixels[~train], {k: v[~train] for k, v in labels.items()})
    return names, pixels, labeller.tower, held_out


def main(cfg: dict) -> dict:
    """Stage entry point. cfg: vision spec, data root, output folder; writes tower.pt, features.pt, tower.json."""
    torch.set_num_threads(cfg.get("threads", 1))
    start = time.time()
    spec, root, out = cfg["vision"], Path(cfg["data_root"]), Path(cfg["out"])
    manifest = read_json(root / "manifest.json")
    if (root / "patch_labels.npz").exists():
        names, pixels, tower, held_out = pretrained_on_patch_labels(spec, root)
    else:
        # Real data has no per-patch labels: the tiny tower stays at its seeded random init (a frozen
        # random feature map). Real runs use a pretrained encoder instead.
        print("no patch labels in the data set: the tiny tower is not pretrained (frozen random init)", flush=True)
        torch.manual_seed(spec["seed"])
        names, tower, held_out = manifest["images"], build_vision_tower(spec).eval(), {}
        pixels = load_pixels(Path(manifest.get("image_root", root)), names, spec["image_size"])
    features = encode_all(tower, pixels)
    atomic_torch_save(tower.state_dict(), out / "tower.pt")
    atomic_torch_save({"images": names, "features": features.half()}, out / "features.pt")
    summary = {
        "spec": spec,
        "held_out_patch_accuracy": held_out,
        "n_images": len(names),
        "feature_shape": list(features.shape),
        "seconds": round(time.time() - start, 1),
    }
    write_json(out / "tower.json", summary)
    return summary
