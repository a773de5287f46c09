/* fuzz_decode.c -- libFuzzer target: arbitrary bytes through the frame reader and decoder every peer
 * uses on a socket (wire_take: the daemon for clients' and agents' messages, the agent for the daemon's,
 * the client library for replies), including the oversize and malformed paths. The first byte sets how
 * the rest arrives (in pieces of 1 to 256 bytes, as a non-blocking reader sees it); what decodes is
 * re-encoded and must decode again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/wire.h"

/* Every frame complete in rb; -1 when the stream is bad (a peer closes the connection). */
static int take_all(struct wire_rbuf *rb)
{
    Envelope *env;
    char err[MP_ERRLEN];
    int t;
    while ((t = wire_take(rb, &env, err)) == 1) {
        uint8_t *buf;
        size_t len;
        (void)wire_name(env);
        if (wire_encode(env, &buf, &len, err) == 0) {
            Envelope *again;
            if (len < WIRE_HDR || wire_decode(buf + WIRE_HDR, len - WIRE_HDR, &again, err) < 0) abort();
            wire_free(again);
            free(buf);
        }
        wire_free(env);
    }
    return t < 0 ? -1 : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct wire_rbuf rb = {0};
    size_t piece, off = 1;
    if (size < 2) return 0;
    piece = (size_t)data[0] + 1;
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        uint8_t *nb = realloc(rb.buf, rb.len + n);
        if (!nb) break;
        rb.buf = nb;
        memcpy(rb.buf + rb.len, data + off, n);
        rb.len += n;
        rb.cap = rb.len;
        off += n;
        if (take_all(&rb) < 0) break;
    }
    wire_rbuf_free(&rb);
    return 0;
}
