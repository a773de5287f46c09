"""Who holds x? A list referred to by exactly four objects (y, [x], {'a': x}, the globals): the backrefs target."""
# Prints 'ready PID x=0xADDRESS' (id(x)), then idles.
import os
import time

x = [1]
y = [x, [x], {"a": x}]

print("ready %d x=%s" % (os.getpid(), hex(id(x))), flush=True)
while True:
    time.sleep(1)
