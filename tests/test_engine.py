"""Engine behaviour: stop strings, KV-cache reuse across chat turns, the chat command."""
import subprocess
import sys

import pytest

from polyllama.engine import StopMatcher
from test_smollm2 import smollm2  # noqa: F401  (the real-model fixture, skips when offline)


def feed(stops, pieces):
    m = StopMatcher(stops)
    out = [m.push(p) for p in pieces]
    return out, m.hit, m.flush()


def test_stop_string_split_across_pieces_is_cut_and_never_shown():
    out, hit, rest = feed(["END"], ["hello E", "N", "D and more"])
    assert "".join(out) == "hello " and hit and rest == ""
    assert out[0] == "hello "                       # "E" held back: it may start "END"


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    out, hit, rest = feed(["END"], ["a E", "Nx", "y"])
    assert "".join(out) + rest == "a ENxy" and not hit


def test_earliest_of_several_stop_strings_wins():
    out, hit, _ = feed(["\n\n", "User:"], ["one User: two\n\n"])
    assert "".join(out) == "one " and hit


def test_no_stop_strings_streams_everything_at_once():
    assert feed([], ["ab", "c"])[0] == ["ab", "c"]


@pytest.fixture(scope="module")
def llm(smollm2):  # noqa: F811
    import polyllama
    return polyllama.LLM(str(smollm2), device="cpu:numpy", verbose=False)


def test_chat_turn_reusing_the_cache_equals_a_fresh_computation(llm):
    chat = llm.chat()
    first = chat.send("Name one colour.", max_tokens=12, temperature=0)
    first.run()
    second = chat.send("And one animal?", max_tokens=12, temperature=0)
    second.run()
    assert second.stats.prefill_tokens < second.stats.prompt_tokens    # the cache was reused
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] * 2
    llm.cached_ids = []                                                 # now from scratch
    fresh = llm.generate(prompt_ids=second.prompt_ids, max_tokens=12, temperature=0)
    fresh.stop_ids = second.stop_ids
    fresh.run()
    assert fresh.generated_ids == second.generated_ids


def test_chat_history_is_kept_until_reset(llm):
    chat = llm.chat()
    first = chat.send("My name is Ada.", max_tokens=16, temperature=0)
    first.run()
    with_history = chat.send("What is my name?", max_tokens=16, temperature=0)
    with_history.run()
    assert with_history.prompt_ids[:len(first.prompt_ids)] == first.prompt_ids
    chat.reset()
    assert chat.messages == []
    alone = chat.send("What is my name?", max_tokens=16, temperature=0)
    alone.run()
    assert len(alone.prompt_ids) < len(with_history.prompt_ids)
    assert alone.generated_ids != with_history.generated_ids


def test_chat_command_answers_each_line_and_obeys_commands(smollm2):  # noqa: F811
    script = "Say hello.\n/reset\nSay goodbye.\n/exit\nnever sent\n"
    proc = subprocess.run([sys.executable, "-m", "polyllama.cli", "chat", str(smollm2),
                           "--device", "cpu:numpy", "--temp", "0", "-n", "8"],
                          input=script, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("\n") >= 2                # two answers, nothing after /exit
    assert "[history cleared]" in proc.stderr and "Traceback" not in proc.stderr
