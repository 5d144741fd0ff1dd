"""Chat prompts: the Jinja template a model file carries (rendered in a sandbox, since model
files are untrusted input), or a built-in Llama-2, Llama-3 or ChatML template."""
from __future__ import annotations

import json
import re
from datetime import datetime

from .errors import PolyllamaError

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}"
          "<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
          "{% endif %}")
LLAMA2 = ("{% if messages and messages[0]['role'] == 'system' %}"
          "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
          "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
          "{% for m in turns %}"
          "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
          "{{ raise_exception('roles must alternate user/assistant/user/...') }}{% endif %}"
          "{% if m['role'] == 'user' %}{% if loop.first and system %}"
          "{% set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content'] %}"
          "{% else %}{% set text = m['content'] %}{% endif %}"
          "{{ bos_token + '[INST] ' + text | trim + ' [/INST]' }}"
          "{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}{% endfor %}")
BUILTIN = {"chatml": CHATML, "llama3": LLAMA3, "llama2": LLAMA2}

# Tokens that close a turn in common templates; generation stops on any the template uses.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
               "<|end_of_turn|>", "<|endoftext|>", "</s>")


def _raise(message):
    raise PolyllamaError(f"chat template: {message}")


def compile_template(source: str):
    """A Jinja template in an immutable sandbox: no attribute escapes, no mutation of the
    caller's objects."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False, separators=None: \
        json.dumps(x, indent=indent, ensure_ascii=ensure_ascii, separators=separators)
    env.globals.update(raise_exception=_raise,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise PolyllamaError(f"the model's chat template does not compile: {e}; "
                             "pick a built-in one (chatml, llama3, llama2)") from e


def guess_builtin(tokenizer) -> str:
    """The built-in template whose marker tokens the vocabulary has (else Llama-2's)."""
    def has(*pieces):
        return all(tokenizer.token_id(p) is not None for p in pieces)

    if has("<|im_start|>", "<|im_end|>"):
        return "chatml"
    if has("<|start_header_id|>", "<|eot_id|>"):
        return "llama3"
    return "llama2"


def _piece(tokenizer, token_id) -> str:
    if token_id is None:
        return ""
    if hasattr(tokenizer, "piece"):
        return tokenizer.piece(token_id)
    for text in ("<s>", "</s>", "<|begin_of_text|>", "<|end_of_text|>", "<|endoftext|>",
                 "<|im_start|>", "<|im_end|>", "<bos>", "<eos>"):
        if tokenizer.token_id(text) == token_id:
            return text
    return ""


class ChatFormat:
    """Turns a conversation into prompt ids for one tokenizer, and knows the ids that end
    the assistant's turn. `name` picks a built-in template ('chatml', 'llama3', 'llama2');
    without it the model's own template is used, or one guessed from the vocabulary."""

    def __init__(self, tokenizer, template: str | None = None, name: str | None = None):
        if name is not None and name not in BUILTIN:
            raise PolyllamaError(f"unknown chat template {name!r}; built-in ones: "
                                 f"{', '.join(BUILTIN)}")
        if name is None and not template:
            name = guess_builtin(tokenizer)
        self.tokenizer = tokenizer
        self.name = name or "model"
        self.source = BUILTIN[name] if name else template
        self._template = compile_template(self.source)
        self.bos_token = _piece(tokenizer, tokenizer.bos_id)
        self.eos_token = _piece(tokenizer, tokenizer.eos_id)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> tuple[str, bool]:
        """(text, add_bos): the prompt text, and whether the caller must prepend BOS. A
        template that writes BOS itself gets it stripped here and add_bos=True, so the
        prompt never holds two."""
        import jinja2

        try:
            text = self._template.render(messages=messages,
                                         add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except jinja2.exceptions.SecurityError as e:
            raise PolyllamaError(f"the {self.name} chat template tried something unsafe "
                                 f"({e}); it was stopped") from e
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as e:
            raise PolyllamaError(f"the {self.name} chat template failed: {e}") from e
        if self.bos_token and text.startswith(self.bos_token):
            return text[len(self.bos_token):], True
        return text, self.tokenizer.add_bos

    def encode(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Prompt ids; the BOS/EOS texts a template writes become their ids even with a
        tokenizer that does not parse special tokens in text."""
        text, add_bos = self.render(messages, add_generation_prompt)
        specials = {t: i for t, i in ((self.bos_token, self.tokenizer.bos_id),
                                      (self.eos_token, self.tokenizer.eos_id)) if t}
        ids = [self.tokenizer.bos_id] if add_bos and self.tokenizer.bos_id is not None else []
        for part in _split_on(text, list(specials)):
            ids += [specials[part]] if part in specials else self.tokenizer.encode(part, False)
        return ids

    @property
    def stop_ids(self) -> list[int]:
        """EOS plus every end-of-turn token the template writes."""
        ids = [] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id]
        for text in END_OF_TURN:
            tid = self.tokenizer.token_id(text)
            if text in self.source and tid is not None and tid not in ids:
                ids.append(tid)
        return ids


def _split_on(text: str, seps: list[str]) -> list[str]:
    """text cut before and after every occurrence of any separator (separators kept)."""
    if not seps:
        return [text] if text else []
    pattern = "(" + "|".join(re.escape(s) for s in sorted(seps, key=len, reverse=True)) + ")"
    return [part for part in re.split(pattern, text) if part]
