"""Command line entry point: ``hopchain <subcommand>``."""


def main() -> None: ...
