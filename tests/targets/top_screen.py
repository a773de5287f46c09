"""For memprof top's screen test: a line that allocates and frees ~1 MiB at a time (it holds nothing, so OWN LIVE
is 0 but ALLOC/S is not) under 30 callers whose every figure is zero, and a module-level line that holds a little.
The callers' lines sort before the churning line's by name: only the figures can put it first."""
import os
import sys
import time

held = [bytearray(64 << 10) for _ in range(16)]


def c00(): churn()
def c01(): c00()
def c02(): c01()
def c03(): c02()
def c04(): c03()
def c05(): c04()
def c06(): c05()
def c07(): c06()
def c08(): c07()
def c09(): c08()
def c10(): c09()
def c11(): c10()
def c12(): c11()
def c13(): c12()
def c14(): c13()
def c15(): c14()
def c16(): c15()
def c17(): c16()
def c18(): c17()
def c19(): c18()
def c20(): c19()
def c21(): c20()
def c22(): c21()
def c23(): c22()
def c24(): c23()
def c25(): c24()
def c26(): c25()
def c27(): c26()
def c28(): c27()
def c29(): c28()


def churn():
    sys.stdout.write("ready %d\n" % os.getpid())
    sys.stdout.flush()
    while True:
        for _ in range(2):
            b = bytearray(1 << 20)  # CHURN_LINE
            del b
        time.sleep(0.05)


c29()
