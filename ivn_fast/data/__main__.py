"""``python -m ivn_fast.data check LIST [--workers N] [--json OUT]``: see ivn_fast.data.check."""

import sys

from ivn_fast.data.check import main

COMMANDS = {"check": main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(f"usage: python -m ivn_fast.data {{{','.join(COMMANDS)}}} ...  (-h after a command for its options)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
