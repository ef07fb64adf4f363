"""Regenerate tests/reference/fixtures/ from the reference implementations themselves (never from vlmscale).

The reference source is NOT copied into this repository: this script reads it at run time from git
snapshots of three public repositories, at pinned commits, and executes it:

  CircleRadon/TokenPacker           llava/model/multimodal_projector/builder.py  (TokenPacker, build_vision_projector)
  locuslab/llava-token-compression  llava/model/multimodal_projector/quecc.py    (QueCC)
                                    llava/model/multimodal_projector/builder.py  (build_vision_projector,
                                                                                  build_token_compressor)
  haotian-liu/LLaVA                 llava/mm_utils.py                            (expand2square)

How to rerun
------------
1. Get the three repositories as git directories (bare is fine).  In a vlmscale agent session the
   `fetch` tool does it: fetch github:CircleRadon/TokenPacker, github:locuslab/llava-token-compression,
   github:haotian-liu/LLaVA -> /work/.mirror/<owner>+<name>/repo.  Elsewhere: `git clone --bare
   https://github.com/<owner>/<name> <root>/<owner>+<name>/repo`.
2. From the repository root, with the project venv (torch, numpy, pillow, einops -- QueCC imports einops):

       .venv/bin/python tests/reference/make_fixtures.py                       # --mirror-root /work/.mirror
       .venv/bin/python tests/reference/make_fixtures.py --mirror-root ROOT --out tests/reference/fixtures

   The commits are pinned below (REFERENCES); the script fails if a mirror lacks that commit.

What is executed, and what is stubbed
-------------------------------------
* The two projector builder.py files and quecc.py are executed WHOLE, as modules of throw-away packages
  (`_ref_tokenpacker`, `_ref_quecc`) registered in sys.modules, so that QueCC's builder can run its own
  relative import `from .quecc import QueCC`.  Their module-level code is imports (torch, torch.nn, re,
  functools, numpy, math, torch.nn.init, einops) and definitions only.  Nothing is stubbed.
* From LLaVA's mm_utils.py only the `expand2square` function definition is executed (picked out with
  `ast`), in a namespace holding `Image` from PIL (the file's own `from PIL import Image`).  The file's
  other module-level imports are not executed: `transformers.StoppingCriteria` and `llava.constants`
  are unused by expand2square and `llava` is not importable here.  The background colour is computed with
  the expression process_images() uses, `tuple(int(x*255) for x in image_processor.image_mean)`; the
  script asserts that this exact text is still in the pinned mm_utils.py.

Weights and inputs come from tests/reference/recipe.py (seeded by tensor name; see its docstring), so the
fixtures hold only the reference's outputs, key lists and checksums.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import linecache
import math
import platform
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import recipe  # noqa: E402

REFERENCES = {
    "tokenpacker": {
        "repo": "CircleRadon/TokenPacker",
        "commit": "771a16e7462c3afb908a0c429513ba43f709f2c1",
        "files": ["llava/model/multimodal_projector/builder.py"],
    },
    "quecc": {
        "repo": "locuslab/llava-token-compression",
        "commit": "bdedebdf8f4bf7a48c916357ec1dc5dc2720b606",
        "files": ["llava/model/multimodal_projector/quecc.py", "llava/model/multimodal_projector/builder.py"],
    },
    "llava": {
        "repo": "haotian-liu/LLaVA",
        "commit": "c121f0432da27facab705978f83c4ada465e46fd",
        "files": ["llava/mm_utils.py"],
    },
}

VISUAL_TOKENS = [1, 4, 36, 144]
RAW_GRID = 24  # CLIP-L/336: 336 / 14 = 24 patches a side, 576 tokens
VISION_DIM = 1024
LEVELS = 4  # CLIP layers [12, 16, 22, 23]
LLM_WIDTH = 64  # H
TEXT_DIM = 96  # QueCC's mm_vision_output_text_embedding_size (the LLM width in the paper's runs)
BATCH = 2
WEIGHT_SEED = 1234
INPUT_SEED = 5678
IMAGE_SEED = 42
# V values whose intermediate (pre-MLP / compressor-only, width 1024) output is also stored; larger V would
# cost ~1 MB.
INTERMEDIATE_FOR = [1, 4]
CLIP_L_336_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # openai/clip-vit-large-patch14-336 image_mean
IMAGES = {"wide": (300, 180), "tall": (180, 300), "tall_odd": (180, 227)}  # (width, height)


def git_show(git_dir: Path, commit: str, path: str) -> str:
    try:
        return subprocess.run(
            ["git", f"--git-dir={git_dir}", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True
        ).stdout
    except subprocess.CalledProcessError as err:
        raise SystemExit(
            f"cannot read {commit}:{path} from {git_dir}: {err.stderr.strip()}\n"
            "fetch the repository first (see this script's docstring)"
        ) from err


def exec_as_module(source: str, name: str, origin: str) -> types.ModuleType:
    """Execute a reference file as module `name` (a dotted name under a throw-away package)."""
    package = name.rpartition(".")[0]
    if package and package not in sys.modules:
        pkg = types.ModuleType(package)
        pkg.__path__ = []
        sys.modules[package] = pkg
    module = types.ModuleType(name)
    module.__file__ = origin
    module.__package__ = package
    linecache.cache[origin] = (len(source), None, source.splitlines(True), origin)
    sys.modules[name] = module
    exec(compile(source, origin, "exec"), module.__dict__)
    return module


def exec_function(source: str, func: str, namespace: dict, origin: str):
    """Execute one top-level function definition from `source` in `namespace`; return the function."""
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func)
    lines = source.splitlines(True)[node.lineno - 1 : node.end_lineno]
    text = "\n" * (node.lineno - 1) + "".join(lines)  # keep the file's line numbers in tracebacks
    linecache.cache[origin] = (len(source), None, source.splitlines(True), origin)
    exec(compile(text, origin, "exec"), namespace)
    return namespace[func]


def load_references(mirror_root: Path, overrides: dict[str, Path]):
    refs = {}
    for key, ref in REFERENCES.items():
        git_dir = overrides.get(ref["repo"], mirror_root / ref["repo"].replace("/", "+") / "repo")
        refs[key] = {path: git_show(git_dir, ref["commit"], path) for path in ref["files"]}
        refs[key]["_git_dir"] = str(git_dir)

    def origin(key, path):
        return f"<{REFERENCES[key]['repo']}@{REFERENCES[key]['commit'][:12]}:{path}>"

    tp_path = "llava/model/multimodal_projector/builder.py"
    tokenpacker = exec_as_module(
        refs["tokenpacker"][tp_path], "_ref_tokenpacker.builder", origin("tokenpacker", tp_path)
    )
    q_path = "llava/model/multimodal_projector/quecc.py"
    exec_as_module(refs["quecc"][q_path], "_ref_quecc.quecc", origin("quecc", q_path))
    quecc_builder = exec_as_module(refs["quecc"][tp_path], "_ref_quecc.builder", origin("quecc", tp_path))
    mm_path = "llava/mm_utils.py"
    mm_utils = refs["llava"][mm_path]
    bg_expr = "tuple(int(x*255) for x in image_processor.image_mean)"
    if bg_expr not in mm_utils:
        raise SystemExit(f"{mm_path} no longer computes the background as {bg_expr}")
    expand2square = exec_function(mm_utils, "expand2square", {"Image": Image}, origin("llava", mm_path))
    return tokenpacker, quecc_builder, expand2square


def checksum(array: np.ndarray) -> dict:
    flat = np.asarray(array, dtype=np.float64).ravel()
    return {"sum": float(flat.sum()), "abs_sum": float(np.abs(flat).sum()), "first": [float(v) for v in flat[:3]]}


def stats(array: np.ndarray) -> dict:
    a = np.asarray(array, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "mean_abs": float(np.abs(a).mean()),
        "max_abs": float(np.abs(a).max()),
    }


def run_case(model: torch.nn.Module, make_args, capture: torch.nn.Module | None, capture_input: bool):
    """Forward in float32 (the fixture) and in float64 (to size the float32 rounding error)."""
    grabbed = {}
    if capture is not None:
        if capture_input:
            handle = capture.register_forward_pre_hook(lambda m, args: grabbed.__setitem__("x", args[0].detach()))
        else:
            handle = capture.register_forward_hook(lambda m, args, out: grabbed.__setitem__("x", out.detach()))
    with torch.no_grad():
        out = model(make_args(torch.float32))
    if capture is not None:
        handle.remove()
    with torch.no_grad():
        out64 = copy.deepcopy(model).double()(make_args(torch.float64))
    diff = (out.double() - out64).abs().max().item()
    inter = grabbed["x"].numpy().astype(np.float32) if "x" in grabbed else None
    return out.numpy().astype(np.float32), inter, diff / out64.abs().max().item()


def adapters(tokenpacker, quecc_builder, arrays: dict, meta: dict):
    data = recipe.inputs(BATCH, patches=RAW_GRID**2, dim=VISION_DIM, levels=LEVELS, text_dim=TEXT_DIM, seed=INPUT_SEED)
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    input_meta = {
        "recipe_call": f"recipe.inputs({BATCH}, patches={RAW_GRID**2}, dim={VISION_DIM}, levels={LEVELS}, "
        f"text_dim={TEXT_DIM}, seed={INPUT_SEED})",
        "seed": INPUT_SEED,
        "arrays": {k: {"shape": list(v.shape), "dtype": "float32", "checksum": checksum(v)} for k, v in data.items()},
    }

    def as_dtype(*names):
        return lambda dtype: tuple(tensors[n].to(dtype) for n in names)

    for kind in ("tokenpacker", "quecc"):
        ref = REFERENCES[kind]
        entry = {
            "reference": {"repo": ref["repo"], "commit": ref["commit"], "files": ref["files"]},
            "llm_width_H": LLM_WIDTH,
            "batch": BATCH,
            "weight_seed": WEIGHT_SEED,
            "weight_recipe": f"recipe.fill_state_dict(model, {WEIGHT_SEED}) -- by reference key name",
            "inputs": input_meta,
            "cases": {},
        }
        if kind == "tokenpacker":
            entry["builder_call"] = (
                "build_vision_projector(SimpleNamespace(hidden_size=H, scale_factor=s)) "
                "== TokenPacker(hidden_size=H, scale_factor=s); s = 24 // sqrt(V)"
            )
            entry["forward_call"] = (
                "model((single, multi))  # a 2-tuple: x[0] single (B,576,1024), x[1] multi (B,576,4096)"
            )
            entry["output"] = "(B, V, H): mlp(attention output); token t = row-major (t // g, t % g) on the g x g grid"
            entry["intermediate"] = "input of model.mlp: (B, V, 1024), the attention output"
        else:
            entry["builder_call"] = (
                "build_vision_projector(SimpleNamespace(mm_projector_type='mlp2x_gelu', mm_hidden_size=1024, "
                "hidden_size=H, mm_vision_token_compression_type='quecc', mm_vision_output_token_count=576, "
                f"mm_vision_output_text_embedding_size={TEXT_DIM}, mm_vision_token_compression_kernel_size=s, "
                "mm_vision_token_compression_stride=s, mm_vision_select_feature='patch'), "
                "SimpleNamespace(hidden_size=1024)) == Sequential(QueCC, Linear(1024,H), GELU, Linear(H,H)); "
                "s = 24 // sqrt(V)"
            )
            entry["forward_call"] = (
                "model((multi, text, single))  # a 3-tuple: [0] multi (B,576,4096), "
                f"[1] text (B,1,{TEXT_DIM}), [2] single (B,576,1024)"
            )
            entry["output"] = "(B, V, H); token t = row-major (t // g, t % g) on the g x g grid"
            entry["intermediate"] = "output of model[0] (QueCC alone): (B, V, 1024)"
        for v in VISUAL_TOKENS:
            g = math.isqrt(v)
            s = RAW_GRID // g
            if kind == "tokenpacker":
                model = tokenpacker.build_vision_projector(types.SimpleNamespace(hidden_size=LLM_WIDTH, scale_factor=s))
                make_args, capture, capture_input = as_dtype("single", "multi"), model.mlp, True
            else:
                cfg = types.SimpleNamespace(
                    mm_projector_type="mlp2x_gelu",
                    mm_hidden_size=VISION_DIM,
                    hidden_size=LLM_WIDTH,
                    mm_vision_token_compression_type="quecc",
                    mm_vision_output_token_count=RAW_GRID**2,
                    mm_vision_output_text_embedding_size=TEXT_DIM,
                    mm_vision_token_compression_kernel_size=s,
                    mm_vision_token_compression_stride=s,
                    mm_vision_select_feature="patch",
                )
                model = quecc_builder.build_vision_projector(cfg, types.SimpleNamespace(hidden_size=VISION_DIM))
                make_args, capture, capture_input = as_dtype("multi", "text", "single"), model[0], False
            model.eval()
            recipe.fill_state_dict(model, WEIGHT_SEED)
            sd = model.state_dict()
            out, inter, rel64 = run_case(model, make_args, capture if v in INTERMEDIATE_FOR else None, capture_input)
            assert out.shape == (BATCH, v, LLM_WIDTH), out.shape
            case = {
                "V": v,
                "grid": g,
                "stride": s,
                "state_dict": [[k, list(t.shape)] for k, t in sd.items()],
                "weight_checksums": {k: checksum(t.numpy()) for k, t in sd.items()},
                "output_npz_key": f"{kind}.V{v}.output",
                "output_shape": list(out.shape),
                "output_stats": stats(out),
                "float64_max_abs_diff_over_max_abs": rel64,
            }
            arrays[case["output_npz_key"]] = out
            if inter is not None:
                case["intermediate_npz_key"] = f"{kind}.V{v}.intermediate"
                case["intermediate_shape"] = list(inter.shape)
                case["intermediate_stats"] = stats(inter)
                arrays[case["intermediate_npz_key"]] = inter
            entry["cases"][str(v)] = case
            print(
                f"{kind:11s} V={v:3d} s={s:2d} out {tuple(out.shape)} mean|x|={case['output_stats']['mean_abs']:.3f} "
                f"max|x|={case['output_stats']['max_abs']:.3f} fp32-vs-fp64 {rel64:.1e}"
            )
        meta[kind] = entry


def images(expand2square, out_dir: Path) -> dict:
    background = tuple(int(x * 255) for x in CLIP_L_336_IMAGE_MEAN)  # the expression process_images() uses
    cases = {}
    for name, (w, h) in IMAGES.items():
        src = Image.fromarray(recipe.rgb_image(w, h, IMAGE_SEED))
        padded = expand2square(src, background)
        src_file, out_file = f"image_{name}_{w}x{h}.png", f"image_{name}_{w}x{h}_expand2square.png"
        src.save(out_dir / src_file)
        padded.save(out_dir / out_file)
        side = max(w, h)
        offset = (0, (w - h) // 2) if w > h else ((h - w) // 2, 0)  # (x, y) paste position, as the reference
        cases[name] = {
            "input_png": src_file,
            "input_size_wh": [w, h],
            "output_png": out_file,
            "output_size_wh": list(padded.size),
            "expected_size_wh": [side, side],
            "paste_offset_xy": list(offset),
            "recipe_call": f"recipe.rgb_image({w}, {h}, seed={IMAGE_SEED})",
        }
    return {
        "reference": {
            "repo": REFERENCES["llava"]["repo"],
            "commit": REFERENCES["llava"]["commit"],
            "file": "llava/mm_utils.py",
            "function": "expand2square(pil_img, background_color)",
        },
        "image_mean": list(CLIP_L_336_IMAGE_MEAN),
        "background_rgb": list(background),
        "background_rule": "tuple(int(x*255) for x in image_processor.image_mean)  -- truncation, not rounding",
        "cases": cases,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--mirror-root",
        type=Path,
        default=Path("/work/.mirror"),
        help="folder holding <owner>+<name>/repo git directories",
    )
    ap.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="OWNER/NAME=GITDIR",
        help="git directory for one repository (overrides --mirror-root for it)",
    )
    ap.add_argument("--out", type=Path, default=HERE / "fixtures")
    args = ap.parse_args(argv)
    overrides = dict((k, Path(p)) for k, p in (item.split("=", 1) for item in args.repo))
    torch.manual_seed(0)
    tokenpacker, quecc_builder, expand2square = load_references(args.mirror_root, overrides)
    args.out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "about": "Golden numbers from the reference implementations; see tests/reference/README.md",
        "recipe": recipe.RECIPE,
        "generated_with": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
        },
        "adapters_npz": "adapters.npz",
    }
    adapters(tokenpacker, quecc_builder, arrays, meta)
    meta["expand2square"] = images(expand2square, args.out)
    np.savez_compressed(args.out / "adapters.npz", **arrays)
    (args.out / "adapters.json").write_text(json.dumps(meta, indent=1) + "\n")
    for path in sorted(args.out.iterdir()):
        print(f"{path.stat().st_size:9d}  {path.relative_to(HERE.parents[1])}")


if __name__ == "__main__":
    main()
