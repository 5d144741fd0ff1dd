"""cuda:cupy's decode step replayed as a CUDA graph at position 512, under variants of its
tuning: the GEMV's configuration per matrix, the kernels' compile-time limits, the fused
rope_attention op on or off. Variants run in one process, interleaved over two rounds. With
--timeline, the first variant's kernels are charged their increments (each kernel's end
minus the latest end before it; they add up to the step).

    python benchmarks/cupy_step.py tinyllama-1.1b llama2-7b --variants base DEC_WARPS=4 unfused
    python benchmarks/cupy_step.py tinyllama-1.1b --variants "w2=256,4,1,1" --timeline

A variant is `base` or settings joined by `;`: `unfused` (rope, then attention), NAME=value
for a limit in kernels.LIMITS, MATRIX=threads,rows,vecs,tiled for qkv, o, w13, w2 or cls.
"""
from __future__ import annotations

import collections
import statistics

import cupy

from decode_timeline import charged, kernel_spans
from polyllama import get_device
from timing import floor_us, greedy_step, model_after_prompt, shape_parser


def apply(K, shipped, variant: str, model, fused) -> None:
    """Sets the kernels module K and the model as the variant says (base: as shipped, which
    is K's (_gemv_config, LIMITS) before any variant)."""
    default_config, default_limits = shipped
    limits, table = dict(default_limits), {}
    model.rope_attention_k = fused
    for setting in [] if variant == "base" else variant.split(";"):
        if setting == "unfused":
            model.rope_attention_k = None
            continue
        key, value = setting.split("=")
        if key in limits:
            limits[key] = int(value)
        else:
            threads, rows, vecs, tiled = (int(v) for v in value.split(","))
            table[key] = (threads, rows, vecs, bool(tiled))
    if limits != K.LIMITS:                  # recompile with the new -D options
        K.LIMITS.update(limits)
        K.OPTIONS = ("--std=c++17",) + tuple(f"-D{k}={v}" for k, v in limits.items())
        K._module.cache_clear()
        K._gemv_function.cache_clear()
    c = model.config
    matrices = {(c.q_dim + 2 * c.kv_dim, c.dim, False): "qkv", (c.dim, c.q_dim, False): "o",
                (c.hidden_dim, c.dim, True): "w13", (c.dim, c.hidden_dim, False): "w2",
                (c.vocab_size, c.dim, False): "cls"}
    K._gemv_config = lambda N, k, swiglu, size: (table.get(matrices.get((N, k, swiglu)))
                                                 or default_config(N, k, swiglu, size))


def step_us(dev, model, step, replays: int = 40, batches: int = 7) -> tuple[float, object]:
    """Median microseconds of a replay of step's graph, the position reset to 512 before
    each batch (the pick moves it on); and the replay."""
    run = dev.decode_runner(step)
    model._set_pos(512)
    run()
    run()
    times = []
    for _ in range(batches):
        model._set_pos(512)
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(dev.stream)
        for _ in range(replays):
            run()
        end.record(dev.stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) * 1e3 / replays)
    return statistics.median(times), run


def timeline(run) -> None:
    spans = kernel_spans(run)
    per_kernel = charged(spans, [name.split("(")[0] for name, _, _ in spans])
    for kernel, (count, us) in sorted(per_kernel.items(), key=lambda kv: -kv[1][1]):
        print(f"  {kernel[:64]:64s} x{count:3d} {us:8.1f} us {us / count:7.2f} us each")


def main() -> None:
    p = shape_parser(__doc__, ["tinyllama-1.1b"])
    p.add_argument("--variants", nargs="+", default=["base"])
    p.add_argument("--timeline", action="store_true")
    args = p.parse_args()
    dev = get_device("cuda:cupy")
    import polyllama.plugins.cuda_cupy.kernels as K     # needs the CUDA libraries
    shipped = (K._gemv_config, dict(K.LIMITS))
    bandwidth = dev.measure_bandwidth()
    print(f"{dev.name()}: copy bandwidth {bandwidth / 1e12:.3f} TB/s")
    for shape in args.shapes:
        model = model_after_prompt(dev, shape)
        fused, step = model.rope_attention_k, greedy_step(model)
        floor = floor_us(model, bandwidth)
        rounds = collections.defaultdict(list)
        for _ in range(2):
            for variant in args.variants:
                apply(K, shipped, variant, model, fused)
                rounds[variant].append(step_us(dev, model, step)[0])
        for variant, (first, second) in rounds.items():
            print(f"{shape:15s} {variant:40s} {first:8.1f} {second:8.1f} us  "
                  f"{100 * floor / min(first, second):5.1f}% of the floor ({floor:.1f} us)")
        if args.timeline:
            apply(K, shipped, args.variants[0], model, fused)
            print(f"{shape}, {args.variants[0]}: increments")
            timeline(step_us(dev, model, step)[1])
        apply(K, shipped, "base", model, fused)


if __name__ == "__main__":
    main()
