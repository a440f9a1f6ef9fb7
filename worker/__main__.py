"""`python -m worker`: see worker/cli.py."""

from worker.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
