#!/usr/bin/env python3
"""Turns the C++ examples of one Markdown page into C++ sources the test suite compiles.

    extract.py --page ID --source PAGE.md --label NAME --examples OUT.cpp --programs OUT.cpp

Every ```cpp (or ```c++) block of the page is an example. The HTML comment just before a
block, invisible on the rendered page, says how it is compiled:

    <!-- example: fragment -->        statements: the body of a function (the default)
    <!-- example: async fragment -->  statements with co_await: the body of an
                                      asio::awaitable<void> coroutine
    <!-- example: declarations -->    namespace-scope code: functions, classes
    <!-- example: program -->         a whole program with int main(): compiled, linked, run

Lines after the first line of the comment, before the closing `-->`, are hidden context put in
front of the block: the declarations a fragment takes for granted (`std::mutex m;`,
`void migrate();`). #include lines of any block are moved to the top of its source.

Fragments and declarations of a page share one namespace, in page order, so a block may use
what an earlier one declared; they are compiled, never linked (a fragment may call a function
it only declares). Programs are self-contained: each is compiled in a namespace of its own
with main renamed, linked into the runner, and run in an empty temporary directory.
`#line` directives make the compiler's messages name the page and its line.
"""

import argparse
import re
import sys

KINDS = ("fragment", "async fragment", "declarations", "program")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([A-Za-z0-9_+-]*)")
MARKER = re.compile(r"^\s*<!--\s*example:\s*(.*?)\s*(-->)?\s*$")


class Block:
    def __init__(self, kind, line, code, hidden, hidden_line):
        self.kind = kind
        self.line = line  # the first line of code, 1-based
        self.code = code
        self.hidden = hidden
        self.hidden_line = hidden_line


def fail(label, line, message):
    sys.exit(f"{label}:{line}: {message}")


def find_marker(lines, fence_index, label):
    """The marker comment ending just above the fence (blank lines allowed), or None."""
    i = fence_index - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    if i < 0 or not lines[i].rstrip().endswith("-->"):
        return None
    end = i
    while i >= 0 and "<!--" not in lines[i]:
        i -= 1
    if i < 0:
        return None
    match = MARKER.match(lines[i])
    if not match:
        return None
    kind = match.group(1)
    if kind not in KINDS:
        fail(label, i + 1, f"unknown example kind {kind!r}; one of: {', '.join(KINDS)}")
    hidden = [] if match.group(2) else [line for line in lines[i + 1:end]]
    if not match.group(2):
        last = lines[end].rstrip()[:-3]
        if last.strip():
            hidden.append(last)
    return kind, hidden, i + 2


def parse(text, label):
    lines = text.split("\n")
    blocks = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, language = match.groups()
        start = i
        i += 1
        body = []
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and lines[i].strip().strip(fence[0]) == ""):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            fail(label, start + 1, "code block never closed")
        i += 1
        if language.lower() not in ("cpp", "c++"):
            continue
        marker = find_marker(lines, start, label)
        kind, hidden, hidden_line = marker if marker else ("fragment", [], 0)
        blocks.append(Block(kind, start + 2, body, hidden, hidden_line))
    return blocks


def split_includes(code, first_line):
    """(the #include lines with their line numbers, the code with them blanked)."""
    includes, rest = [], []
    for n, line in enumerate(code):
        if line.lstrip().startswith("#include"):
            includes.append((first_line + n, line.strip()))
            rest.append("")
        else:
            rest.append(line)
    return includes, rest


def line_directive(line, label):
    return f'#line {line} "{label}"'


def emit_code(out, block_lines, first_line, label):
    out.append(line_directive(first_line, label))
    out.extend(block_lines)


def generate(page, label, blocks):
    uses_asio = any("asio::" in line or block.kind == "async fragment"
                    for block in blocks for line in block.code + block.hidden)
    header = [f"// Generated from {label} by tests/docs_examples/extract.py: do not edit."]
    if uses_asio:
        header.append("#define CTXMGR_DOCS_EXAMPLES_ASYNC 1")
    header.append('#include "prelude.hpp"')

    examples_includes, examples = [], []
    programs_includes, programs = [], []
    program_names = []
    namespace = f"docs_examples::{page}"
    for block in blocks:
        includes, code = split_includes(block.code, block.line)
        hidden_includes, hidden = split_includes(block.hidden, block.hidden_line)
        if block.kind == "program":
            name = f"program_at_line_{block.line}"
            program_names.append((name, block.line))
            programs_includes += hidden_includes + includes
            programs.append(f"namespace {name} {{")
            programs.append(f"#define main {name}")
            if hidden:
                emit_code(programs, hidden, block.hidden_line, label)
            emit_code(programs, code, block.line, label)
            programs.append("#undef main")
            programs.append("}")
            continue
        examples_includes += hidden_includes + includes
        if block.kind == "declarations":
            if hidden:
                emit_code(examples, hidden, block.hidden_line, label)
            emit_code(examples, code, block.line, label)
            continue
        # Inline, so that a fragment calling a function it only declares is never emitted.
        if block.kind == "fragment":
            examples.append(f"[[maybe_unused]] inline void fragment_at_line_{block.line}() {{")
        else:
            examples.append(
                f"[[maybe_unused]] inline asio::awaitable<void> fragment_at_line_{block.line}() {{")
        if hidden:
            emit_code(examples, hidden, block.hidden_line, label)
        emit_code(examples, code, block.line, label)
        if block.kind == "async fragment":
            examples.append("co_return;")
        examples.append("}")

    def source(includes, body, tail):
        if not body:
            # Nothing of this kind on the page: no need to parse the library for it.
            return "\n".join(header[:1] + tail) + "\n"
        lines = list(header)
        for line, include in includes:
            lines += [line_directive(line, label), include]
        lines.append(f"namespace {namespace} {{")
        lines += body
        lines.append("}")
        lines += tail
        return "\n".join(lines) + "\n"

    runner = [
        f"int docs_examples_run_{page}() {{",
        "    int failures = 0;",
    ]
    for name, line in program_names:
        runner.append(
            f'    failures += docs_examples::run_program("{label}", {line}, '
            f"&{namespace}::{name}::{name});")
    runner += ["    return failures;", "}"]
    return (source(examples_includes, examples, []),
            source(programs_includes, programs, runner))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--page", required=True, help="an identifier: the namespace")
    parser.add_argument("--source", required=True)
    parser.add_argument("--label", required=True, help="the page's name in messages")
    parser.add_argument("--examples", required=True)
    parser.add_argument("--programs", required=True)
    args = parser.parse_args()
    with open(args.source, encoding="utf-8") as f:
        blocks = parse(f.read(), args.label)
    examples, programs = generate(args.page, args.label, blocks)
    for path, text in ((args.examples, examples), (args.programs, programs)):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
