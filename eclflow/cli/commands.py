"""Imports every command module so each registers itself on the `cli` group."""

# Each module adds its commands to `eclflow.cli.cli` when imported.
from . import run  # noqa: F401
from . import steps  # noqa: F401
from . import validate  # noqa: F401
from . import logs  # noqa: F401
from . import graph  # noqa: F401
from . import history  # noqa: F401
from . import serve  # noqa: F401
