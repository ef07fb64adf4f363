"""The shared, frozen vision encoder and where a cell's patch features come from.

* `vision.source: tiny` (the synthetic grid): a tiny ViT pretrained once on dense per-patch labels; it
  plays CLIP's role in the paper.
* any other source: a pretrained CLIP vision model (Hugging Face id or local folder) loaded with
  `from_pretrained`, its features taken from `vision.feature_layer` (LLaVA's: the second-to-last layer),
  CLS token dropped, images prepared by the model's own image processor.

A row's features are one tensor: the single-level features (B, P, D), then, when the grid's adapter
reads them (tokenpacker, quecc), the multi-level concatenation of `multi_level_layers` hidden states
(B, P, L*D), CLS dropped (the references' `feature_select`). The tiny tower's single level is its final
output (after its last LayerNorm: what it was pretrained to label patches from; its layer -2 would be a
one-block feature); its multi-level layers default to every block's output, 1..num_layers.

`vision.cache: true` runs the encoder once over every image here and stores the features (a grid of
cells then never runs the encoder again); `false` records the encoder only, and each training or
evaluation job runs it on its batches (LLaVA-558K at 576 x 1024 features per image would be ~660 GB).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vlmscale.data.synthetic import COLOURS, LETTERS, SHAPES
from vlmscale.fileio import atomic_torch_save, read_json, write_json
from vlmscale.model.vlm import build_vision_tower, patch_features
from vlmscale.specs import TowerJob

# Per-patch label heads (class 0 = background): what the tiny tower is pretrained to see.
LABEL_CLASSES = {
    "shape": len(SHAPES) + 1,
    "colour": len(COLOURS) + 1,
    "glyph": len(LETTERS) + 1,
    "object": len(SHAPES) * len(COLOURS) + 1,
}


def with_object_labels(labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the joint (shape, colour) class per patch. Trained to encode it, the tower writes "red circle"
    as one direction, so an average over many patches still says which colour goes with which shape
    (like CLIP's global embedding); separate shape and colour directions would lose that binding."""
    joint = torch.where(labels["shape"] > 0, (labels["shape"] - 1) * len(COLOURS) + labels["colour"], 0)
    return {**labels, "object": joint}


def load_pixels(root: Path, names: list[str], size: int) -> torch.Tensor:
    from PIL import Image

    return torch.stack([pixels_of(Image.open(root / n).convert("RGB"), size) for n in names])


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


def pretrained_on_patch_labels(spec: dict, root: Path):
    npz = np.load(root / "patch_labels.npz")
    names = [str(n) for n in npz["images"]]
    pixels = load_pixels(root, names, spec["image_size"])
    labels = with_object_labels({k: torch.from_numpy(npz[k]) for k in ("shape", "colour", "glyph")})
    train = torch.tensor([n.startswith("images/train_") for n in names])
    labeller = pretrain(spec, pixels[train], {k: v[train] for k, v in labels.items()})
    held_out = patch_accuracy(labeller, pixels[~train], {k: v[~train] for k, v in labels.items()})
    return names, labeller.tower, held_out


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the tiny tower has no processor: CLIP's mean pads it


