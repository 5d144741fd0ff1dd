"""`polyllama bench`: its model shapes, what it counts, and that it times real decoding."""
import json

import numpy as np
import pytest

import refmodel
from polyllama import LlamaConfig
from polyllama.bench import SHAPES, random_checkpoint, random_prompt, run_bench
from polyllama.checkpoint import expected_shapes
from polyllama.cli import main

# parameter counts published with each model (embeddings included, tied ones once)
PUBLISHED_PARAMETERS = {
    "smollm2-135m": 134_515_008,
    "tinyllama-1.1b": 1_100_048_384,
    "llama2-7b": 6_738_415_616,
    "llama3.2-1b": 1_235_814_400,
}


def tiny(tied: bool) -> LlamaConfig:
    return LlamaConfig(dim=64, hidden_dim=160, n_layers=2, n_heads=8, n_kv_heads=2,
                       vocab_size=96, max_seq_len=64, tie_embeddings=tied).validated()


def test_every_shape_has_its_published_parameter_count():
    assert set(SHAPES) == set(PUBLISHED_PARAMETERS)
    for name, config in SHAPES.items():
        params = sum(int(np.prod(s)) for s in expected_shapes(config).values())
        assert params == PUBLISHED_PARAMETERS[name], name


def test_bench_times_the_models_own_greedy_decoding():
    config = tiny(tied=False)      # tied random weights only ever repeat the last token
    r = run_bench(config, "cpu:numpy", prompt_len=5, gen=12, repeats=2, log=lambda *_: None)
    hf = refmodel.hf_model_from(random_checkpoint(config))
    want = refmodel.hf_greedy(hf, random_prompt(config, 5).tolist(), 13)
    assert len(set(want)) > 4, "reference output too repetitive to prove anything"
    assert r.tokens == want
    assert len(r.decode_runs) == 2 and r.decode_tok_s > 0 and r.prefill_tok_s > 0


@pytest.mark.parametrize("tied", [True, False])
def test_decode_bytes_are_the_weights_one_token_reads(tied):
    config = tiny(tied)
    r = run_bench(config, "cpu:numpy", prompt_len=2, gen=1, repeats=1, log=lambda *_: None)
    every = sum(int(np.prod(s)) for s in expected_shapes(config).values())
    unread_rows = 0 if tied else config.vocab_size - 1     # the embedding's other rows
    assert r.decode_bytes == 4 * (every - unread_rows * config.dim)     # float32 on cpu:numpy
    assert r.achieved_gb_s == pytest.approx(r.decode_bytes * r.decode_tok_s / 1e9)
    assert r.bandwidth_gb_s is None and r.pct_of_floor is None   # cpu:numpy measures none


def test_bench_command_prints_json(capsys):
    code = main(["bench", "smollm2-135m", "--device", "cpu:numpy", "--prompt-len", "2",
                 "--gen", "1", "--repeats", "1", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["shape"] == "smollm2-135m" and result["device"].startswith("cpu:numpy")
    assert result["decode_bytes"] == 4 * PUBLISHED_PARAMETERS["smollm2-135m"]
    assert len(result["tokens"]) == 2


@pytest.mark.parametrize("args,message", [
    (["llama9-1t"], "unknown model shape 'llama9-1t'; known: smollm2-135m"),
    (["smollm2-135m", "--prompt-len", "1"], "--prompt-len >= 2"),
    (["smollm2-135m", "--prompt-len", "8", "-c", "4"], "do not fit the context of 4"),
    (["smollm2-135m", "--device", "tpu"], "Known devices"),
])
def test_bench_bad_input_is_a_clear_error(capsys, args, message):
    code = main(["bench", "--device", "cpu:numpy", *args])
    _, err = capsys.readouterr()
    assert code == 1
    assert message in err and "Traceback" not in err
