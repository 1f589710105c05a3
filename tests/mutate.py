"""Random edits of a YAML file, the kind a person or a bad merge makes: for the tests that
check the fast reader never accepts what PyYAML reads otherwise."""
from __future__ import annotations

import random

SPECIALS = list(" -:#'\"\n\t{}[]&*!|>%@`?,~=<") + ["  ", "- ", ": ", "\n  ", "\n- ",
                                                    "- - ", "<<: ", "yes", "1_0"]


def _outdent(line: str) -> str:
    return line[2:] if line.startswith("  ") else line.lstrip("- ")


def edit(rng: random.Random, s: str, specials: list[str] = SPECIALS) -> str:
    """One edit: insert a special string, delete a character, repeat a line, indent one, or
    take a level of indentation (or a list dash) off one."""
    pos = rng.randrange(len(s) + 1)
    op = rng.randrange(5)
    if op == 0:
        return s[:pos] + rng.choice(specials) + s[pos:]
    if op == 1:
        return s[:pos] + s[pos + 1:]
    lines = s.split("\n")
    i = rng.randrange(len(lines))
    if op == 2:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif op == 3:
        lines[i] = "  " + lines[i]
    else:
        lines[i] = _outdent(lines[i])
    return "\n".join(lines)
