#!/usr/bin/env python3
"""Checks the shape of the Rust sources that issue 15 set as rules, so they
cannot drift back:

- no source file outside tests passes 400 lines;
- no function outside tests passes 60 lines;
- no module imports one that imports it back: files of different families
  never import each other, and no family imports one that imports it back
  (within a family a `mod.rs` and its members may share types, as ordinary
  Rust does).

Reads `use crate::…` / `super::…` paths; prints what breaks a rule and
exits 1, else prints a one-line summary. Run by tests/run.sh.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRATES = {"filter": ROOT / "filter" / "src", "plugin-config": ROOT / "plugin-config" / "src"}
MAX_FILE_LINES = 400
MAX_FN_LINES = 60


def is_test_file(path):
    return path.name == "tests.rs" or "tests" in path.parts or path.name in ("mock.rs", "testkeys.rs")


def code_lines(text):
    """The lines before a trailing `#[cfg(test)] mod tests { … }` block."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]") and i + 1 < len(lines) and lines[i + 1].startswith("mod tests {"):
            return lines[:i]
    return lines


def functions(lines):
    """(name, first line, length) of every fn, by brace depth."""
    out = []
    fn_re = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")
    i = 0
    while i < len(lines):
        m = fn_re.match(lines[i])
        if not m:
            i += 1
            continue
        depth, started, j = 0, False, i
        while j < len(lines):
            code = re.sub(r'"(\\.|[^"\\])*"', '""', lines[j].split("//")[0])
            depth += code.count("{") - code.count("}")
            if "{" in code:
                started = True
            if started and depth <= 0:
                break
            if not started and code.rstrip().endswith(";"):
                break  # a declaration without a body
            j += 1
        if started:
            out.append((m.group(6), i + 1, j - i + 1))
        i += 1
    return out


def module_of(src, path):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def resolve(src, parts):
    """The file that defines module path `parts` (longest existing prefix)."""
    for n in range(len(parts), 0, -1):
        base = src.joinpath(*parts[:n])
        for cand in (base.with_suffix(".rs"), base / "mod.rs"):
            if cand.exists():
                return cand
    return src / "lib.rs"


def imports(src, path, text):
    me = module_of(src, path)
    found = set()
    for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
        segs = m.group(2).strip(":").split("::")
        if m.group(1) == "crate":
            parts = segs
        else:
            up = me[:-1] if path.name != "mod.rs" else me[:-1]
            parts = up + segs
        target = resolve(src, parts)
        if target != path:
            found.add(target)
    return found


def family(src, path):
    rel = path.relative_to(src)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def main():
    problems = []
    files = 0
    for crate, src in CRATES.items():
        graph = {}
        for path in sorted(src.rglob("*.rs")):
            text = path.read_text()
            lines = code_lines(text)
            if is_test_file(path):
                continue
            files += 1
            if len(lines) > MAX_FILE_LINES:
                problems.append(f"{path.relative_to(ROOT)}: {len(lines)} lines outside tests (max {MAX_FILE_LINES})")
            for name, line, length in functions(lines):
                if length > MAX_FN_LINES:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: fn {name} is {length} lines (max {MAX_FN_LINES})")
            graph[path] = imports(src, path, "\n".join(lines))
        for a, targets in graph.items():
            for b in targets:
                if a in graph.get(b, ()) and str(a) < str(b):
                    same = family(src, a) == family(src, b)
                    if not same:
                        problems.append(
                            f"{a.relative_to(ROOT)} and {b.relative_to(ROOT)} import each other across families"
                        )
        fam = {}
        for a, targets in graph.items():
            for b in targets:
                fa, fb = family(src, a), family(src, b)
                if fa != fb and "lib" not in (fa, fb):
                    fam.setdefault(fa, {}).setdefault(fb, (a, b))
        for fa, outs in fam.items():
            for fb, (a, b) in outs.items():
                if fa < fb and fa in fam.get(fb, {}):
                    a2, b2 = fam[fb][fa]
                    problems.append(
                        f"{crate}: families {fa}/ and {fb}/ import each other "
                        f"({a.relative_to(src)} -> {b.relative_to(src)}, {a2.relative_to(src)} -> {b2.relative_to(src)})"
                    )
    if problems:
        print("\n".join(problems))
        return 1
    print(f"structure: {files} source files within {MAX_FILE_LINES} lines, functions within {MAX_FN_LINES}, "
          "no import cycles across families")
    return 0


if __name__ == "__main__":
    sys.exit(main())
