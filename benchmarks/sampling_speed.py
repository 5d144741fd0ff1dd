"""What picking the next token costs a cuda:triton decode step: greedy against sampled.

Random weights of a named shape, a 512-token prompt in the KV cache; the decode step at
position 512, with its pick on the device, replayed as a CUDA graph. A random model's
logits are nearly flat, so settings without a small top-k (or min-p) make the sampler
search the whole vocabulary: the worst case.

    python benchmarks/sampling_speed.py tinyllama-1.1b llama3.2-1b
"""
from __future__ import annotations

from timing import for_each_shape, median_us, model_after_prompt, replayed, shape_parser

SETTINGS = [("greedy", None),
            ("defaults (0.8, top-k 40, top-p 0.95, min-p 0.05)", (0.8, 40, 0.95, 0.05)),
            ("top-p 0.95 only", (0.8, 0, 0.95, 0.0)),
            ("temperature only", (0.8, 0, 1.0, 0.0))]


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

        run = replayed(dev, step)
        print(f"{shape:15s} {name:50s} {median_us(run, 20):9.1f} us/step", flush=True)


def main(argv=None) -> None:
    args = shape_parser(__doc__, ["tinyllama-1.1b", "llama3.2-1b"]).parse_args(argv)
    for_each_shape(args.shapes, lambda dev, shape, _bandwidth: measure(dev, shape))


if __name__ == "__main__":
    main()
