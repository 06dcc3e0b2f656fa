"""A small renderer of Go's text/template, the subset the Modelfile's TEMPLATE uses (export/modelfile.py), so
that a converted chat template is checked against the tokenizer's own before it is written: text, `{{ expr }}`,
`if` / `else if` / `else`, `range` (with `$i, $m :=` and `else`), `with`, `end`, trim markers `{{-` / `-}}`,
fields (`.Role`, `$m.Content`, `$.Messages`, `(index .Messages 0).Role`), string and number literals, and the
built-in functions eq, ne, and, or, not, index, len. Ollama renders the same text with Go's own engine.

Not covered (never emitted): pipelines with `|`, `define`/`template`/`block`, comments, and `}}` inside a
string literal."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from core.errors import UnlearnError

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|`[^`]*`)|(?P<num>-?\d+)|(?P<open>\()|(?P<close>\))'
                   r"|(?P<var>\$\w*(?:\.\w+)*)|(?P<field>(?:\.\w+)+|\.)|(?P<name>\w+)|(?P<assign>:=|,))")
WHITESPACE = " \t\r\n"


class GoTemplateError(UnlearnError):
    pass


@dataclass
class Block:
    kind: str                      # "root", "if", "range", "with"
    expr: str = ""
    variables: list[str] = field(default_factory=list)
    body: list = field(default_factory=list)
    branches: list = field(default_factory=list)   # if: [(expr, body)]; the first is the `if` itself
    otherwise: list | None = None


def render(template: str, data: dict) -> str:
    return "".join(_run(parse(template).body, data, {"$": data}))


def parse(template: str) -> Block:
    root = Block("root")
    stack = [root]
    current = root.body
    position, trim_next = 0, False
    for match in ACTION.finditer(template):
        text = template[position:match.start()]
        if trim_next:
            text = text.lstrip(WHITESPACE)
        if match.group(1):
            text = text.rstrip(WHITESPACE)
        if text:
            current.append(text)
        position, trim_next = match.end(), bool(match.group(3))
        current = _action(match.group(2), stack, current)
    text = template[position:]
    current.append(text.lstrip(WHITESPACE) if trim_next else text)
    if len(stack) != 1:
        raise GoTemplateError(f"template: {stack[-1].kind} without end", "close every block with {{ end }}")
    return root


def _action(source: str, stack: list[Block], current: list) -> list:
    """Add one action to the tree; returns the list the following text goes into."""
    keyword, _, rest = source.partition(" ")
    if keyword in ("if", "range", "with"):
        block = Block(keyword)
        if keyword == "range" and ":=" in rest:
            names, _, rest = rest.partition(":=")
            block.variables = [n.strip() for n in names.split(",")]
        block.expr = rest.strip()
        if keyword == "if":
            block.branches.append((block.expr, block.body))
        current.append(block)
        stack.append(block)
        return block.body
    if keyword == "else":
        block = stack[-1]
        if rest.startswith("if "):
            body: list = []
            block.branches.append((rest[3:].strip(), body))
            return body
        block.otherwise = []
        return block.otherwise
    if keyword == "end":
        if len(stack) == 1:
            raise GoTemplateError("template: unexpected {{ end }}", "remove it")
        stack.pop()
        return _open_body(stack[-1])
    current.append(("expr", source))
    return current


def _open_body(block: Block) -> list:
    """Where text after a closed inner block goes: the open block's latest branch."""
    if block.otherwise is not None:
        return block.otherwise
    return block.branches[-1][1] if block.branches else block.body


def _run(nodes: list, dot, scope: dict):
    for node in nodes:
        if isinstance(node, str):
            yield node
        elif isinstance(node, tuple):
            yield _text(evaluate(node[1], dot, scope))
        elif node.kind == "if":
            chosen = next((body for expr, body in node.branches if _truth(evaluate(expr, dot, scope))),
                          node.otherwise or [])
            yield from _run(chosen, dot, scope)
        elif node.kind == "with":
            value = evaluate(node.expr, dot, scope)
            yield from _run(node.body if _truth(value) else node.otherwise or [], value if _truth(value) else dot,
                            scope)
        else:
            yield from _range(node, dot, scope)


def _range(node: Block, dot, scope: dict):
    items = evaluate(node.expr, dot, scope) or []
    pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items))
    if not pairs:
        yield from _run(node.otherwise or [], dot, scope)
    for index, item in pairs:
        inner = dict(scope)
        if len(node.variables) == 1:
            inner[node.variables[0]] = item
        elif len(node.variables) == 2:
            inner[node.variables[0]], inner[node.variables[1]] = index, item
        yield from _run(node.body, item, inner)


def _text(value) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _truth(value) -> bool:
    return bool(value)


# ---------------------------------------------------------------- expressions

def evaluate(source: str, dot, scope: dict):
    tokens = _tokens(source)
    value, rest = _command(tokens, dot, scope)
    if rest:
        raise GoTemplateError(f"template: unexpected {rest[0][1]!r} in {{{{ {source} }}}}", "")
    return value


def _tokens(source: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    source = source.strip()
    while position < len(source):
        match = TOKEN.match(source, position)
        if not match or match.end() == position:
            raise GoTemplateError(f"template: cannot read {source[position:]!r}", "")
        tokens.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
        while position < len(source) and source[position] in WHITESPACE:
            position += 1
    return tokens


FUNCTIONS = {
    "eq": lambda first, *others: any(first == other for other in others),
    "ne": lambda a, b: a != b,
    "not": lambda a: not _truth(a),
    "and": lambda *args: next((a for a in args if not _truth(a)), args[-1]),
    "or": lambda *args: next((a for a in args if _truth(a)), args[-1]),
    "len": len,
}


def _index(value, *keys):
    for key in keys:
        value = value[key]
    return value


FUNCTIONS["index"] = _index


def _command(tokens: list, dot, scope: dict):
    """A function call with its arguments up to `)` or the end, or a single operand."""
    if tokens and tokens[0][0] == "name" and tokens[0][1] in FUNCTIONS:
        function, tokens = FUNCTIONS[tokens[0][1]], tokens[1:]
        args = []
        while tokens and tokens[0][0] != "close":
            value, tokens = _operand(tokens, dot, scope)
            args.append(value)
        return function(*args), tokens
    return _operand(tokens, dot, scope)


def _operand(tokens: list, dot, scope: dict):
    kind, text = tokens[0]
    tokens = tokens[1:]
    if kind == "open":
        value, tokens = _command(tokens, dot, scope)
        if not tokens or tokens[0][0] != "close":
            raise GoTemplateError("template: unclosed (", "")
        tokens = tokens[1:]
        if tokens and tokens[0][0] == "field" and tokens[0][1] != ".":   # (index .Messages 0).Role
            value, tokens = _fields(value, tokens[0][1]), tokens[1:]
        return value, tokens
    if kind == "str":
        return (text[1:-1] if text.startswith("`") else ast.literal_eval(text)), tokens
    if kind == "num":
        return int(text), tokens
    if kind == "field":
        return (dot if text == "." else _fields(dot, text)), tokens
    if kind == "var":
        name, _, chain = text.partition(".")
        if name not in scope:
            raise GoTemplateError(f"template: undefined variable {name}", "")
        return (_fields(scope[name], "." + chain) if chain else scope[name]), tokens
    if kind == "name" and text in ("true", "false", "nil"):
        return {"true": True, "false": False, "nil": None}[text], tokens
    raise GoTemplateError(f"template: unexpected {text!r}", "")


def _fields(value, chain: str):
    for name in chain.strip(".").split("."):
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return value
