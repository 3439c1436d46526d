"""One module per ``nabd`` subcommand; each exposes ``register(subparsers)``."""
