"""One module per ``nabd-gateway`` subcommand group; each exposes ``register(subparsers)``."""
