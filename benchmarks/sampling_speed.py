"""What picking the next token costs a decode step: greedy against sampled.

Random weights of a named shape, a 512-token prompt in the KV cache; the decode step at
position 512, with its pick on the device, replayed as a CUDA graph. A random model's
logits are nearly flat, so settings without a small top-k (or min-p) make the sampler
search the whole vocabulary: the worst case.

    python benchmarks/sampling_speed.py tinyllama-1.1b llama3.2-1b
    python benchmarks/sampling_speed.py tinyllama-1.1b --device cuda:cupy
"""
from __future__ import annotations

from polyllama import get_device
from timing import median_us, model_after_prompt, replayed, shape_parser

SETTINGS = [("greedy", None),
            ("defaults (0.8, top-k 40, top-p 0.95, min-p 0.05)", (0.8, 40, 0.95, 0.05)),
            ("top-p 0.95 only", (0.8, 0, 0.95, 0.0)),
            ("temperature only", (0.8, 0, 1.0, 0.0))]


def step_us(dev, model, step) -> float:
    """Microseconds a replay of step, timed with the events of the device's own library."""
    if str(dev.spec).startswith("cuda:cupy"):
        from cupy_step import step_us as cupy_step_us
        return cupy_step_us(dev, model, step)[0]
    return median_us(replayed(dev, step), 20)


def measure(dev, shape: str) -> None:
    model = model_after_prompt(dev, shape)
    for name, params in SETTINGS:
        pick = "argmax" if params is None else "sample"
        if params is not None:
            model.setup_sampling(*params)
            model.set_uniform(0.3)

        def step():
            model._step(model._decode)
            model._pick(pick)

        print(f"{shape:15s} {name:50s} {step_us(dev, model, step):9.1f} us/step", flush=True)


def main(argv=None) -> None:
    p = shape_parser(__doc__, ["tinyllama-1.1b", "llama3.2-1b"])
    p.add_argument("--device", default="cuda:triton")
    args = p.parse_args(argv)
    dev = get_device(args.device)
    for shape in args.shapes:
        measure(dev, shape)


if __name__ == "__main__":
    main()
