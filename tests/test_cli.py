"""The `polyllama` command end to end on a llama2.c file written from a transformers model."""
import json
import subprocess
import sys

import pytest

import formats
import refmodel
from polyllama.cli import main
from test_tokenizer import sp_files  # noqa: F401  (a trained sentencepiece model)


@pytest.fixture(scope="module")
def hf():
    return refmodel.make_hf_model("gqa-tied", seed=4)


@pytest.fixture(scope="module")
def model_file(hf, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "model.bin"
    formats.write_v1(path, refmodel.canonical_weights(hf), 8, 2, 64)
    return str(path)


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_json_greedy_matches_transformers(capsys, hf, model_file):
    code, out, err = run_cli(capsys, "run", model_file, "--device", "cpu:numpy",
                             "--prompt-ids", "1,5,7,9", "-n", "20", "--temp", "0",
                             "--ignore-eos", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["prompt_ids"] == [1, 5, 7, 9]
    assert result["generated_ids"] == refmodel.hf_greedy(hf, [1, 5, 7, 9], 20)
    assert result["device"].startswith("cpu:numpy")
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0
    assert "cpu:numpy" in err and "float32" in err          # the load line names the choice


def test_seeded_sampling_run_is_reproducible(capsys, model_file):
    args = ("run", model_file, "--prompt-ids", "1,2", "-n", "16", "--temp", "1.0",
            "--seed", "42", "--ignore-eos", "--json")
    first = json.loads(run_cli(capsys, *args)[1])["generated_ids"]
    assert json.loads(run_cli(capsys, *args)[1])["generated_ids"] == first


def test_generation_stops_at_eos_unless_ignored(capsys, hf, model_file):
    # make the model's own greedy output the stop token: EOS id = the 3rd greedy token
    tokens = refmodel.hf_greedy(hf, [1, 5], 8)
    code, out, _ = run_cli(capsys, "run", model_file, "--prompt-ids", "1,5", "-n", "8",
                           "--temp", "0", "--json")
    generated = json.loads(out)["generated_ids"]
    if 2 in tokens:                                  # llama2.c files: EOS is id 2
        assert generated == tokens[:tokens.index(2) + 1]
    else:
        assert generated == tokens


@pytest.mark.parametrize("args,message", [
    (["--prompt-ids", "1,x"], "comma-separated integers"),
    (["--prompt-ids", "1,500"], "outside the vocabulary"),
    (["--prompt-ids", ",".join(["1"] * 70)], "context"),
    (["--prompt-ids", "1", "--device", "cpu:nump"], "did you mean 'cpu:numpy'"),
    (["--prompt-ids", "1", "--device", "tpu"], "Known devices"),
    (["--prompt-ids", "1", "--device", "tpu:xla"], "unknown device 'tpu:xla'.\nKnown"),
    (["--prompt-ids", "1", "--temp", "-1"], "temperature"),
    (["-p", "hello"], "no tokenizer"),
    (["--prompt-ids", "1", "-n", "-5"], "n-predict"),
    (["--prompt-ids", "1", "-c", "0"], "context size 0"),
])
def test_bad_input_is_a_clear_error(capsys, model_file, args, message):
    code, out, err = run_cli(capsys, "run", model_file, *args)
    assert code == 1
    assert message in err and "Traceback" not in err


def test_no_token_limit_runs_to_the_end_of_the_context(capsys, model_file):
    code, out, _ = run_cli(capsys, "run", model_file, "--prompt-ids", "1,5", "-n", "-1",
                           "-c", "16", "--ignore-eos", "--json")
    result = json.loads(out)
    assert code == 0 and result["finish_reason"] == "context"
    assert len(result["generated_ids"]) == 16 - 2 + 1     # the last token needs no KV slot


def test_truncated_checkpoint_fails_cleanly_without_traceback(model_file, tmp_path):
    broken = tmp_path / "broken.bin"
    broken.write_bytes(open(model_file, "rb").read()[:-100])
    proc = subprocess.run([sys.executable, "-m", "polyllama.cli", "run", str(broken),
                           "--prompt-ids", "1"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "bytes" in proc.stderr and "Traceback" not in proc.stderr


def test_devices_lists_every_backend(capsys):
    code, out, _ = run_cli(capsys, "devices")
    assert code == 0
    assert "cpu:numpy" in out and "smoke test passed" in out
    assert "cuda:triton" in out


def test_text_prompt_with_the_tokenizer_beside_the_model(capsys, sp_files, tmp_path):  # noqa: F811
    sp, spm, _ = sp_files
    hf = refmodel.make_hf_model("mha-untied", seed=5, vocab=sp.get_piece_size())
    (tmp_path / "tokenizer.model").write_bytes(spm.read_bytes())
    formats.write_v0(tmp_path / "model.bin", refmodel.canonical_weights(hf), 4, 4, 128)
    code, out, err = run_cli(capsys, "run", str(tmp_path / "model.bin"), "-p", "hello world",
                             "-n", "24", "--temp", "0", "--ignore-eos", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["prompt_ids"] == [1] + sp.encode("hello world")
    assert result["generated_ids"] == refmodel.hf_greedy(hf, result["prompt_ids"], 24)
    # the streamed text is the byte stream of sentencepiece's pieces (a random model emits
    # stray byte-fallback tokens, which sp.decode() would treat run by run; control tokens
    # such as BOS show nothing)
    pieces = [b"" if sp.is_control(i) else bytes([int(sp.id_to_piece(i)[3:5], 16)])
              if sp.is_byte(i) else sp.id_to_piece(i).replace("\u2581", " ").encode()
              for i in result["generated_ids"]]
    assert result["text"] == b"".join(pieces).decode("utf-8", errors="replace")


def test_tokenizer_of_another_model_is_refused(capsys, sp_files, model_file):  # noqa: F811
    _, spm, _ = sp_files
    code, _, err = run_cli(capsys, "run", model_file, "--tokenizer", str(spm), "-p", "hi")
    assert code == 1 and "do not belong together" in err
