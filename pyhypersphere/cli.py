"""Command line: `pyhypersphere {info,demo,train,bench,sweep} ...` (also `python -m pyhypersphere`)."""

import argparse
import importlib
import json
import sys

# subcommand -> (module with add_arguments(parser) and main(args), help).  Modules are
# imported only when their subcommand runs, so one missing optional dependency does
# not break the others.
SUBCOMMANDS = {
    "info": ("pyhypersphere.cli", "how the extension was built (CUDA, arch list, torch, threads)"),
    "demo": ("pyhypersphere.demo", "the fused loss next to the reference: values, time, memory"),
    "train": ("pyhypersphere.train.cli", "train an encoder with align+uniform (or InfoNCE)"),
    "bench": ("pyhypersphere.bench.cli", "benchmark the fused loss against peers and the roofline"),
    "sweep": ("pyhypersphere.sweep.cli", "train many encoders over a grid of settings; scatter, CSV, correlations"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:  # `info`'s arguments
    parser.add_argument("--json", action="store_true", help="print the build info as one JSON object")


def _inline(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def format_info(info: dict) -> str:
    """`key: value` lines; a multi-line value (torch's parallel info) indented below its key."""
    width = max(len(k) for k in info) + 1
    lines = []
    for key, value in info.items():
        if isinstance(value, dict):  # e.g. implementations: one `name: value` line per entry
            lines.append(f"{key}:")
            lines.extend(f"    {name}: {_inline(entry)}" for name, entry in value.items())
            continue
        text = str(value).strip()
        if "\n" in text:
            lines.append(f"{key}:")
            lines.extend("    " + line.replace("\t", "    ").rstrip() for line in text.splitlines())
        else:
            lines.append(f"{key + ':':<{width}} {text}")
    return "\n".join(lines)


def main_info(args) -> int:
    import pyhypersphere

    try:
        info = pyhypersphere.build_info()
    except ValueError as e:  # e.g. a misspelled PYHYPERSPHERE_CPU_ISA / PYHYPERSPHERE_CPU_GEMM
        print(f"pyhypersphere info: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="pyhypersphere", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(run=main_info if name == "info" else module.main)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
