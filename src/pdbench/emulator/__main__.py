"""``python -m pdbench.emulator <SGLang launch_server flags>``: one emulated server node."""

import sys

from pdbench.emulator.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
