"""A small interpreter for the subset of TSP (the Lua dialect of Keithley instruments) that emulated instruments
answer: one line is a chunk of statements separated by spaces.

    statement := path "=" expr | path "(" [expr {"," expr}] ")"
    expr      := term {"or" term}
    term      := number | "string" | true | false | nil | "{" [expr {"," expr}] "}" | path ["(" args ")"]
    path      := name {"." name | "[" integer "]"}

The line is parsed whole before anything runs (a syntax error runs nothing, as on the instrument); a statement
that fails at run time stops the rest of the line. ``print`` writes its values tab-separated, numbers as
``%.5e`` (the instruments' default ``format.asciiprecision`` of 6 digits). The instrument supplies the names:
:class:`Namespace` ``get``/``set``/``call`` raise :class:`TspError` for anything it does not know.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<str>"[^"]*")
  | (?P<name>[A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*|\[\d+\])*)
  | (?P<punct>[(){},=])
)""", re.VERBOSE)
KEYWORDS = {"true": True, "false": False, "nil": None}


class TspError(Exception):
    """A TSP error as the instrument queues it: code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Namespace(Protocol):
    def get(self, path: str) -> Any: ...

    def set(self, path: str, value: Any) -> None: ...

    def call(self, path: str, args: list[Any]) -> list[Any]: ...


@dataclass
class _Call:
    path: str
    args: list[Any]


@dataclass
class _Name:
    path: str


@dataclass
class _Or:
    terms: list[Any]


@dataclass
class _Table:
    items: list[Any]


def tokenize(line: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = line.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise TspError(-285, f"TSP Syntax error at line 1: unexpected symbol near '{text[pos:pos + 10]}'")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            near = tok[1] if tok else "<eof>"
            raise TspError(-285, f"TSP Syntax error at line 1: '{value or 'symbol'}' expected near '{near}'")
        self.i += 1
        return tok

    def statements(self) -> list[Any]:
        out = []
        while self.peek() is not None:
            kind, text = self.take()
            if kind != "name" or text in KEYWORDS or text == "or":
                raise TspError(-285, f"TSP Syntax error at line 1: unexpected symbol near '{text}'")
            nxt = self.peek()
            if nxt and nxt[1] == "=":
                self.take("=")
                out.append(("set", text, self.expr()))
            elif nxt and nxt[1] == "(":
                out.append(("call", _Call(text, self.args(")"))))
            else:
                raise TspError(-285, f"TSP Syntax error at line 1: '=' expected near '{nxt[1] if nxt else '<eof>'}'")
        return out

    def args(self, close: str) -> list[Any]:
        self.take("(" if close == ")" else "{")
        items: list[Any] = []
        if self.peek() and self.peek()[1] == close:  # type: ignore[index]
            self.take(close)
            return items
        while True:
            items.append(self.expr())
            if self.peek() and self.peek()[1] == ",":  # type: ignore[index]
                self.take(",")
                continue
            self.take(close)
            return items

    def expr(self) -> Any:
        terms = [self.term()]
        while self.peek() == ("name", "or"):
            self.take()
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else _Or(terms)

    def term(self) -> Any:
        tok = self.peek()
        if tok is None:
            raise TspError(-285, "TSP Syntax error at line 1: unexpected symbol near '<eof>'")
        kind, text = tok
        if kind == "num":
            self.take()
            return float(text)
        if kind == "str":
            self.take()
            return text[1:-1]
        if text == "{":
            return _Table(self.args("}"))
        if kind == "name" and text in KEYWORDS:
            self.take()
            return KEYWORDS[text]
        if kind == "name" and text != "or":
            self.take()
            if self.peek() and self.peek()[1] == "(":  # type: ignore[index]
                return _Call(text, self.args(")"))
            return _Name(text)
        raise TspError(-285, f"TSP Syntax error at line 1: unexpected symbol near '{text}'")


def format_value(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"{float(v):.5e}"
    return str(v)


def _truthy(v: Any) -> bool:
    return v is not None and v is not False


def _eval(ns: Namespace, node: Any, env: dict[str, Any]) -> list[Any]:
    """Values of an expression (a call may return several)."""
    if isinstance(node, _Name):
        return [env[node.path] if node.path in env else ns.get(node.path)]
    if isinstance(node, _Call):
        return ns.call(node.path, [_eval(ns, a, env)[0] for a in node.args])
    if isinstance(node, _Or):
        for t in node.terms:
            v = _eval(ns, t, env)[0]
            if _truthy(v):
                return [v]
        return [v]
    if isinstance(node, _Table):
        return [[_eval(ns, a, env)[0] for a in node.items]]
    return [node]


def run_line(ns: Namespace, line: str, env: dict[str, Any], printed: list[str]) -> None:
    """Run one chunk, appending the lines it prints to ``printed``. ``env`` holds the chunk's global variables
    (``xb_i = ...``), kept across lines like an instrument's Lua globals. A run-time TspError propagates after the
    statements before it have run (what they printed stays in ``printed``)."""
    statements = _Parser(tokenize(line)).statements()
    for st in statements:
        if st[0] == "set":
            _, path, expr = st
            value = _eval(ns, expr, env)[0]
            if "." in path or "[" in path:
                ns.set(path, value)
            else:
                env[path] = value
        else:
            call: _Call = st[1]
            if call.path == "print":
                values = [v for a in call.args for v in (_eval(ns, a, env) if isinstance(a, _Call) else
                                                          [_eval(ns, a, env)[0]])]
                printed.append("\t".join(format_value(v) for v in values))
            else:
                ns.call(call.path, [_eval(ns, a, env)[0] for a in call.args])
