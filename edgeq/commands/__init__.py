"""One module per ``edgeq`` subcommand; each has ``register(subparsers)`` that adds its parser
and sets ``func``. A new subcommand is one new module and one entry in ``COMMANDS``."""

COMMANDS = ["demo", "compile", "inspect", "export", "optimize", "device", "validate", "profile", "quantize", "tune", "targets", "generate", "run"]
