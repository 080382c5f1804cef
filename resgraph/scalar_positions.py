"""Stage 1, load (a helper): where each character of a YAML string's value was written in the file.

A value's own offsets (an expression's bad name is the 12th character of `${...}`) are columns in
the file only for a plain or quoted scalar on one line without escapes. A block scalar (`|`, `>`)
starts on the line after its indicator, below an indentation; a folded or multi-line flow scalar
joins its lines with spaces; an escape (`\\"`, `''`) is two characters for one. This module aligns
the value with the text it was written as, so a position inside the value maps back to the file.

The alignment walks the value and the written text together: each character of the value is the
next one written, or a line break folded into a space, or an escape decoded; only whitespace
(indentation, trailing spaces, the line breaks folding removed) is skipped between them. Where that
does not account for the text (an escape it does not know), there is no map, and the caller says
the position is the scalar's start.

>>> text = "x: >-\\n  ${a +\\n  b}\\n"
>>> positions = scalar_positions(text, line_starts(text), (0, 3), (3, 0), ">", "${a + b}")
>>> [locate_offset(positions, 6)]  # the `b`, on the third line
[(3, 3)]
"""

from __future__ import annotations

import bisect
import re

__all__ = ["YAML_BREAK", "Positions", "line_starts", "locate_offset", "scalar_positions"]

# Runs of a value's characters written one after another on one line: (offset in the value, line,
# column), 1-based line and column, sorted by offset.
Positions = tuple[tuple[int, int, int], ...]

# YAML's one-character escapes in double quotes (YAML 1.2, 5.7), each standing for one character.
_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r",
            "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85", "_": "\xa0", "L": "\u2028",
            "P": "\u2029"}
_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}
_HEX = re.compile("[0-9A-Fa-f]+")
# YAML's line breaks (a mark's line counts each; `\r\n` is one, and `\r` is one too where the text did not
# come from a file), and what may lie between a value's characters in the text: indentation, trailing
# spaces, the breaks folding removed.
YAML_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
_BREAKS = "\n\r\x85\u2028\u2029"
_BETWEEN = frozenset(" \t" + _BREAKS)


def line_starts(text: str) -> list[int]:
    """The offset in `text` of each line's start, as YAML counts lines (found once per document)."""
    return [0, *(match.end() for match in YAML_BREAK.finditer(text))]


def scalar_positions(text: str, lines: list[int], start: tuple[int, int], end: tuple[int, int], style: str | None,
                     value: str) -> Positions | None:
    """Where each character of a string scalar's `value` was written in `text`, or None where the
    written text cannot be accounted for.

    Args:
        lines: `line_starts(text)`.
        start, end: the scalar node's marks, as 0-based (line, column) (its tag or anchor included).
        style: the node's style: None (plain), `'`, `"`, `|` or `>`.
    """
    if start[0] >= len(lines) or end[0] >= len(lines):
        return None
    begin, stop = lines[start[0]] + start[1], min(lines[end[0]] + end[1], len(text))
    if style in ("|", ">"):
        below = bisect.bisect_right(lines, begin)  # the content starts below the header (`|-2 # note`)
        if below >= len(lines):
            return None
        begin = lines[below]
    elif value.startswith("${"):
        begin = text.find("${", begin, stop)  # past a tag, an anchor or the opening quote
        if begin < 0:
            return None
    offsets = _align(text, begin, stop, style, value)
    if offsets is None:
        return None
    runs: list[tuple[int, int, int]] = []
    previous = -2
    for index, offset in enumerate(offsets):
        if offset != previous + 1 or text[previous] in _BREAKS:  # a new run: after a jump or a line's end
            line = bisect.bisect_right(lines, offset)
            runs.append((index, line, offset - lines[line - 1] + 1))
        previous = offset
    return tuple(runs)


def locate_offset(positions: Positions, offset: int) -> tuple[int, int]:
    """The (line, column) where the value's character at `offset` was written (the last one's, past
    the end)."""
    index = max(bisect.bisect_right(positions, (offset, float("inf"), 0)) - 1, 0)
    first, line, column = positions[index]
    return line, column + offset - first


def _align(text: str, begin: int, stop: int, style: str | None, value: str) -> list[int] | None:
    """The offset in `text` of each character of `value`, written from `begin` on (see the module)."""
    offsets: list[int] = []
    at = begin
    for char in value:
        while True:
            if at >= stop:
                return None
            written = text[at]
            if style == '"' and written == "\\":  # an escape: decoded, or an escaped line break (nothing)
                decoded, width = _escape(text, at)
                if decoded == "":  # the next line's indentation is no part of the value either
                    at += width
                    while at < stop and text[at] in " \t":
                        at += 1
                    continue
                if decoded != char:
                    return None
                offsets.append(at)
                at += width
                break
            if style == "'" and written == "'" and char == "'" and text.startswith("''", at):
                offsets.append(at)
                at += 2
                break
            if written == char or (written in _BREAKS and (char == "\n" or (char == " " and style != "|"))):
                offsets.append(at)  # (a line break as written, or folded into a space)
                at += 2 if text.startswith("\r\n", at) else 1
                break
            if written in _BETWEEN:  # indentation, a trailing space, a line break folding removed
                at += 1
                continue
            return None
    return offsets


def _escape(text: str, at: int) -> tuple[str | None, int]:
    """The character a double-quoted escape at `at` stands for and its width: "" for an escaped line
    break (it joins two lines), None where it is no escape YAML has."""
    letter = text[at + 1:at + 2]
    if letter in _BREAKS:  # (`\r\n` is one break)
        return "", 3 if text.startswith("\r\n", at + 1) else 2
    if letter in _ESCAPES:
        return _ESCAPES[letter], 2
    width = _HEX_WIDTH.get(letter)
    digits = text[at + 2:at + 2 + width] if width else ""
    if width and len(digits) == width and _HEX.fullmatch(digits) and int(digits, 16) <= 0x10FFFF:
        return chr(int(digits, 16)), 2 + width
    return None, 1
