"""Holds memory allocated at a known line, registers its own atexit handler,
and exits when told. Usage: python atexit_hold.py
Prints 'ready PID'; each stdin line: 'grow' adds 1 MiB held at HOLD_LINE and
prints 'grown N'; 'exit' ends the program normally (its atexit handler prints
'atexit ran, N MiB held', after which the interpreter frees everything)."""
import atexit
import os
import sys

held = []


def bye():
    print("atexit ran, %d MiB held" % len(held), flush=True)


atexit.register(bye)
print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    if line.strip() == "grow":
        held.append(bytearray(1 << 20))  # HOLD_LINE
        print("grown %d" % len(held), flush=True)
    elif line.strip() == "exit":
        break
