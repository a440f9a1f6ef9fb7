"""One module per `podstream` subcommand; see podstream/cli.py for the contract."""
