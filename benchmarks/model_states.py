"""Model-state bytes per process, measured, beside `vlmscale plan`'s formula (`plan.model_state_bytes`).

Two CPU processes (gloo) train a small causal LM (Qwen-2 architecture, random weights, every weight
trained) through vlmscale's own DeepSpeed stepper under ZeRO 0, 1, 2 and 3, in fp32 and in DeepSpeed's
bf16 mode. After the second step's backward pass (weights, gradients, the optimizer's moments and master
weights all alive) each rank sums the bytes of every distinct tensor storage the process holds, less what
it held before the model was built. DeepSpeed's communication buckets are counted too: the plan leaves
them out, so the table shows them as the difference.

    python benchmarks/model_states.py [--hidden 256] [--layers 4] [--vocab 8192]

Writes benchmarks/results/model_states.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = [(zero, precision) for precision in ("fp32", "bf16") for zero in (0, 1, 2, 3)]


def storage_bytes() -> dict[int, int]:
    """Every distinct tensor storage this process holds (views share one), by address."""
    import torch

    held = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            if storage.data_ptr():
                held[storage.data_ptr()] = storage.nbytes()
    return held


def build(hidden: int, layers: int, vocab: int):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab,
                         max_position_embeddings=64, tie_word_embeddings=False)  # fmt: skip
    return AutoModelForCausalLM.from_config(config)


def measure(zero: int, precision: str, args) -> dict:
    """One rank's bytes held mid-step (this process's share of a 2-process job)."""
    import torch

    from vlmscale.training.distributed import DeepSpeedStepper

    gc.collect()
    before = storage_bytes()
    model = build(args.hidden, args.layers, args.vocab)
    params = list(model.parameters())
    n_params, largest = sum(p.numel() for p in params), max(p.numel() for p in params)
    stepper = DeepSpeedStepper(model, params, 1e-3, 0.0, zero, 2, 1, bf16=precision == "bf16")
    ids = torch.randint(0, args.vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    held = 0
    for step in range(2):
        loss = stepper.model(input_ids=ids, labels=ids).loss
        stepper.engine.backward(loss)
        if step == 1:
            gc.collect()
            held = sum(n for ptr, n in storage_bytes().items() if ptr not in before)
        stepper.engine.step()
    stepper.release()
    return {"zero": zero, "precision": precision, "params": n_params, "largest_param": largest, "measured": held}


def rank_main(args) -> None:
    import torch.distributed as dist

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    result = measure(args.zero, args.precision, args)
    if int(os.environ["RANK"]) == 0:
        print("RESULT " + json.dumps(result), flush=True)
    # The measurement is done: leave without the interpreter's teardown, where a communication thread
    # still alive once aborted a rank ("terminate called without an active exception") after its result.
    dist.destroy_process_group()
    os._exit(0)  # the result line was printed with flush=True


def run_case(zero: int, precision: str, args) -> dict:
    from vlmscale.training.distributed import free_port, local_world

    port = free_port()
    shape = ["--hidden", str(args.hidden), "--layers", str(args.layers), "--vocab", str(args.vocab)]
    cmd = [sys.executable, __file__, "--rank-of-two", "--zero", str(zero), "--precision", precision, *shape]
    procs = [
        subprocess.Popen(
            cmd,
            env={**os.environ, **local_world(r, 2, port), "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO / "src")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"ZeRO-{zero} {precision} failed:\n{outputs[0][-3000:]}\n{outputs[1][-3000:]}")
    line = next(x for x in outputs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def with_plan(row: dict) -> dict:
    from vlmscale.orchestration.plan import model_state_bytes

    n = row["params"]
    planned = model_state_bytes(n, n, row["zero"], 2, row["precision"], row["largest_param"])
    return {**row, "planned": planned, "ratio": row["measured"] / planned}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rank-of-two", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zero", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--cases", nargs="*", default=[f"{z}:{p}" for z, p in CASES], help="zero:precision")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/model_states.json"))
    args = parser.parse_args(argv)
    if args.rank_of_two:
        rank_main(args)
        return []
    rows = []
    for case in args.cases:
        zero, precision = case.split(":")
        rows.append(with_plan(run_case(int(zero), precision, args)))
        r = rows[-1]
        print(f"ZeRO-{r['zero']} {r['precision']}: measured {r['measured'] / 1e6:.2f} MB, "
              f"plan {r['planned'] / 1e6:.2f} MB, ratio {r['ratio']:.3f}", flush=True)  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"shape": vars(args) | {"cases": args.cases}, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
