"""`dvc plots show` / `dvc plots diff` without a network: DVC's `--json` output (Vega-Lite specs
with their data inlined) rendered to SVG and PNG by vl-convert, which embeds Vega, and an
index.html that inlines the SVGs. DVC's own page loads Vega from a CDN, so it is blank offline.

    python -m distillrec plots show [--out DIR]
    python -m distillrec plots diff [REV ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import vl_convert

from distillrec.errors import DistillrecError
from distillrec.io import atomic_dir

OUT = Path("dvc_plots_offline")
MARK = '<meta name="generator" content="distillrec.plots">'  # a folder `render` may replace


def dvc_plots(command: list[str]) -> dict[str, Any]:
    """`dvc plots <command> --json`, parsed: {"data": {plot id: [entry]}, "errors": [...]}."""
    done = subprocess.run([sys.executable, "-m", "dvc", "plots", *command, "--json"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise DistillrecError(f"dvc plots {' '.join(command)} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def svg(spec: dict[str, Any]) -> str:
    """No base URL allowed: a spec that would fetch data fails instead of reaching the network."""
    return vl_convert.vegalite_to_svg(spec, allowed_base_urls=[])


def png(spec: dict[str, Any]) -> bytes:
    return vl_convert.vegalite_to_png(spec, scale=2, allowed_base_urls=[])


def _slug(plot_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plot_id).strip("_.") or "plot"


def render(result: dict[str, Any], out: Path, heading: str) -> Path:
    """Replace `out` with <plot>.svg, <plot>.png and index.html; returns index.html. Only vega
    entries are drawn (DVC's image plots are files already)."""
    index = out / "index.html"
    ours = out.is_dir() and (not any(out.iterdir()) or index.is_file() and MARK in index.read_text(encoding="utf-8"))
    if out.exists() and not ours:
        raise DistillrecError(f"{out} is not a folder this command wrote: choose another --out")
    sections, taken = [], set()
    with atomic_dir(out) as tmp:
        for plot_id, entries in result.get("data", {}).items():
            for entry in (e for e in entries if e.get("type") == "vega"):
                name = _slug(plot_id)
                while name in taken:
                    name += "_"
                taken.add(name)
                picture = svg(entry["content"])
                (tmp / f"{name}.svg").write_text(picture, encoding="utf-8")
                (tmp / f"{name}.png").write_bytes(png(entry["content"]))
                revs = ", ".join(entry.get("revisions", []))
                sections.append(f'<section><h2>{html.escape(plot_id)}</h2><p>{html.escape(revs)} · '
                                f'<a href="{name}.svg">SVG</a> · <a href="{name}.png">PNG</a></p>'
                                f"{picture}</section>")
        errors = [f"<li>{html.escape(json.dumps(e))}</li>" for e in result.get("errors", [])]
        if errors:
            sections.append(f"<section><h2>DVC errors</h2><ul>{''.join(errors)}</ul></section>")
        (tmp / "index.html").write_text(
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{MARK}<title>DVC plots</title><style>'
            "body{font-family:sans-serif;margin:1em 2em}section{margin-bottom:2em}"
            "section>svg{width:100%;max-width:900px;height:auto}"
            "</style></head><body>"
            f"<h1>{html.escape(heading)}</h1>{''.join(sections) or '<p>No plots.</p>'}</body></html>\n",
            encoding="utf-8")
    return index


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distillrec plots",
                                     description="DVC plots as SVG/PNG and an index.html that opens offline")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=OUT, help=f"output folder (default {OUT}/)")
    which = parser.add_subparsers(dest="which", required=True)
    which.add_parser("show", parents=[common], help="dvc plots show: the workspace")
    diff = which.add_parser("diff", parents=[common],
                            help="dvc plots diff: revisions or experiments (none: HEAD vs workspace)")
    diff.add_argument("revs", nargs="*")
    args = parser.parse_args(argv)
    command = ["show"] if args.which == "show" else ["diff", *args.revs]
    try:
        result = dvc_plots(command)
        index = render(result, args.out, "dvc plots " + " ".join(command))
    except DistillrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if result.get("errors"):
        print(f"{len(result['errors'])} DVC error(s), listed in {index}", file=sys.stderr)
    print(index.resolve().as_uri())


if __name__ == "__main__":
    main()
