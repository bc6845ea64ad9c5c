"""`adfm-appliance`: the line PC's command. Subcommands import their heavy parts lazily."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adfm-appliance",
        description="adfm inspection appliance: run the station service and its tools.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from adfm.camera import probe

    probe.add_arguments(
        sub.add_parser(
            "camera-probe",
            help="open a camera source the way the service would and report what it delivers",
            description=probe.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "camera-probe":
        from adfm.camera import probe

        return probe.run(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
