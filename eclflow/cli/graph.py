"""`eclflow graph FILE`: draw a workflow as text, Mermaid, DOT, SVG or PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import cli
from ._common import EXIT_USAGE, fail, handle_errors, stdout_console

FORMATS = ("ascii", "mermaid", "dot", "svg", "png")


@cli.command("graph")
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "-f",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="ascii draws in the terminal; mermaid and dot print text; svg and png need "
    "Graphviz's `dot` program. Default: from the -o file's extension, else ascii.",
)
@click.option(
    "-o",
    "--output",
    "out",
    metavar="OUT",
    help="Write the drawing to this file instead of standard output (`-` is standard output).",
)
@handle_errors
def graph_cmd(file: Path, fmt: str | None, out: str | None) -> None:
    """Draw a workflow: its steps, dependencies, conditions and revision loops.

    An invalid workflow prints the same diagnostics as `eclflow validate` (exit code 1).
    """
    if not file.exists():
        fail(f"{file}: no such file", EXIT_USAGE)
    if file.is_dir():  # (as `eclflow run DIR`: a usage error, not an invalid workflow)
        fail(f"{file} is a directory: give one workflow file in it", EXIT_USAGE)
    out_path, fmt = _output(out, fmt)
    if out_path is not None and _same_file(out_path, file):
        fail(f"-o {out} is the workflow file itself: give another file name", EXIT_USAGE)
    _draw(file, fmt, out_path)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and a.samefile(b))
    except (OSError, ValueError):
        return False


# The extensions that say which format a file is in; `-o g.png` without --format draws a PNG.
EXTENSIONS = {
    ".svg": "svg",
    ".png": "png",
    ".dot": "dot",
    ".gv": "dot",
    ".mmd": "mermaid",
    ".mermaid": "mermaid",
    ".txt": "ascii",
}


def _output(out: str | None, fmt: str | None) -> tuple[Path | None, str]:
    """Where to write (None: standard output) and in which format, from -o and --format: the
    format follows the file's extension unless --format says otherwise, and a --format that
    contradicts a known extension is refused rather than writing ASCII into a .png."""
    if out is None or out == "-":
        return None, fmt or "ascii"
    if not out.strip():
        fail("-o needs a file name (or - for standard output)", EXIT_USAGE)
    path = Path(out)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as e:  # (a name longer than the file system takes)
        fail(f"cannot write {out}: {e.strerror or e}", EXIT_USAGE)
    if is_dir:
        fail(f"cannot write {out}: it is a directory; give a file name", EXIT_USAGE)
    implied = EXTENSIONS.get(path.suffix.lower())
    if fmt is None and out in (*FORMATS, "json", "text") and not exists:
        # `-o svg` (or `-o json`, as `status -o json` means a format) would write an ASCII
        # drawing to a file named `svg`
        wanted = f"write -f {out}" if out in FORMATS else f"-f is one of {', '.join(FORMATS)}"
        fail(f"-o names the file to write, not a format: {wanted}", EXIT_USAGE)
    if fmt is None:
        if implied is None and path.suffix.lower() in _IMAGE_LIKE:
            fail(
                f"eclflow cannot draw {path.suffix} files: name it {path.stem}.svg or "
                f"{path.stem}.png, or give --format",
                EXIT_USAGE,
            )
        return path, implied or "ascii"
    if implied is not None and implied != fmt:
        fail(
            f"{out} is named like a {implied} file but --format is {fmt}: "
            f"name it {path.stem}{_extension(fmt)} or drop --format",
            EXIT_USAGE,
        )
    return path, fmt


# Formats a drawing is wanted in that eclflow does not write: an ASCII drawing in a .pdf file
# would be no use (other names, such as `graph` or `g.out`, get ASCII)
_IMAGE_LIKE = frozenset(
    {".jpg", ".jpeg", ".gif", ".pdf", ".webp", ".bmp", ".tif", ".tiff", ".eps", ".ps", ".html"}
)


def _extension(fmt: str) -> str:
    return next(ext for ext, f in EXTENSIONS.items() if f == fmt)


def _draw(file: Path, fmt: str, out: Path | None) -> None:
    from ..graph.plan import compile_plan
    from ..graph.render import render_image, to_ascii, to_dot, to_mermaid
    from ..spec import load

    plan = compile_plan(load(file))
    if fmt in ("svg", "png"):
        if out is None and sys.stdout.isatty():
            fail(f"{fmt} is binary: use -o FILE (or redirect standard output)", EXIT_USAGE)
        data = render_image(to_dot(plan), fmt)
        if out is None:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        else:
            _write(out, data)
        return
    if fmt == "ascii":
        drawing = to_ascii(plan)
        if out is None:
            stdout_console().print(drawing, soft_wrap=True, end="")
        else:
            _write(out, (str(drawing).rstrip("\n") + "\n").encode("utf-8"))
        return
    text = to_mermaid(plan) if fmt == "mermaid" else to_dot(plan)
    if out is None:
        click.echo(text, nl=False)
    else:
        _write(out, text.encode("utf-8"))


def _write(out: Path, data: bytes) -> None:
    try:
        out.write_bytes(data)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}", EXIT_USAGE)
    click.echo(f"wrote {out} ({len(data)} bytes)", err=True)
