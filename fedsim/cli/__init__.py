"""The `fedsim` command: `main` parses arguments and calls one public function per subcommand."""

from fedsim.cli.app import main

__all__ = ["main"]