def expand2square(img, background: tuple[int, ...]):
    """LLaVA's expand2square (llava/mm_utils.py): the image pasted centred on a square of `background`
    (offset (w - h) // 2, floored), so a non-square image keeps its edges instead of being centre-cropped."""
    from PIL import Image

    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    result = Image.new(img.mode, (side, side), background)
    result.paste(img, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return result


def pad_colour(image_mean) -> tuple[int, ...]:
    """LLaVA's background: tuple(int(x * 255) for x in processor.image_mean), truncated, not rounded."""
    return tuple(int(x * 255) for x in image_mean)


def prepare(images: list, aspect: str, image_mean) -> list:
    """LLaVA's image_aspect_ratio: 'pad' squares each image with the processor's mean colour first;
    'square' leaves it to the processor (CLIP's resizes the short side and centre-crops)."""
    if aspect not in ("square", "pad"):
        raise ValueError(f"image_aspect_ratio: {aspect!r} is not one of ['square', 'pad']")
    if aspect == "square":
        return images
    return [expand2square(img, pad_colour(image_mean)) for img in images]


class ImageEncoder:
    """The frozen encoder as the cells see it: image files in, (B, P, D) patch features out."""

    def __init__(self, summary: dict, folder: Path, device: str | torch.device = "cpu"):
        spec = summary["spec"]
        self.device = torch.device(device)
        self.dtype = torch.bfloat16 if spec.get("bf16") and self.device.type == "cuda" else torch.float32
        if spec["source"] == "tiny":
            self.model = build_vision_tower(spec)
            self.model.load_state_dict(torch.load(folder / "tower.pt", weights_only=True))
            self.processor, self.layer, self.size = None, None, spec["image_size"]
        else:
            from transformers import AutoImageProcessor, CLIPVisionModel

            self.model = CLIPVisionModel.from_pretrained(spec["source"], dtype=self.dtype)
            self.processor = AutoImageProcessor.from_pretrained(spec["source"])
            self.layer, self.size = spec["feature_layer"], self.model.config.image_size
        self.multi = list(spec.get("multi_level_layers") or [])
        self.model.to(self.device).eval().requires_grad_(False)

    def __call__(self, paths: list[str], aspect: str = "pad") -> torch.Tensor:
        from PIL import Image

        return self.encode([Image.open(p).convert("RGB") for p in paths], aspect)

    @torch.no_grad()
    def encode(self, images: list, aspect: str = "pad") -> torch.Tensor:
        """(B, P, D * (1 + L)) features of RGB PIL images: single level, then the L multi-level layers."""
        images = prepare(images, aspect, self.processor.image_mean if self.processor is not None else CLIP_MEAN)
        if self.processor is None:
            pixels = torch.stack([pixels_of(img, self.size) for img in images]).to(self.device)
        else:
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return self.features_of(pixels)

    @torch.no_grad()
    def blank(self) -> torch.Tensor:
        """(P, D * (1 + L)) features of LLaVA's image for a text-only record: pixel values all zero."""
        dtype = torch.float32 if self.processor is None else self.dtype
        return self.features_of(torch.zeros(1, 3, self.size, self.size, device=self.device, dtype=dtype))[0]

    def features_of(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        single = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
        levels = [out.hidden_states[i] for i in self.multi]
        return torch.cat([single, *levels], dim=-1)[:, 1:].float()  # CLS dropped


def pixels_of(img, size: int) -> torch.Tensor:
    from PIL import Image

    array = np.array(img.resize((size, size), Image.BICUBIC))
    return torch.from_numpy(array).permute(2, 0, 1).float() / 255.0


class CachedFeatures:
    """Features computed once by the vision stage, looked up by image path."""

    def __init__(self, path: Path, image_root: str):
        blob = torch.load(path, weights_only=False)
        self.features = blob["features"]
        self.rows = {os.path.join(image_root, name): i for i, name in enumerate(blob["images"])}

    def missing(self, paths) -> list[str]:
        return sorted({p for p in paths if p not in self.rows})

    def with_aspect(self, aspect: str) -> "CachedFeatures":
        return self  # encoded once, padded (vision stage): equal to 'square' for the square synthetic images

    def blank(self) -> torch.Tensor:
        """A text-only row's features: zeros (the cache holds no blank image; none of its tokens is kept)."""
        return torch.zeros(self.features.shape[1:])

    def __call__(self, paths: list[str]) -> torch.Tensor:
        return self.features[torch.tensor([self.rows[p] for p in paths])].float()


class OnlineFeatures:
    """The encoder run on each batch inside the job (nothing cached); a missing image is found up front."""

    def __init__(self, encoder: ImageEncoder, aspect: str = "pad"):
        self.encoder, self.aspect = encoder, aspect

    def missing(self, paths) -> list[str]:
        return sorted({p for p in paths if not os.path.isfile(p)})

    def with_aspect(self, aspect: str) -> "OnlineFeatures":
        return OnlineFeatures(self.encoder, aspect)

    def blank(self) -> torch.Tensor:
        return self.encoder.blank()

    def __call__(self, paths: list[str]) -> torch.Tensor:
        return self.encoder(paths, self.aspect)  # stays on the job's device


def feature_source(summary_path: str | Path, image_root: str, device="cpu"):
    """Where a cell's features come from, as the vision stage recorded it in tower.json."""
    folder = Path(summary_path).parent
    summary = read_json(summary_path)
    if summary.get("features"):
        return CachedFeatures(folder / summary["features"], image_root), summary
    return OnlineFeatures(ImageEncoder(summary, folder, device)), summary


def check_pretrained(spec: dict) -> dict:
    """The pretrained encoder's shape, checked against the grid's vision.image_size / patch_size."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec["source"])
    config = getattr(config, "vision_config", config)  # a full CLIP checkpoint holds the vision config inside
    for key in ("image_size", "patch_size"):
        if getattr(config, key) != spec[key]:
            raise ValueError(
                f"vision.{key}: {spec['source']} has {key} {getattr(config, key)}, the config says "
                f"{spec[key]}; set vision.{key}: {getattr(config, key)}"
            )
    layers = config.num_hidden_layers
    if not -layers <= spec["feature_layer"] <= layers:
        raise ValueError(f"vision.feature_layer: {spec['feature_layer']} is outside the encoder's {layers} layers")
    bad = [x for x in spec.get("multi_level_layers") or [] if not -(layers + 1) <= x <= layers]
    if bad:
        raise ValueError(f"vision.multi_level_layers: {bad} outside the encoder's hidden states 0..{layers}")
    return {"hidden_size": config.hidden_size, "num_layers": layers}


def main(job: TowerJob) -> dict:
    """Stage entry point: writes tower.json (+ tower.pt for the tiny tower, + features.pt when vision.cache
    is on)."""
    spec, root, out = job.spec, Path(job.data_root), Path(job.out)
    # The tiny tower trains and encodes in one thread: a CPU reduction's order, hence the weights' last bits,
    # depends on the thread count, and Snakemake's --cores sets that (every cell downstream would differ
    # with the machine's cores). One thread makes the tower, and the grid, the same bits on any machine.
    torch.set_num_threads(1 if spec["source"] == "tiny" else job.threads)
    start = time.time()
    manifest = read_json(root / "manifest.json")
    image_root = manifest.get("image_root", str(root))
    held_out, names = {}, manifest["images"]
    if spec["source"] != "tiny":
        shape = check_pretrained(spec)
    elif (root / "patch_labels.npz").exists():
        names, tower, held_out = pretrained_on_patch_labels(spec, root)
        atomic_torch_save(tower.state_dict(), out / "tower.pt")
        shape = {"hidden_size": spec["hidden_size"]}
    else:
        # Real data has no per-patch labels: the tiny tower stays at its seeded random init (a frozen
        # random feature map). Real runs use a pretrained encoder instead.
        print("no patch labels in the data set: the tiny tower is not pretrained (frozen random init)", flush=True)
        torch.manual_seed(spec["seed"])
        atomic_torch_save(build_vision_tower(spec).state_dict(), out / "tower.pt")
        shape = {"hidden_size": spec["hidden_size"]}
    summary = {
        "spec": spec,
        **shape,
        "patch_grid": spec["image_size"] // spec["patch_size"],
        "features": "features.pt" if spec["cache"] else None,
        "held_out_patch_accuracy": held_out,
        "n_images": len(names),
    }
    if spec["cache"]:
        features = encode_images(ImageEncoder(summary, out, device_for_job()), image_root, names)
        atomic_torch_save({"images": names, "features": features.half()}, out / "features.pt")
        summary["feature_shape"] = list(features.shape)
    summary["seconds"] = round(time.time() - start, 1)
    write_json(out / "tower.json", summary)
    return summary


def encode_images(encoder: ImageEncoder, image_root: str, names: list[str], batch: int = 256) -> torch.Tensor:
    chunks = []
    for i in range(0, len(names), batch):
        chunks.append(encoder([os.path.join(image_root, n) for n in names[i : i + batch]]).cpu())
        if (i // batch) % 20 == 0:
            print(f"encoded {min(i + batch, len(names))}/{len(names)} images", flush=True)
    return torch.cat(chunks)


def device_for_job() -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
