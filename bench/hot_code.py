#!/usr/bin/env python3
"""Hot code of a callgrind dump: how many distinct 64-byte lines of machine
code were executed at least MIN times in the dump's window.

Usage: hot_code.py DUMP MIN [TOP]

The dump must come from `valgrind --tool=callgrind --dump-instr=yes`, which
records a cost per instruction address. With MIN at half the transactions
counted, one-off work (a connection's start, a once-a-second flush) drops
out and what is left is the code every round trip runs: the instruction
cache lines a proxy evicts from the client's and the backend's when all
three share a core (see bench/README.md, "Hot code"). Prints the line count
and, with TOP, the functions holding the most of them.

Stdlib only. The format read is callgrind's (valgrind docs, "Callgrind
Format Specification"): `positions: instr line` (the default with
--dump-instr=yes), name compression `fn=(id) name`, relative positions
`+N`/`-N`, `*` for "same as before", and after a `calls=` line one line
holding the call's inclusive cost, which is not an execution count.
"""

import collections
import re
import sys

NAME = re.compile(r"(c?fn)=\((\d+)\)(?: (.*))?")
POSITION = re.compile(r"^(0x[0-9a-fA-F]+|[+-]\d+|\*)(?:\s|$)")


def hot_lines(path, min_count):
    """{function name: set of 64-byte code line numbers} for instructions
    executed at least `min_count` times."""
    names = {}
    current = None
    addr = 0
    costs_at = 1  # index of the first cost column on a cost line
    after_call = False
    per_function = collections.defaultdict(set)
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.startswith("positions:"):
                costs_at = len(line.split()) - 1
                continue
            m = NAME.match(line)
            if m:
                if m.group(3):
                    names[m.group(2)] = m.group(3)
                if m.group(1) == "fn":
                    current = names.get(m.group(2), "?")
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            m = POSITION.match(line)
            if not m:
                continue
            a = m.group(1)
            if a.startswith("0x"):
                addr = int(a, 16)
            elif a != "*":
                addr += int(a)
            if after_call:
                after_call = False
                continue
            fields = line.split()
            count = fields[costs_at] if len(fields) > costs_at else "0"
            if count.isdigit() and int(count) >= min_count:
                per_function[current].add(addr >> 6)
    return per_function


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    per_function = hot_lines(sys.argv[1], int(sys.argv[2]))
    every = set().union(*per_function.values()) if per_function else set()
    print(len(every))
    top = int(sys.argv[3]) if len(sys.argv) == 4 else 0
    ranked = sorted(per_function.items(), key=lambda kv: -len(kv[1]))
    for name, lines in ranked[:top]:
        print("%5d  %s" % (len(lines), name[:140]))


if __name__ == "__main__":
    main()
