"""`unlearn chat BUNDLE --format FORMAT`: a streamed chat with any artifact of a bundle, in its format's runtime.

Every format is prompted through the same tokenizer and chat template (the bundle's tokenizer/), so the
only thing that changes between formats is the runtime that computes the next token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from core.errors import require

from .bundle import open_runner, read_manifest
from .formats import get_format


def pick_artifact(manifest: dict, fmt: str, variant: str | None) -> str:
    """The artifact name for a format (and variant: a GGUF quant or an ONNX precision)."""
    fmt = get_format(fmt).name
    names = [n for n in manifest["artifacts"] if n == fmt or n.startswith(fmt + "-")]
    require(names, f"the bundle has no {fmt} artifact (it has {', '.join(manifest['artifacts'])})",
            "choose --format among those, or export again with that format")
    if variant is None:
        return names[0]
    name = f"{fmt}-{variant.lower()}"
    require(name in names, f"the bundle has no {name} (it has {', '.join(names)})", "choose --variant among those")
    return name


class ChatSession:
    """A conversation with one artifact; each turn re-reads the whole conversation (small edge models)."""

    def __init__(self, bundle: str | Path, fmt: str, variant: str | None = None):
        from transformers import AutoTokenizer

        self.bundle = Path(bundle)
        manifest = read_manifest(self.bundle)
        self.artifact = pick_artifact(manifest, fmt, variant)
        self.tokenizer = AutoTokenizer.from_pretrained(self.bundle / "tokenizer")
        self.runner = open_runner(self.artifact, manifest["artifacts"][self.artifact], self.bundle)
        self.messages: list[dict] = []
        self.last: dict = {}

    def reply(self, text: str, max_new_tokens: int = 256, temperature: float = 0.0) -> Iterator[str]:
        """Stream the answer to `text` as pieces of text; the full answer joins the conversation."""
        self.messages.append({"role": "user", "content": text})
        pieces = []
        for piece in self.answer(self.messages, max_new_tokens, temperature):
            pieces.append(piece)
            yield piece
        self.messages.append({"role": "assistant", "content": "".join(pieces)})

    def answer(self, messages: list[dict], max_new_tokens: int = 256, temperature: float = 0.0,
               seed: int = 0) -> Iterator[str]:
        """Stream the next assistant message after `messages` as pieces of text; afterwards `last` holds the
        token counts and why it ended ("stop": end of turn, "length": max_new_tokens reached)."""
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        stop = tuple(i for i in (self.tokenizer.eos_token_id,) if i is not None)
        tokens, shown, finish = [], "", "length"
        for token in self.runner.stream(ids, max_new_tokens, stop, temperature, seed):
            if token in stop:
                finish = "stop"
                break
            tokens.append(token)
            # decode everything so far: a multi-byte character may span several tokens
            text_so_far = self.tokenizer.decode(tokens, skip_special_tokens=True)
            if len(text_so_far) > len(shown) and not text_so_far.endswith("\ufffd"):
                yield text_so_far[len(shown):]
                shown = text_so_far
        self.last = {"prompt_tokens": len(ids), "completion_tokens": len(tokens), "finish_reason": finish}

    def close(self) -> None:
        self.runner.close()


def chat_loop(session: ChatSession, read: Callable[[str], str] = input, write: Callable[[str], None] = None,
              max_new_tokens: int = 256, temperature: float = 0.0) -> None:
    """Read lines until EOF or /quit, streaming each reply."""
    write = write or (lambda piece: print(piece, end="", flush=True))
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            return
        if line in ("/quit", "/exit"):
            return
        if not line:
            continue
        write(f"{session.artifact}> ")
        for piece in session.reply(line, max_new_tokens, temperature):
            write(piece)
        write("\n")
