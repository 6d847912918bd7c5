"""The README's support table, generated from the strategy registry so it cannot drift.

    python docs/support_table.py            # rewrite the table in README.md
    python docs/support_table.py --check    # exit 1 if README.md is out of date (a test runs this)

Needs ComfyUI importable (COMFYUI_PATH or the test environment's copy), as the strategies resolve
ComfyUI's model classes.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- support-table:start (docs/support_table.py) -->", "<!-- support-table:end -->"


def _strategies():
    if "comfyui_magcache" not in sys.modules:
        sys.path.insert(0, str(ROOT / "tests"))
        import conftest  # noqa: F401  - ComfyUI on the path, CPU, the pack imported as comfyui_magcache
    return sys.modules["comfyui_magcache"].strategies


def table() -> str:
    st = _strategies()
    import tiny_zoo
    from test_architectures import TABLE
    rows = ["| architecture | ComfyUI class | cached | MagCache presets | TeaCache presets | without a preset | "
            "tested on ComfyUI |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for s in st.STRATEGIES:
        classes = ", ".join(f"`{c.rsplit('.', 1)[1]}`" for c in s.model_classes) or "any other model"
        if s.model_bases:
            classes += " as " + ", ".join(f"`{b.rsplit('.', 1)[1]}`" for b in s.model_bases)
        level = "blocks" if s.level == "blocks" else "whole model"
        mag = ", ".join(f"`{n}`" for n in s.presets) or "—"
        tea = ", ".join(f"`{n}`" for n in s.tea_presets) or "—"
        if s.name == "generic":
            rest = "fallback: `auto` calibrates its first run"
        elif not s.presets and not s.tea_presets:
            rest = "calibrate-only: `auto` calibrates its first run"
        else:
            rest = "`auto` calibrates its first run"
        entries = [n for n, r in TABLE.items() if r[0] == s.name and n in tiny_zoo._ENTRIES]
        versions = sorted({v for n in entries for v in tiny_zoo.tested_on(n)}, key=lambda v: tuple(map(int, v.split("."))))
        tested = ", ".join(versions) + f" ({len(entries)} tiny model{'s' if len(entries) != 1 else ''})" \
            if entries else "detection only"
        rows.append(f"| {s.title} | {classes} | {level} | {mag} | {tea} | {rest} | {tested} |")
    return "\n".join(rows)


def render(readme: str) -> str:
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    if not rest:
        raise SystemExit(f"README.md has no {START} marker")
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv):
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if "--check" in argv:
        if new != old:
            print("README.md's support table is out of date: run python docs/support_table.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
