/* fake_python.c -- a stand-in for an interpreter memprof does not know: exports the
 * C API symbols the probe reads (Py_GetVersion, Py_Version = PY_VERSION_HEX of
 * 3.16.0a1), is built as `python3.16`, prints "ready" and sleeps. Not a Python.
 * -DFAKE_HEX=0x030c00f0 -DFAKE_VERSION='"3.12.0"' makes another version (built with
 * musl-gcc as python3.12: a supported Python on a C library memprof must refuse). */
#include <stdio.h>
#include <unistd.h>

#ifndef FAKE_HEX
#define FAKE_HEX 0x031000a1
#define FAKE_VERSION "3.16.0a1"
#endif

__attribute__((visibility("default"))) const unsigned long Py_Version = FAKE_HEX;

__attribute__((visibility("default"))) const char *Py_GetVersion(void)
{
    return FAKE_VERSION " (fake, for memprof's tests)";
}

int main(void)
{
    printf("ready %s\n", Py_GetVersion());
    fflush(stdout);
    for (int i = 0; i < 600; i++) sleep(1);
    return 0;
}
