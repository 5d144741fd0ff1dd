"""The `polyllama` command: run, chat, devices, plugins, bench, pull, list."""
from __future__ import annotations

import argparse
import json
import sys

from .errors import PolyllamaError, UsageError


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="checkpoint path (llama2.c .bin, .gguf, Hugging Face dir) or model "
                        "alias; default: the demo model smollm2-135m-instruct")
    p.add_argument("--tokenizer", help="tokenizer.model / tokenizer.bin / tokenizer.json")
    p.add_argument("--device", default="auto", help="cpu:numpy, cuda:triton, "
                   "cuda, cuda:triton:1, auto (default); see `polyllama devices`")
    p.add_argument("--dtype", help="compute dtype: bf16, fp16, fp32 (default: the device's)")
    p.add_argument("-c", "--ctx-size", type=int, help="context length (default: the "
                   "model's, at most 4096)")
    p.add_argument("--quant", help="quantize weights at load with a scheme, e.g. int8")
    p.add_argument("--no-graph", action="store_true",
                   help="run every step eagerly instead of replaying captured graphs "
                   "(debugging)")
    p.add_argument("-n", "--n-predict", type=int, default=256,
                   help="tokens to generate; -1 = until EOS or the context is full")
    p.add_argument("--temp", type=float, default=0.8, help="temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("--stop", action="extend", nargs="+", default=[], metavar="TEXT",
                   help="stop when the output contains TEXT (repeatable)")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past EOS")
    p.add_argument("--system", help="system prompt for chat templates")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="polyllama", description="LLaMA inference on pluggable "
                                 "backends (cpu:numpy, cuda:triton, ...)")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate text from a prompt (streams to stdout)")
    _model_args(run)
    src = run.add_mutually_exclusive_group()
    src.add_argument("-p", "--prompt", help="prompt text")
    src.add_argument("-f", "--file", help="read the prompt from a file")
    src.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3 "
                     "(no tokenizer needed)")
    run.add_argument("--chat", action="store_true",
                     help="wrap the prompt as one user turn of the model's chat template")
    run.add_argument("--json", action="store_true",
                     help="print one JSON object with ids, text and speeds at the end")
    chat = sub.add_parser("chat", help="interactive multi-turn chat (/reset, /exit)")
    _model_args(chat)
    sub.add_parser("devices", help="list every known device spec and its availability")
    sub.add_parser("plugins", help="list installed plugins and what they register")
    for extra in ("bench", "hub"):
        module = __import__(f"polyllama.{extra}", fromlist=["add_cli"])
        module.add_cli(sub)
    return ap


def parse_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise UsageError(f"--prompt-ids must be comma-separated integers like 1,2,3; "
                         f"got {text!r}") from None
    if not ids:
        raise UsageError("--prompt-ids is empty")
    return ids


def _sampling(a):
    from .generate import SamplingParams
    if a.n_predict < -1 or a.n_predict == 0:
        raise UsageError(f"-n/--n-predict must be a positive number of tokens, or -1 for no "
                         f"limit; got {a.n_predict}")
    return SamplingParams(temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                          repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n,
                          seed=a.seed).validated()


def _load(a):
    import os
    from .engine import LLM
    if a.no_graph:
        os.environ["POLYLLAMA_NO_GRAPH"] = "1"
    return LLM(a.model, device=a.device, tokenizer=a.tokenizer, dtype=a.dtype,
               ctx_size=a.ctx_size, quant=a.quant)


def cmd_run(a) -> int:
    params = _sampling(a)
    ids = parse_ids(a.prompt_ids) if a.prompt_ids is not None else None
    if a.file:
        try:
            with open(a.file, encoding="utf-8") as f:
                a.prompt = f.read()
        except OSError as e:
            raise UsageError(f"cannot read the prompt file: {e}") from None
    llm = _load(a)
    kw = dict(max_tokens=a.n_predict, stop=a.stop, ignore_eos=a.ignore_eos, params=params)
    if ids is not None:
        gen = llm.generate(prompt_ids=ids, **kw)
    elif a.chat:
        gen = llm.chat(system=a.system).send(a.prompt or "", **kw)
    else:
        gen = llm.generate(a.prompt, **kw)
    if not a.json and not a.chat and a.prompt and llm.tokenizer is not None:
        print(a.prompt, end="", flush=True)
    for piece in gen:
        if not a.json:
            print(piece, end="", flush=True)
    if a.json:
        print(json.dumps(gen.to_dict(), ensure_ascii=False))
    else:
        if llm.tokenizer is None:
            print(" ".join(map(str, gen.generated_ids)), end="")
        print()
        s = gen.stats
        print(f"[{s.prompt_tokens} prompt tokens, {s.prefill_tokens_per_s:.1f} tok/s prefill; "
              f"{s.generated} generated, {s.decode_tokens_per_s:.1f} tok/s decode; "
              f"stop: {s.finish_reason}]", file=sys.stderr)
    return 0


def cmd_chat(a) -> int:
    params = _sampling(a)
    llm = _load(a)
    session = llm.chat(system=a.system)
    interactive = sys.stdin.isatty()
    print("chat: /reset clears the history, /exit quits", file=sys.stderr)
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if line.strip() in ("/exit", "/quit"):
            break
        if line.strip() == "/reset":
            session.reset()
            print("[history cleared]", file=sys.stderr)
            continue
        if not line.strip():
            continue
        for piece in session.send(line, max_tokens=a.n_predict, stop=a.stop,
                                  ignore_eos=a.ignore_eos, params=params):
            print(piece, end="", flush=True)
        print()
    return 0


def cmd_devices(a) -> int:
    from .registry import get_registry
    from .smoke import smoke_test
    reg = get_registry()
    print(f"{'device':<16} {'priority':>8}  {'plugin':<22} status")
    for spec, version, priority, reason in reg.device_table():
        status = "available" if reason is None else f"unavailable: {reason}"
        if reason is None:
            status += f"; smoke test {smoke_test(spec)}"
        print(f"{spec:<16} {'-' if priority is None else priority:>8}  {version:<22} {status}")
    return 0


def cmd_plugins(a) -> int:
    from .registry import get_registry
    reg = get_registry()
    for name, module in reg.pm.list_name_plugin():
        hooks = [h.name for h in reg.pm.get_hookcallers(module) or []]
        print(f"{name:<14} {reg.versions.get(name, '-'):<22} {', '.join(sorted(hooks))}")
    for name, err in reg.failures.items():
        print(f"{name:<14} {reg.versions.get(name, '-'):<22} FAILED: {err}")
    return 0


COMMANDS = {"run": cmd_run, "chat": cmd_chat, "devices": cmd_devices, "plugins": cmd_plugins}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS.get(args.command) or args.func
    try:
        return handler(args)
    except PolyllamaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
