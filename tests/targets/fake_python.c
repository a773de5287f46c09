/* fake_python.c -- a stand-in for an interpreter memprof does not know: exports the
 * C API symbols the probe reads (Py_GetVersion, Py_Version = PY_VERSION_HEX of
 * 3.16.0a1), is built as `python3.16`, prints "ready" and sleeps. Not a Python. */
#include <stdio.h>
#include <unistd.h>

__attribute__((visibility("default"))) const unsigned long Py_Version = 0x031000a1;

__attribute__((visibility("default"))) const char *Py_GetVersion(void)
{
    return "3.16.0a1 (fake, for memprof's tests)";
}

int main(void)
{
    printf("ready %s\n", Py_GetVersion());
    fflush(stdout);
    for (int i = 0; i < 600; i++) sleep(1);
    return 0;
}
