import signal
import sys

from .cli import main

code = main()
# The work is saved: a Ctrl-C or SIGTERM during the interpreter's teardown ends the process at once
# instead of raising inside exit handlers.
signal.signal(signal.SIGINT, signal.SIG_DFL)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
sys.exit(code)
