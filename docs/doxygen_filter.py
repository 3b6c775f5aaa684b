#!/usr/bin/env python3
"""Doxygen's input filter for ctxmgr's headers (docs/Doxyfile).

The headers are commented with plain `//`, which Doxygen ignores. This filter prints a header
with its opening comment turned into the file's description (kept verbatim: it holds
aligned tables and code) and every other `//` comment line into `///`, so that a comment
written above a declaration documents it.
"""

import sys


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    i = 0
    opening = []
    while i < len(lines) and lines[i].startswith("//"):
        # "*/" would end the comment early ("/* readers together */" in an example).
        opening.append(lines[i][2:].removeprefix(" ").replace("*/", "* /"))
        i += 1
    if opening:
        # The first line is the brief, the rest verbatim.
        out.append("/** @file")
        out.append("@brief " + opening[0])
        if len(opening) > 1:
            out.append("@verbatim " + opening[1])
            out += opening[2:-1]
            out.append(opening[-1] + " @endverbatim */")
        else:
            out[-1] += " */"
    for line in lines[i:]:
        stripped = line.lstrip()
        if stripped.startswith("//") and not stripped.startswith("///"):
            line = line[: len(line) - len(stripped)] + "///" + stripped[2:]
        out.append(line)
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
