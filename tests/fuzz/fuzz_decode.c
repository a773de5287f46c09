/* fuzz_decode.c -- libFuzzer target: arbitrary bytes through the daemon's frame
 * reader and decoder (wire_take), including the oversize and malformed paths. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_rbuf rb = {0};
    Envelope *env;
    char err[MP_ERRLEN];
    int t;
    if (size == 0) return 0;
    rb.buf = malloc(size);
    memcpy(rb.buf, data, size);
    rb.len = rb.cap = size;
    while ((t = wire_take(&rb, &env, err)) == 1) {
        (void)wire_name(env);
        /* Re-encode what decoded: it must be within limits and decode again. */
        uint8_t *buf;
        size_t len;
        if (wire_encode(env, &buf, &len, err) == 0) {
            Envelope *again;
            if (wire_decode(buf + WIRE_HDR, len - WIRE_HDR, &again, err) == 0) wire_free(again);
            free(buf);
        }
        wire_free(env);
    }
    wire_rbuf_free(&rb);
    return 0;
}
