#!/usr/bin/env python3
"""The crate's module imports: prints the graph, its circles and its upward
imports, and exits 1 if there is a circle or an upward import.

    python3 scripts/imports.py          # check (CI runs this)
    python3 scripts/imports.py --graph  # also print every module's imports

A module is a file under src/ (src/a/b.rs and src/a/b/mod.rs are `a::b`).
An edge A -> B is any `crate::`, `super::` or `self::` path in A's code
(comments, strings and `#[cfg(test)]` modules left out) that names an item
of B. Declaring a child (`mod b;`) and re-exporting from it (`pub use`) are
not edges: they are how a parent shows its children.

Layers, lowest first: a module may use its own layer and those below it,
never one above. Within a layer any order is allowed, but no circle.
"""
import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

# Lowest first. A module belongs to the first entry that equals it or is a
# prefix of it (`backend::candle::cpu` matches `backend::candle::cpu::quant`).
LAYERS = [
    ["error", "json"],
    ["tokenizer", "chat"],
    ["sampling"],
    ["model"],
    ["drafter", "verify", "config"],
    ["output", "stats"],
    ["generator"],
    # The backends sit on the contract. The candle backend, by layer:
    # file formats and block formats, then kernels, then the layers and the
    # forward pass, then the CUDA decoder, then the model type.
    ["backend::static_shape", "backend::conformance"],
    ["backend::candle::load", "backend::candle::quant"],
    ["backend::candle::cpu", "backend::candle::pool"],
    ["backend::candle::layers"],
    ["backend::candle::llama"],
    ["backend::candle::cuda"],
    ["backend::candle", "backend"],
    [""],  # lib.rs
]


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return "::".join(rel)


def code_of(text):
    """The file's code, without comments, strings and test modules."""
    m = re.search(r"#\[cfg\(test\)\]\s*(#\[[^\]]*\]\s*)*mod \w+\s*\{", text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"#\[cfg\(test\)\]\s*mod \w+;", "", text)
    text = re.sub(r'"(\\.|[^"\\\n])*"', '""', text)
    return "\n".join(line.split("//")[0] for line in text.split("\n"))


def resolve(module, path, modules):
    # `module` may name an inline module; paths resolve from it.
    """The module a path (`crate::a::b::Item`, `super::x`) lands in."""
    parts = path.split("::")
    here = module.split("::") if module else []
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    else:
        base = here
        while parts and parts[0] in ("self", "super"):
            if parts[0] == "super":
                base = base[:-1]
            parts = parts[1:]
        rest = parts
    best = "::".join(base)
    for i in range(len(rest)):
        cand = "::".join(base + rest[: i + 1])
        if cand in modules:
            best = cand
        else:
            break
    return best


def layer(module):
    for i, names in enumerate(LAYERS):
        for n in names:
            if module == n or (n and module.startswith(n + "::")):
                return i
    return len(LAYERS) - 1


def main():
    files = []
    for root, _, names in os.walk(SRC):
        files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
    modules = {module_of(f): os.path.basename(f) in ("mod.rs", "lib.rs") for f in files}
    roots = root_names(os.path.join(SRC, "lib.rs"))
    edges = {m: set() for m in modules}
    for f in files:
        m = module_of(f)
        code = code_of(open(f, encoding="utf-8").read())
        for inline, stmt, path in paths(code):
            if stmt == "reexport":
                continue
            here = "::".join(([m] if m else []) + inline)
            add(m, here, path, modules, edges, roots)

    graph = "--graph" in sys.argv
    if graph:
        for m in sorted(edges):
            print(f"{m or 'lib'} -> {', '.join(sorted(x or 'lib' for x in edges[m])) or '-'}")
    circles = [c for c in sccs(edges) if len(c) > 1]
    upward = sorted(
        (a, b) for a in edges for b in edges[a] if layer(b) > layer(a) and not b.startswith(a + "::")
    )
    for c in circles:
        print("circle: " + " <-> ".join(sorted(x or "lib" for x in c)))
    for a, b in upward:
        print(f"upward: {a} -> {b}")
    print(
        f"{len(modules)} modules, {sum(len(v) for v in edges.values())} imports, "
        f"{len(circles)} circles, {len(upward)} upward imports"
    )
    return 1 if circles or upward else 0


def expand(tree):
    """`a::{b, c::{d, e}}` -> a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^([\w:]*?)::\{(.*)\}$", tree)
    if not m:
        return [re.sub(r"\bas\w+$", "", tree)]
    prefix, inner = m.groups()
    out, depth, cur = [], 0, ""
    for ch in inner + ",":
        if ch == "," and depth == 0:
            if cur:
                out += [prefix + "::" + p if p != "self" else prefix for p in expand(cur)]
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    return out


def paths(code):
    """(inline module stack, kind, path) for every `crate::`/`super::`/
    `self::` path in `code`; kind is `reexport` for a `pub use`."""
    out, stack, depth = [], [], 0
    # Split into `use` statements and the rest, in order, tracking braces
    # and inline `mod name {` blocks.
    token = re.compile(
        r"(?P<use>^[ \t]*(?P<pub>pub(\([^)]*\))?\s+)?use\s+(?P<tree>[^;]*);)"
        r"|(?P<mod>\bmod\s+(?P<name>\w+)\s*\{)"
        r"|(?P<path>\b(?:crate|super|self)(?:::\w+)+)"
        r"|(?P<open>\{)|(?P<close>\})",
        re.M,
    )
    for t in token.finditer(code):
        if t.group("use"):
            kind = "reexport" if t.group("pub") else "use"
            for p in expand(t.group("tree")):
                out.append((list(n for n, _ in stack), kind, p))
        elif t.group("mod"):
            depth += 1
            stack.append((t.group("name"), depth))
        elif t.group("path"):
            out.append((list(n for n, _ in stack), "path", t.group("path")))
        elif t.group("open"):
            depth += 1
        elif t.group("close"):
            if stack and stack[-1][1] == depth:
                stack.pop()
            depth -= 1
    return out


def root_names(lib):
    """Names lib.rs re-exports at the crate root -> the module they are from."""
    names = {}
    code = code_of(open(lib, encoding="utf-8").read())
    for stmt in re.finditer(r"^\s*pub\s+use\s+([^;]*);", code, re.M):
        for p in expand(stmt.group(1)):
            parts = p.split("::")
            names[parts[-1]] = "::".join(parts[:-1])
    return names


def add(module, here, path, modules, edges, roots):
    parts = path.split("::")
    if parts[0] not in ("crate", "super", "self"):
        return
    if parts[0] == "crate" and len(parts) == 2 and parts[1] in roots:
        path = "crate::" + roots[parts[1]] + "::" + parts[1]
    target = resolve(here, path, modules)
    if target != module and not target.startswith(module + "::") and target in modules:
        # A child's use of its own ancestors' items counts; a parent's use of
        # its descendants is how it is built, and is always allowed.
        edges[module].add(target)


def sccs(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in edges:
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    sys.exit(main())
