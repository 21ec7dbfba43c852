#!/usr/bin/env python3
"""Checks that the files of proxy/src import each other the way docs/architecture.md says.

docs/architecture.md holds a fenced block tagged `layers`: one line per layer, lowest first,
each a list of files or globs relative to proxy/src. Every file must be in exactly one layer
(a file named exactly is placed there, whatever globs elsewhere match it),
and a file may use only files of its own layer or of the layers below. The check also refuses
import circles, within a layer too.

Imports are the paths a file names in code (comments, strings and `#[cfg(test)]` modules left
out): `crate::a::b`, `super::x`, `self::y`, and a child module's name (`child::item`); each
resolves to the longest module prefix that is a file. A parent declaring its children with
`mod` is not an import.

Usage: check_layers.py [SRC_DIR [ARCHITECTURE_MD]]; exits 1 and says why when the tree breaks
the layering.
"""
import fnmatch
import re
import sys
from pathlib import Path


def strip_code(text):
    """The text with comments, string and char literals blanked out (lines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
        elif (m := re.match(r'b?r(#*)"', text[i:])) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find('"' + m.group(1), i + m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append("\n" * text.count("\n", i, end) + '""')
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j) + '""')
            i = j + 1
        elif c == "'" and (m := re.match(r"'(\\.[^']*|[^\\'])'", text[i:])):
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_test_modules(code):
    """Drops `#[cfg(test)] mod name { ... }` blocks: tests may use anything."""
    while m := re.search(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", code):
        depth, j = 1, m.end()
        while j < len(code) and depth:
            depth += {"{": 1, "}": -1}.get(code[j], 0)
            j += 1
        code = code[: m.start()] + code[j:]
    return code


def use_paths(tree, prefix=()):
    """Expands a `use` tree (`a::{b, c::{d as e}}`) into its paths."""
    tree = tree.strip()
    depth, start, parts = 0, 0, []
    if tree.startswith("{") and tree.endswith("}"):
        for k, ch in enumerate(tree[1:-1]):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(tree[1 + start : 1 + k])
                start = k + 1
        parts.append(tree[1 + start : -1])
        return [p for part in parts if part.strip() for p in use_paths(part, prefix)]
    if "::{" in tree:
        head, rest = tree.split("::{", 1)
        return use_paths("{" + rest, prefix + tuple(head.split("::")))
    path = tree.split(" as ")[0].strip()
    segments = tuple(s for s in path.split("::") if s)
    return [prefix + segments]


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = sorted(src.rglob("*.rs"))
        self.modules = {self.module_of(f): f for f in self.files}

    def module_of(self, file):
        parts = list(file.relative_to(self.src).with_suffix("").parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts.pop()
        return tuple(parts)

    def children(self, module):
        return {m[-1] for m in self.modules if len(m) == len(module) + 1 and m[: len(module)] == module}

    def resolve(self, path):
        while path and path not in self.modules:
            path = path[:-1]
        return self.modules.get(path)

    def imports(self, file):
        """The files `file` uses."""
        module = self.module_of(file)
        code = strip_test_modules(strip_code(file.read_text()))
        children = self.children(module)
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            paths.extend(use_paths(re.sub(r"\s+", " ", m.group(1))))
        for m in re.finditer(r"(?<![\w$:])(\w+)((?:::\w+)+)", code):
            paths.append((m.group(1),) + tuple(s for s in m.group(2).split("::") if s))
        used = set()
        for path in paths:
            head, rest = path[0], path[1:]
            if head == "crate":
                target = rest
            elif head in ("self", "super"):
                base = module
                while path and path[0] in ("self", "super"):
                    if path[0] == "super":
                        base = base[:-1]
                    path = path[1:]
                target = base + path
            elif head in children:
                target = module + path
            else:
                continue
            found = self.resolve(target)
            if found and found != file:
                used.add(found)
        return used


def read_layers(architecture):
    text = architecture.read_text()
    m = re.search(r"```layers\n(.*?)```", text, re.S)
    if not m:
        sys.exit(f"{architecture}: no ```layers block")
    layers = []
    for line in m.group(1).splitlines():
        line = line.split("#")[0].strip()
        if line:
            layers.append(line.split())
    return layers


def layer_of(crate, layers, file):
    """The layers naming `file`: by its exact path if any does, else by a glob."""
    rel = file.relative_to(crate.src).as_posix()
    exact = {i for i, names in enumerate(layers) if rel in names}
    if exact:
        return sorted(exact)
    return sorted({i for i, names in enumerate(layers) for g in names if fnmatch.fnmatchcase(rel, g)})


def circles(graph):
    """Strongly connected sets of more than one file (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main():
    root = Path(__file__).resolve().parent.parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "proxy/src"
    architecture = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "docs/architecture.md"
    crate = Crate(src)
    layers = read_layers(architecture)
    problems = []
    layer = {}
    for file in crate.files:
        rel = file.relative_to(src).as_posix()
        found = layer_of(crate, layers, file)
        if len(found) != 1:
            where = "no layer" if not found else f"layers {', '.join(str(i + 1) for i in found)}"
            problems.append(f"{rel}: in {where} of {architecture.name}; every file is in exactly one")
        else:
            layer[file] = found[0]
    graph = {file: crate.imports(file) for file in crate.files}
    for file, used in graph.items():
        for target in sorted(used):
            if file in layer and target in layer and layer[target] > layer[file]:
                problems.append(
                    f"{file.relative_to(src)} (layer {layer[file] + 1}) uses "
                    f"{target.relative_to(src)} (layer {layer[target] + 1}), a higher layer"
                )
    for component in circles(graph):
        names = ", ".join(sorted(str(f.relative_to(src)) for f in component))
        problems.append(f"import circle: {names}")
    for problem in problems:
        print(problem)
    print(f"{len(crate.files)} files in {len(layers)} layers: {len(problems)} problems")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
