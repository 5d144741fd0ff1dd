"""Chat templates: rendering equals transformers' apply_chat_template on the same Jinja source
(built-ins against the official Llama-2 / Llama-3 templates), the sandbox holds, BOS is never
doubled, and generation stops on the template's end-of-turn token."""
from __future__ import annotations

import pytest

from polyllama import PolyllamaError
from polyllama.chat import ChatFormat, guess_builtin
from polyllama.hf_tokenizer import HFTokenizer
from polyllama.tokenizer import Tokenizer
from test_hf_tokenizer import train_byte_level

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>"]
# The templates published with Meta's Llama-2-chat and Llama-3-Instruct tokenizer configs.
OFFICIAL_LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}")
OFFICIAL_LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
    "Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": " Héllo 😀 "},
                {"role": "assistant", "content": "Hi there."},
                {"role": "user", "content": "Bye?"}]


def make_tokenizer(bos, eos, add_bos, extra=()):
    """(ours, transformers' tokenizer) over one byte-level vocabulary."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast
    backend = train_byte_level()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra])
    ours = HFTokenizer(backend, True, backend.token_to_id(bos), backend.token_to_id(eos),
                       add_bos)
    theirs = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos)
    return ours, theirs


@pytest.fixture(scope="module")
def chatml_tok():
    return make_tokenizer("<|endoftext|>", "<|im_end|>", False)


@pytest.fixture(scope="module")
def llama3_tok():
    return make_tokenizer("<|begin_of_text|>", "<|eot_id|>", True, LLAMA3_SPECIALS)


def full_text(fmt, messages, add_generation_prompt=True):
    """The rendered text with the BOS the caller is told to add put back in front."""
    text, add_bos = fmt.render(messages, add_generation_prompt)
    return (fmt.bos_token if add_bos else "") + text


def transformers_render(theirs, template, messages, add_generation_prompt=True):
    return theirs.apply_chat_template(messages, chat_template=template, tokenize=False,
                                      add_generation_prompt=add_generation_prompt)


def test_builtin_chatml_is_the_expected_string(chatml_tok):
    fmt = ChatFormat(chatml_tok[0], name="chatml")
    want = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Héllo 😀 <|im_end|>\n"
            "<|im_start|>assistant\nHi there.<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n"
            "<|im_start|>assistant\n")
    assert fmt.render(CONVERSATION) == (want, False)
    assert fmt.render(CONVERSATION[:2], add_generation_prompt=False)[0] == \
        want[:want.index("<|im_start|>assistant")]


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_model_template_renders_like_transformers(chatml_tok, generation_prompt):
    ours, theirs = chatml_tok
    fmt = ChatFormat(ours, SMOLLM2)
    for messages in (CONVERSATION, CONVERSATION[1:2]):
        assert full_text(fmt, messages, generation_prompt) == \
            transformers_render(theirs, SMOLLM2, messages, generation_prompt)


@pytest.mark.parametrize("name,official", [("llama3", OFFICIAL_LLAMA3),
                                           ("llama2", OFFICIAL_LLAMA2)])
def test_builtins_render_like_the_official_templates(llama3_tok, name, official):
    ours, theirs = llama3_tok
    fmt = ChatFormat(ours, name=name)
    add_prompt = name == "llama3"             # Llama-2's template has no generation prompt
    for messages in (CONVERSATION, CONVERSATION[1:2], CONVERSATION[1:]):
        assert full_text(fmt, messages, add_prompt) == \
            transformers_render(theirs, official, messages, add_prompt)


def test_template_bos_is_never_doubled(llama3_tok):
    ours, theirs = llama3_tok
    fmt = ChatFormat(ours, OFFICIAL_LLAMA3)
    assert ours.add_bos
    ids = fmt.encode(CONVERSATION)
    assert ids == theirs.apply_chat_template(CONVERSATION, chat_template=OFFICIAL_LLAMA3,
                                             add_generation_prompt=True, return_dict=False)
    assert ids.count(ours.bos_id) == 1 and ids[0] == ours.bos_id


def test_no_bos_in_template_means_the_tokenizer_decides(chatml_tok):
    ours, _ = chatml_tok
    assert ChatFormat(ours, name="chatml").encode(CONVERSATION[1:2])[0] != ours.bos_id
    ours.add_bos = True
    try:
        assert ChatFormat(ours, name="chatml").encode(CONVERSATION[1:2])[0] == ours.bos_id
    finally:
        ours.add_bos = False


class CharTokenizer(Tokenizer):
    """One id per character; knows nothing of special tokens in text."""
    vocab_size, bos_id, eos_id, add_bos = 1000, 1, 2, True

    def encode(self, text, add_bos=None):
        return ([1] if (self.add_bos if add_bos is None else add_bos) else []) + \
            [ord(c) % 997 + 3 for c in text]

    def token_bytes(self, token_id):
        return b""

    def token_id(self, piece):
        return {"<s>": 1, "</s>": 2}.get(piece)


def test_special_texts_become_ids_with_a_plain_tokenizer():
    tok = CharTokenizer()
    fmt = ChatFormat(tok, name="llama2")
    assert (fmt.bos_token, fmt.eos_token) == ("<s>", "</s>")
    ids = fmt.encode(CONVERSATION)
    assert ids.count(1) == 2 and ids.count(2) == 1 and ids[0] == 1
    second_turn = fmt.render(CONVERSATION)[0].split("<s>")[1]
    assert ids[ids.index(2) + 1:] == [1] + tok.encode(second_turn, add_bos=False)


def test_stop_ids_include_the_end_of_turn_token(chatml_tok, llama3_tok):
    ours, _ = chatml_tok
    assert ChatFormat(ours, SMOLLM2).stop_ids == [ours.eos_id]    # eos is <|im_end|>
    tok3 = llama3_tok[0]
    assert tok3.token_id("<|eot_id|>") in ChatFormat(tok3, name="llama3").stop_ids
    plain = make_tokenizer("<|endoftext|>", "<|endoftext|>", False)[0]
    assert ChatFormat(plain, name="chatml").stop_ids == [0, plain.token_id("<|im_end|>")]


def test_guess_from_vocabulary(chatml_tok):
    class Llama3Vocab(CharTokenizer):
        def token_id(self, piece):
            return {"<|start_header_id|>": 5, "<|eot_id|>": 6}.get(piece)

    assert guess_builtin(chatml_tok[0]) == "chatml"
    assert guess_builtin(Llama3Vocab()) == "llama3"
    assert guess_builtin(CharTokenizer()) == "llama2"
    assert ChatFormat(chatml_tok[0]).name == "chatml"


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{% set _ = messages.append({'role': 'x'}) %}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
])
def test_sandbox_stops_escapes(chatml_tok, source):
    with pytest.raises(PolyllamaError, match="unsafe"):
        ChatFormat(chatml_tok[0], source).render(CONVERSATION)


def test_sandbox_reveals_nothing(chatml_tok):
    assert ChatFormat(chatml_tok[0], "{{ ''.__class__ }}").render([]) == ("", False)


def test_template_errors_are_clear(chatml_tok):
    ours = chatml_tok[0]
    with pytest.raises(PolyllamaError, match="does not compile"):
        ChatFormat(ours, "{% for m in messages %}")
    with pytest.raises(PolyllamaError, match="roles must alternate"):
        ChatFormat(ours, name="llama2").render([{"role": "assistant", "content": "x"}])
    with pytest.raises(PolyllamaError, match="unknown chat template 'vicuna'"):
        ChatFormat(ours, name="vicuna")
    with pytest.raises(PolyllamaError, match="failed"):
        ChatFormat(ours, "{{ messages[0]['content'] + 1 }}").render(CONVERSATION)
