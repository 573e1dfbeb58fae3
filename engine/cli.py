"""The `wardwatch` command line.

Each subcommand lives in the module that implements it and is imported only
when it runs, so `wardwatch flows` does not pay for importing the model,
ZeroMQ or matplotlib. Register a command by adding one line to COMMANDS.

Exit codes shared by every command:
  0  success
  1  the run failed (bad input file, unreadable capture, full disk, runtime error)
  2  usage error (unknown option, invalid value), as Click reports it
  3  `alerts show`, `respond undo`: no record with that id
  4  `respond undo --wait-s`: the release is still pending (no responder sent it)
  130  `analyze` stopped by Ctrl-C or SIGTERM after finishing what it had read
"""

import errno
import importlib
import logging
import sqlite3

import click

from engine import __version__

# command name -> (module, attribute of the click.Command in that module)
COMMANDS = {
    "analyze": ("engine.analyze.cli", "analyze_command"),
    "capture-info": ("engine.capture.commands", "capture_info"),
    "alerts": ("engine.alerts.commands", "alerts"),
    "assets": ("engine.assets.cli", "assets_command"),
    "keys": ("engine.alerts.commands", "keys"),
    "collect": ("engine.alerts.commands", "collect"),
    "train": ("engine.detect.cli", "train_command"),
    "logins": ("engine.logins.cli", "logins"),
    "flows": ("engine.flows.cli", "flows_command"),
    "simulate": ("engine.simulate.cli", "simulate_command"),
    "respond": ("engine.respond.cli", "respond"),
    "predict": ("engine.predict.cli", "predict"),
    "run": ("engine.live.cli", "run_command"),
    "report": ("engine.report.cli", "report_command"),
}


class LazyGroup(click.Group):
    """A Click group that imports a subcommand's module on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target
        module = importlib.import_module(module_name)
        return getattr(module, attribute)

    def invoke(self, ctx):
        # Every command opens the store through engine.store.open_store, so
        # an unusable store becomes one error message here, not a traceback.
        from engine.store import StoreError

        try:
            return super().invoke(ctx)
        except StoreError as error:
            raise click.ClickException(str(error)) from error
        except (OSError, sqlite3.Error) as error:
            storage_error = _storage_failure(error)
            if storage_error is None:
                raise
            raise click.ClickException(storage_error) from error


# errno values that mean the disk or file system cannot take the write.
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}


def _storage_failure(error: BaseException) -> str | None:
    """Return an error line if `error` (or an error it was raised from) is a full or failing disk."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            where = f" {seen.filename}" if seen.filename else ""
            return f"cannot write{where}: {seen.strerror}; free space or choose another path, then run again"
        if isinstance(seen, sqlite3.Error):
            text = str(seen)
            if "disk is full" in text or "disk I/O error" in text:
                return (f"the SQLite store failed: {text}; free space or give --store a path on another disk, "
                        "then run again")
        seen = seen.__cause__ or seen.__context__
    return None


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="wardwatch")
@click.option(
    "-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug."
)
def main(verbose):
    """WardWatch: network threat detection for hospital networks."""
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
