"""Ollama Modelfiles for a bundle's GGUF files: `ollama create NAME -f gguf/model-q8_0.Modelfile`.

A Modelfile names its GGUF (FROM), the LoRA forget patch (ADAPTER, on the base GGUF), the chat TEMPLATE in Go's
text/template syntax, the stop tokens and sampling settings (PARAMETER). The TEMPLATE is derived from the
tokenizer's own Jinja chat template by rendering it with marker contents: what it writes around each role's
message, before the first message, as a default system prompt and as the generation prompt. The Go template
built from those pieces is then rendered (export/gotemplate.py) for a few conversations and must give exactly
the tokenizer's prompt, the BOS that llama.cpp adds itself aside; a chat template that depends on more than
the role (position-dependent wrapping, content rewriting) is not converted, and the Modelfile says so."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .gotemplate import GoTemplateError, render

ROLES = ("system", "user", "assistant")
MARK = {role: f"MARKER-{role.upper()}-7f3a" for role in ROLES}
OLLAMA_CONTEXT_CAP = 8192      # num_ctx: the model's window, but no more than this (memory on small machines)
# Conversations every converted template must reproduce exactly (system + user, multi-turn, with and
# without a system message), contents with newlines, quotes and braces.
CHECK_CONVERSATIONS = (
    [("user", "Who wrote book number 1?")],
    [("system", "Answer in one word."), ("user", "What is 3 plus 3?")],
    [("user", "Hello {{ there }}"), ("assistant", "Hi.\nHow can I help?"), ("user", 'Say "yes".')],
    [("system", "Be brief.\nBe kind."), ("user", "One?"), ("assistant", "Two."), ("user", "Three?"),
     ("assistant", "Four."), ("user", "Five?")],
)


@dataclass(frozen=True)
class ChatTemplate:
    """The Go template, the stop strings, and the BOS llama.cpp adds in front of the rendered text."""
    template: str | None           # None: not convertible (reason says why)
    stops: tuple[str, ...]
    bos: str = ""
    reason: str = ""


def convert_chat_template(tokenizer, adds_bos: bool) -> ChatTemplate:
    """The tokenizer's chat template as an Ollama TEMPLATE; `adds_bos`: the GGUF tells llama.cpp to put BOS
    in front of every prompt (so the template must not write it again)."""
    stops = tuple(dict.fromkeys(s for s in (tokenizer.eos_token,) if s))
    if not getattr(tokenizer, "chat_template", None):
        return ChatTemplate(None, stops, reason="the tokenizer has no chat template")
    bos = (tokenizer.bos_token or "") if adds_bos else ""
    try:
        pieces = _pieces(lambda messages, generation: _without(bos, _render_jinja(tokenizer, messages, generation)))
    except (ValueError, KeyError, TypeError, IndexError, LookupError) as exc:
        return ChatTemplate(None, stops, reason=f"its chat template cannot be taken apart by role ({exc})")
    except Exception as exc:   # a Jinja template raising on a role it refuses (TemplateError, ...)
        return ChatTemplate(None, stops, reason=f"its chat template refuses a conversation: {exc}")
    stop = pieces["assistant"][1].strip()
    stops = tuple(dict.fromkeys(([stop] if stop else []) + list(stops)))
    template = go_template(pieces)
    mismatch = _first_mismatch(tokenizer, template, bos)
    if mismatch:
        return ChatTemplate(None, stops, bos, f"the converted template renders {mismatch} differently")
    return ChatTemplate(template, stops, bos)


def _render_jinja(tokenizer, messages: list[tuple[str, str]], generation: bool) -> str:
    return tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in messages], tokenize=False,
                                         add_generation_prompt=generation)


def _without(bos: str, text: str) -> str:
    """The rendering less the BOS llama.cpp writes itself."""
    return text[len(bos):] if bos and text.startswith(bos) else text


def _split(text: str, mark: str) -> tuple[str, str]:
    if text.count(mark) != 1:
        raise ValueError(f"the message content appears {text.count(mark)} times")
    before, _, after = text.partition(mark)
    return before, after


def _pieces(jinja) -> dict:
    """What the chat template writes: `head` before everything, (before, after) each role's content, the
    default system prompt it adds when a conversation has none, and the generation prompt."""
    with_system = [("system", MARK["system"]), ("user", MARK["user"]), ("assistant", MARK["assistant"]),
                   ("user", MARK["user"] + "2")]
    renders = [jinja(with_system[:k], False) for k in range(1, 5)]
    for shorter, longer in zip(renders, renders[1:]):
        if not longer.startswith(shorter):
            raise ValueError("a later message changes what was written for an earlier one")
    parts = [renders[0]] + [b[len(a):] for a, b in zip(renders, renders[1:])]
    opening, system_after = _split(parts[0], MARK["system"])
    user = _split(parts[1], MARK["user"])
    assistant = _split(parts[2], MARK["assistant"])
    if _split(parts[3], MARK["user"] + "2") != user:
        raise ValueError("the second user message is wrapped differently from the first")
    lone_user = jinja([("user", MARK["user"])], False)
    no_system_opening = _split(lone_user, MARK["user"])[0]
    if not no_system_opening.endswith(user[0]) or _split(lone_user, MARK["user"])[1] != user[1]:
        raise ValueError("a first user message is wrapped differently from a later one")
    before_first_user = no_system_opening[:len(no_system_opening) - len(user[0])]
    generation = jinja([("user", MARK["user"])], True)
    if not generation.startswith(lone_user):
        raise ValueError("the generation prompt changes the conversation before it")
    head, system_before, default = _head_and_default_system(opening, before_first_user, system_after)
    return {"head": head, "system": (system_before, system_after), "user": user, "assistant": assistant,
            "default_system": default, "generation": generation[len(lone_user):]}


def _head_and_default_system(opening: str, before_first_user: str, system_after: str) -> tuple[str, str, str | None]:
    """Split what comes before a system message (`opening`) into the head written before every conversation
    and the system message's own prefix, such that what a conversation without a system message starts with
    (`before_first_user`) is the head alone, or the head and a default system message."""
    for cut in range(len(opening) + 1):     # the shortest head first: the template reads most naturally
        head, system_before = opening[:cut], opening[cut:]
        if not before_first_user.startswith(head):
            break
        rest = before_first_user[cut:]
        if rest == "":
            return head, system_before, None
        if rest.startswith(system_before) and rest.endswith(system_after) and \
                len(rest) >= len(system_before) + len(system_after):
            return head, system_before, rest[len(system_before):len(rest) - len(system_after)]
    raise ValueError("what it writes before a conversation without a system message is not a system message")


def _literal(text: str) -> str:
    """Text as it stands in a Go template: only `{{` would be read as an action."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(pieces: dict) -> str:
    """The Go template: the head, the default system message when the conversation starts without one, each
    message wrapped by its role, then the generation prompt."""
    out = [_literal(pieces["head"])]
    if pieces["default_system"] is not None:
        before, after = pieces["system"]
        out.append('{{ if ne (index .Messages 0).Role "system" }}' +
                   _literal(before + pieces["default_system"] + after) + "{{ end }}")
    out.append("{{ range .Messages }}")
    for i, role in enumerate(ROLES):
        before, after = pieces[role]
        out.append(("{{ if" if i == 0 else "{{ else if") + f' eq .Role "{role}" }}}}' +
                   _literal(before) + "{{ .Content }}" + _literal(after))
    out.append("{{ end }}{{ end }}" + _literal(pieces["generation"]))
    return "".join(out)


