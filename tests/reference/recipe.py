"""Deterministic weights, inputs and test images for the reference fixtures (numpy only; torch only to fill a module).

Nothing here stores megabytes: every tensor is regenerated from (seed, name). A test builds the
vlmscale adapter, fills it with `fill_state_dict(adapter, WEIGHT_SEED, rename=...)` using the
*reference* key names listed in fixtures/adapters.json, feeds `inputs(...)` and compares with the
outputs in fixtures/adapters.npz.

Weight rule (decided by key name and shape, the same for every module):

* ndim >= 2 (Linear / MultiheadAttention in_proj / out_proj / Conv2d weights):
  ``standard_normal(shape) / sqrt(fan_in)`` with ``fan_in = prod(shape[1:])``.
  (Depthwise Conv2d (C, 1, k, k): fan_in = k*k.)  Fan-in scaling, not a flat 0.02, so that every
  layer keeps activations at unit scale: with 0.02 the adapters' outputs came out around 1e-2
  and the attention softmax nearly uniform, which would make a 1e-5 tolerance and the attention
  itself weakly tested.
* ndim == 1 and the name ends in "weight": a LayerNorm scale -> ``1 + 0.1 * standard_normal``.
  (In TokenPacker and QueCC the only 1-D ``*.weight`` tensors are LayerNorm scales.)
* ndim == 1 otherwise (``*.bias``, ``*.in_proj_bias``): ``0.1 * standard_normal``.  Biases are
  deliberately non-zero (the references initialise them to 0) so that a dropped bias is caught.
* 0-D tensors and non-floating tensors: refused (none exist in these modules).

The generator for a key is ``numpy.random.default_rng(seed + zlib.crc32(name.encode("utf-8")))``;
values are drawn in float64 and cast to float32.  Inputs use the same scheme with the names
``input/single``, ``input/multi``, ``input/text`` (standard normal, float32).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

RECIPE = "vlmscale-reference-recipe/1"


def key_rng(seed: int, name: str) -> np.random.Generator:
    """The generator for one named tensor: default_rng(seed + crc32(name))."""
    return np.random.default_rng(int(seed) + zlib.crc32(name.encode("utf-8")))


def param_array(name: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The float32 value of parameter `name` of the given shape (rule in the module docstring)."""
    shape = tuple(int(s) for s in shape)
    rng = key_rng(seed, name)
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return (rng.standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)
    if len(shape) == 1 and name.endswith("weight"):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if len(shape) == 1:
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    raise ValueError(f"no recipe for 0-D tensor {name!r}")


def state_dict_arrays(shapes: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
    """{name: float32 array} for a {name: shape} mapping (e.g. fixtures' `state_dict` list turned into a dict)."""
    return {name: param_array(name, shape, seed) for name, shape in shapes.items()}


def fill_state_dict(module_or_shapes, seed: int, rename: Mapping[str, str] | Callable[[str], str] | None = None):
    """Fill a torch module in place (returns it), or return arrays for a {name: shape} mapping.

    For a module, every floating-point entry of its state_dict is set from the recipe.  `rename`
    maps the module's own key to the *reference* key whose recipe it should get (a dict or a
    function), so a vlmscale adapter with different key names receives exactly the reference's
    numbers.  Keys a dict `rename` does not list keep their own name.
    """
    if isinstance(module_or_shapes, Mapping):
        return state_dict_arrays(module_or_shapes, seed)
    import torch

    module = module_or_shapes
    if rename is None:

        def ref_name(k):
            return k
    elif callable(rename):
        ref_name = rename
    else:

        def ref_name(k):
            return rename.get(k, k)

    new = {}
    for key, tensor in module.state_dict().items():
        if not torch.is_floating_point(tensor):
            raise ValueError(f"no recipe for non-floating tensor {key!r}")
        value = param_array(ref_name(key), tuple(tensor.shape), seed)
        new[key] = torch.from_numpy(value).to(dtype=tensor.dtype)
    module.load_state_dict(new, strict=True)
    return module


def inputs(
    batch: int, patches: int = 576, dim: int = 1024, levels: int = 4, text_dim: int | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Standard-normal float32 adapter inputs.

    single: (batch, patches, dim)          -- the select_layer (-2) CLIP features
    multi:  (batch, patches, dim * levels) -- CLIP layers [12, 16, 22, 23] concatenated on the channel axis
    text:   (batch, 1, text_dim)           -- QueCC's question state (only when text_dim is given)

    The three are drawn independently (in the references `single` equals multi[..., -dim:] because
    hidden_states[23] == hidden_states[-2] for CLIP-L; independent draws catch an adapter that reads
    the wrong one).
    """
    out = {
        "single": key_rng(seed, "input/single").standard_normal((batch, patches, dim)).astype(np.float32),
        "multi": key_rng(seed, "input/multi").standard_normal((batch, patches, dim * levels)).astype(np.float32),
    }
    if text_dim is not None:
        out["text"] = key_rng(seed, "input/text").standard_normal((batch, 1, text_dim)).astype(np.float32)
    return out


def rgb_image(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic (height, width, 3) uint8 RGB image that PNG compresses well yet changes at every pixel.

    pixel[y, x, c] = (block[y // 10, x // 10, c] + 3x + 5y + 7c) mod 256, block ~ uniform 0..255:
    a one-pixel shift of the paste position changes every pixel, so an off-by-one padding offset shows.
    """
    rng = key_rng(seed, f"image/{width}x{height}")
    blocks = rng.integers(0, 256, size=(height // 10 + 1, width // 10 + 1, 3))
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((blocks[y // 10, x // 10, c] + 3 * x + 5 * y + 7 * c) % 256).astype(np.uint8)
