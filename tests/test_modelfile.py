"""Ollama Modelfiles: the Go-template renderer follows Go's text/template rules (each expected string below is
what Go's engine prints for it), and a chat template converted to Go renders the same prompt as the
tokenizer's own apply_chat_template for conversations it was not checked on; templates that cannot be
converted are said so instead of written wrong. The Modelfiles of a real export: tests/test_export.py."""
from __future__ import annotations

import pytest

from export.gotemplate import render
from export.modelfile import convert_chat_template, modelfile_text, ollama_prompt

MESSAGES = {"Messages": [{"Role": "user", "Content": "hi"}, {"Role": "assistant", "Content": "yo"}], "A": "a"}


@pytest.mark.parametrize("template, expected", [
    ("{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}", "user=hi;assistant=yo;"),
    ("{{- range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}\n{{ end -}}\n  end", "0:user\n1:assistant\nend"),
    ("x  \n {{- .A -}} \n y", "xay"),                          # trim markers eat all spaces and newlines
    ('{{ if eq .A "b" }}B{{ else if eq .A "a" }}A{{ else }}C{{ end }}', "A"),
    ('{{ if ne (index .Messages 0).Role "system" }}no system{{ end }}', "no system"),
    ('{{ and 1 0 }} {{ or 0 "x" }} {{ not "" }} {{ len .Messages }} {{ eq .A "z" "a" }}', "0 x true 2 true"),
    ('{{ "{{" }} literal {{ `raw\\n` }}', "{{ literal raw\\n"),
    ("{{ range .Nothing }}item{{ else }}empty{{ end }}{{ with .A }}[{{ . }}]{{ end }}", "empty[a]"),
    ("{{ .Missing }}", "<no value>"),
])
def test_the_renderer_follows_go_text_template(template, expected):
    assert render(template, MESSAGES) == expected


CONVERSATIONS = [   # none of them is one of the conversations the converter checks itself on
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour.\nOnly one."}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
     {"role": "assistant", "content": "d {{ .Content }}"}, {"role": "user", "content": "e"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
     {"role": "user", "content": "u2"}],
]
LLAMA3 = ("{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")


def same_prompt(chat, tokenizer, messages) -> bool:
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return ollama_prompt(chat.template, chat.bos, [(m["role"], m["content"]) for m in messages]) == expected


@pytest.fixture
def llama3_tokenizer(tokenizer):
    import copy

    llama3 = copy.deepcopy(tokenizer)
    llama3.chat_template = LLAMA3
    return llama3


@pytest.mark.parametrize("adds_bos", [False, True])
def test_the_bundled_chat_template_renders_the_same_prompt_in_go(tokenizer, adds_bos):
    chat = convert_chat_template(tokenizer, adds_bos)
    assert chat.template is not None, chat.reason
    assert chat.bos == ("<|im_start|>" if adds_bos else "") and chat.stops == ("<|im_end|>",)
    opening = "system\n" if adds_bos else "<|im_start|>system\n"    # here BOS is <|im_start|> itself
    assert f'{{{{ if ne (index .Messages 0).Role "system" }}}}{opening}You are a helpful AI' in chat.template
    for messages in CONVERSATIONS:
        assert same_prompt(chat, tokenizer, messages), messages


def test_a_llama3_style_template_converts_and_leaves_bos_to_llama_cpp(llama3_tokenizer):
    chat = convert_chat_template(llama3_tokenizer, adds_bos=True)
    assert chat.template is not None, chat.reason
    bos = llama3_tokenizer.bos_token
    assert chat.bos == bos and bos not in chat.template    # llama.cpp adds it: written once, not twice
    assert chat.stops[0] == "<|eot_id|>" and chat.template.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    for messages in CONVERSATIONS:
        assert same_prompt(chat, llama3_tokenizer, messages), messages


@pytest.mark.parametrize("template, reason", [
    ("{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
     "{% endif %}{{ m.content }}{% endfor %}", "refuses a conversation: System role not supported"),
    # the first user message is wrapped unlike later ones (Llama 2 puts the system prompt inside it)
    ("{% for m in messages %}{% if loop.index0 == 1 %}[FIRST]{% endif %}[{{ m.role }}]{{ m.content }}{% endfor %}",
     "wrapped differently"),
    # content rewritten: Go has no upper
    ("{% for m in messages %}<{{ m.role }}>{{ m.content | upper }}{% endfor %}{% if add_generation_prompt %}"
     "<assistant>{% endif %}", "appears 0 times"),
])
def test_a_template_that_cannot_be_converted_says_why_and_gets_no_template(llama3_tokenizer, template, reason):
    llama3_tokenizer.chat_template = template
    chat = convert_chat_template(llama3_tokenizer, adds_bos=False)
    assert chat.template is None and reason in chat.reason
    text = modelfile_text("model-q8_0.Modelfile", "model-q8_0.gguf", chat, [("num_ctx", 2048)])
    assert "TEMPLATE" not in text.replace("# no TEMPLATE", "") and reason in text
    assert "FROM ./model-q8_0.gguf\n" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_a_modelfile_names_its_gguf_adapter_template_and_parameters(tokenizer):
    chat = convert_chat_template(tokenizer, adds_bos=False)
    text = modelfile_text("forget-patch-f16.Modelfile", "base-f16.gguf", chat,
                          [("num_ctx", 8192), ("temperature", 0)], adapter="forget-patch-f16.gguf")
    lines = text.splitlines()
    assert lines[0] == "# ollama create NAME -f forget-patch-f16.Modelfile   (written by unlearn export)"
    assert lines[1:3] == ["FROM ./base-f16.gguf", "ADAPTER ./forget-patch-f16.gguf"]
    assert f'TEMPLATE """{chat.template}"""' in text
    assert lines[-3:] == ['PARAMETER stop "<|im_end|>"', "PARAMETER num_ctx 8192", "PARAMETER temperature 0"]
