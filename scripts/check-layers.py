#!/usr/bin/env python3
"""Checks that imports between chatd's top-level modules follow the layer
map in src/lib.rs. Reads every `crate::...` (and `super::` reaching the
crate root) path in src/ outside comments and string literals; exits 1 and
lists the offending files when an import goes against a rule or two
top-level modules import each other in a circle.

Usage: python3 scripts/check-layers.py [SRC_DIR]   (default: src)
"""
import os
import re
import sys
from collections import defaultdict

# module -> the top-level modules it must not import.
COMPONENTS = {"app", "chat", "config", "http", "llm", "store", "tools"}
FORBIDDEN = {
    "domain": COMPONENTS | {"wire"},
    "wire": COMPONENTS | {"domain"},
    "store": {"app", "http", "chat", "tools", "llm"},
    "llm": {"app", "http", "chat", "tools", "store"},
    "tools": {"app", "http", "chat", "llm"},
    "config": COMPONENTS - {"config"},
    "http": {"app", "store", "llm"},
    "chat": {"app", "http"},
}


def strip(source):
    """The source without comments, string and char literals."""
    out, i, n = [], 0, len(source)
    while i < n:
        c = source[i]
        if source.startswith("//", i):
            j = source.find("\n", i)
            i = n if j < 0 else j
        elif source.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if source.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif source.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif re.match(r'r#*"', source[i:i + 10]) and (i == 0 or not (source[i - 1].isalnum() or source[i - 1] == "_")):
            hashes = len(re.match(r"r(#*)", source[i:]).group(1))
            end = '"' + "#" * hashes
            j = source.find(end, i + 2 + hashes)
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and source[i] != '"':
                i += 2 if source[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", source[i:i + 4]):
            i = source.index("'", i + 2) + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def targets(code, parents):
    """Names that paths in `code` take from the crate root; `parents` is the
    file's module path (e.g. ["chat", "log"] for src/chat/log.rs), so that
    as many `super::` as its length reach the root."""
    found = set()
    for m in re.finditer(r"\bcrate::(\{[^}]*\}|\w+)", code):
        part = m.group(1)
        names = re.findall(r"(\w+)\s*(?:::|,|\}|$| as )", part.strip("{}") + ",") if part.startswith("{") else [part]
        found.update(names)
    for m in re.finditer(r"\b((?:super::)+)(\w+)", code):
        ups = m.group(1).count("super::")
        if ups == len(parents):
            found.add(m.group(2))
    return found


def module_path(rel):
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    graph = defaultdict(lambda: defaultdict(set))
    with open(os.path.join(src, "lib.rs"), encoding="utf-8") as f:
        tops = set(re.findall(r"^\s*pub(?:\([^)]*\))? mod (\w+);", strip(f.read()), re.M))
    for dirpath, _, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        if rel_dir.split(os.sep)[0] == "bin":
            continue
        for name in filenames:
            if not name.endswith(".rs"):
                continue
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel in ("lib.rs", "main.rs"):
                continue
            path = module_path(rel)
            top = path[0]
            with open(os.path.join(src, rel), encoding="utf-8") as f:
                code = strip(f.read())
            for target in targets(code, path):
                if target != top and target in tops:
                    graph[top][target].add(rel)
    failures = []
    for module, banned in FORBIDDEN.items():
        for target in sorted(banned & set(graph[module])):
            files = ", ".join(sorted(graph[module][target]))
            failures.append(f"{module} must not import {target} (in {files})")
    # Circles between top-level modules.
    def reaches(start, goal, seen):
        for nxt in graph[start]:
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    for a in sorted(graph):
        for b in sorted(graph[a]):
            if a < b and reaches(b, a, {b}):
                failures.append(f"{a} and {b} import each other in a circle ({a} -> {b} -> ... -> {a})")
    for module in sorted(graph):
        print(f"{module} -> {', '.join(sorted(graph[module])) or '(nothing)'}")
    if failures:
        print("\nlayering check failed:")
        for f in failures:
            print("  " + f)
        return 1
    print("\nlayering check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