def ollama_prompt(template: str, bos: str, messages: list[tuple[str, str]]) -> str:
    """The text Ollama's llama.cpp tokenises for `messages`: BOS (when the GGUF adds it) + the rendering."""
    data = {"Messages": [{"Role": role, "Content": content} for role, content in messages]}
    return bos + render(template, data)


def _first_mismatch(tokenizer, template: str, bos: str) -> str | None:
    for messages in CHECK_CONVERSATIONS:
        try:
            ours = ollama_prompt(template, bos, list(messages))
        except GoTemplateError as exc:
            return f"a conversation of {len(messages)} messages ({exc})"
        if ours != _render_jinja(tokenizer, list(messages), True):
            return f"a conversation of {len(messages)} messages ({', '.join(r for r, _ in messages)})"
    return None


# ---------------------------------------------------------------- the Modelfile

def gguf_adds_bos(path: Path) -> bool:
    """Whether llama.cpp puts BOS in front of a prompt for this GGUF (tokenizer.ggml.add_bos_token)."""
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.parts[field.data[0]][0])


def sampling_parameters(model_dir: Path) -> list[tuple[str, object]]:
    """PARAMETER lines from the model's own settings: its context window (capped) and, when its generation
    config samples, the sampling settings it was published with."""
    config = _read(model_dir / "config.json")
    generation = _read(model_dir / "generation_config.json")
    params: list[tuple[str, object]] = []
    window = config.get("max_position_embeddings") or config.get("n_positions")
    if window:
        params.append(("num_ctx", min(int(window), OLLAMA_CONTEXT_CAP)))
    if generation.get("do_sample"):
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                             ("repeat_penalty", "repetition_penalty")):
            if generation.get(theirs) is not None:
                params.append((ours, generation[theirs]))
    else:
        params.append(("temperature", 0))   # the model's generation config decodes greedily
    return params


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def modelfile_text(name: str, gguf: str, chat: ChatTemplate, params: list[tuple[str, object]],
                   adapter: str | None = None) -> str:
    """The Modelfile `name` for `gguf` (a path relative to the Modelfile's folder, as Ollama reads FROM)."""
    lines = [f"# ollama create NAME -f {name}   (written by unlearn export)",
             f"FROM ./{gguf}"]
    if adapter:
        lines.append(f"ADAPTER ./{adapter}")
    if chat.template is not None and '"""' not in chat.template:
        lines.append(f'TEMPLATE """{chat.template}"""')
    else:
        lines.append(f"# no TEMPLATE: {chat.reason or 'the template holds triple quotes'}; Ollama falls back "
                     "to the template it recognises in the GGUF")
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in chat.stops]
    lines += [f"PARAMETER {name} {value}" for name, value in params]
    return "\n".join(lines) + "\n"


def write_modelfiles(gguf_dir: Path, model_dir: Path, tokenizer, artifacts: dict[str, dict], bundle: Path,
                     log=print) -> None:
    """A `.Modelfile` beside each GGUF artifact (the forget patch's names its base as FROM, itself as ADAPTER);
    each artifact records its Modelfile's path."""
    first = next(bundle / a.get("base", a["path"]) for a in artifacts.values())
    chat = convert_chat_template(tokenizer, gguf_adds_bos(first))
    if chat.template is None:
        log(f"Ollama: the chat template was not converted ({chat.reason}); the Modelfiles have no TEMPLATE")
    params = sampling_parameters(model_dir)
    for artifact in artifacts.values():
        path = bundle / artifact["path"]
        base = Path(artifact["base"]).name if "base" in artifact else None
        modelfile = gguf_dir / f"{path.stem}.Modelfile"
        modelfile.write_text(modelfile_text(modelfile.name, base or path.name, chat, params,
                                            adapter=path.name if base else None), encoding="utf-8")
        artifact["modelfile"] = modelfile.relative_to(bundle).as_posix()
