/* test_wire.c -- unit tests of the framing: round trips, truncated, oversized and garbage input. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proto/wire.h"
#include "tests/unit/check.h"

static void make_status(Envelope *env, Memprof__StatusRequest *st)
{
    memprof__envelope__init(env);
    memprof__status_request__init(st);
    env->msg_case = MEMPROF__ENVELOPE__MSG_STATUS;
    env->status = st;
}

static void test_roundtrip(void)
{
    Envelope env, *out = NULL;
    Memprof__AttachRequest req = MEMPROF__ATTACH_REQUEST__INIT;
    struct wire_rbuf rb = {0};
    char err[MP_ERRLEN];
    uint8_t *buf;
    size_t len;
    memprof__envelope__init(&env);
    req.pid = 4242;
    req.sample_rate = 1 << 19;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ATTACH;
    env.attach = &req;
    CHECK(wire_encode(&env, &buf, &len, err) == 0, "encode attach request");
    /* Feed it one byte at a time: no frame until the last byte. */
    rb.cap = len + 16;
    rb.buf = malloc(rb.cap);
    int early = 0;
    for (size_t i = 0; i < len; i++) {
        rb.buf[rb.len++] = buf[i];
        int t = wire_take(&rb, &out, err);
        if (i + 1 < len && t != 0) early = 1;
        if (i + 1 == len) CHECK(t == 1, "frame complete on its last byte");
    }
    CHECK(!early, "no frame taken from a partial one");
    CHECK(out && out->msg_case == MEMPROF__ENVELOPE__MSG_ATTACH && out->attach->pid == 4242 &&
              out->attach->sample_rate == (1 << 19),
          "fields survive the round trip");
    CHECK(rb.len == 0, "buffer consumed");
    wire_free(out);
    wire_rbuf_free(&rb);
    free(buf);
}

static void test_two_frames_in_one_read(void)
{
    Envelope env, *out = NULL;
    Memprof__StatusRequest st;
    struct wire_rbuf rb = {0};
    char err[MP_ERRLEN];
    uint8_t *buf;
    size_t len;
    make_status(&env, &st);
    wire_encode(&env, &buf, &len, err);
    rb.cap = 2 * len;
    rb.buf = malloc(rb.cap);
    memcpy(rb.buf, buf, len);
    memcpy(rb.buf + len, buf, len);
    rb.len = 2 * len;
    int a = wire_take(&rb, &out, err);
    wire_free(out);
    int b = wire_take(&rb, &out, err);
    wire_free(out);
    int c = wire_take(&rb, &out, err);
    CHECK(a == 1 && b == 1 && c == 0, "two frames back to back are both taken");
    wire_rbuf_free(&rb);
    free(buf);
}

static void test_oversized_header(void)
{
    struct wire_rbuf rb = {0};
    Envelope *out;
    char err[MP_ERRLEN] = "";
    uint8_t hdr[4] = {0xff, 0xff, 0xff, 0x7f};
    rb.cap = 8;
    rb.buf = malloc(rb.cap);
    memcpy(rb.buf, hdr, 4);
    rb.len = 4;
    CHECK(wire_take(&rb, &out, err) == -1, "oversized length refused before allocating");
    CHECK(strstr(err, "limit") != NULL, "oversized error names the limit");
    wire_rbuf_free(&rb);
}

static void test_garbage(void)
{
    struct wire_rbuf rb = {0};
    Envelope *out;
    char err[MP_ERRLEN] = "";
    uint8_t junk[] = {8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    rb.cap = sizeof junk;
    rb.buf = malloc(rb.cap);
    memcpy(rb.buf, junk, sizeof junk);
    rb.len = sizeof junk;
    CHECK(wire_take(&rb, &out, err) == -1 && out == NULL, "garbage payload is a decode error");
    CHECK(strstr(err, "malformed") != NULL, "garbage error says malformed");
    wire_rbuf_free(&rb);

    uint8_t empty[] = {0, 0, 0, 0};
    CHECK(wire_decode(empty + 4, 0, &out, err) == -1, "empty envelope refused");
}

/* Field number 0 spelled in two bytes (0x82 0x00): protobuf-c takes it, but would write it back in one byte
 * (0x02), which it refuses; found by fuzz_decode (tests/fuzz/corpus/decode/crash-field-number-0). Refused
 * at the top level and inside a message the daemon forwards (AgentCall's request). */
static void test_field_zero(void)
{
    Envelope *out = NULL;
    char err[MP_ERRLEN] = "";
    uint8_t top[] = {0x82, 0x00, 0x01, 0x00};
    uint8_t nested[] = {0x72, 0x07, 0x08, 0x01, 0x12, 0x03, 0x82, 0x00, 0x00}; /* agent_call{pid 1, request{<0>: ""}} */
    uint8_t fine[] = {0x72, 0x04, 0x08, 0x01, 0x12, 0x00};               /* agent_call{pid 1, request{}} */
    CHECK(wire_decode(top, sizeof top, &out, err) == -1 && out == NULL && strstr(err, "field number 0"),
          "field number 0 in a two-byte tag refused");
    CHECK(wire_decode(nested, sizeof nested, &out, err) == -1 && out == NULL && strstr(err, "field number 0"),
          "field number 0 in a nested message refused");
    CHECK(wire_decode(fine, sizeof fine, &out, err) == 0 && out && out->agent_call->request, "the same without it decodes");
    wire_free(out);
}

static void test_socket_truncated(void)
{
    int sv[2];
    Envelope env, *out = NULL;
    Memprof__StatusRequest st;
    char err[MP_ERRLEN] = "";
    uint8_t *buf;
    size_t len;
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    make_status(&env, &st);
    CHECK(wire_send(sv[0], &env, 1000, err) == 0, "send over a socket");
    CHECK(wire_recv(sv[1], &out, 1000, err) == 0 && out->msg_case == MEMPROF__ENVELOPE__MSG_STATUS,
          "receive over a socket");
    wire_free(out);
    /* A frame cut short by the peer closing. */
    wire_encode(&env, &buf, &len, err);
    (void)!write(sv[0], buf, len > 4 ? 5 : len);
    close(sv[0]);
    CHECK(wire_recv(sv[1], &out, 1000, err) == -1 && strstr(err, "closed"), "truncated frame: peer closed");
    close(sv[1]);
    free(buf);
    /* A peer that never finishes the frame times out. */
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    uint8_t hdr[4] = {100, 0, 0, 0};
    (void)!write(sv[0], hdr, 4);
    CHECK(wire_recv(sv[1], &out, 200, err) == -1 && strstr(err, "timed out"), "stalled frame times out");
    /* A header announcing too much is refused without reading it. */
    uint8_t big[4] = {0, 0, 0, 0x20};
    close(sv[0]);
    close(sv[1]);
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    (void)!write(sv[0], big, 4);
    CHECK(wire_recv(sv[1], &out, 200, err) == -1 && strstr(err, "limit"), "oversized frame refused on a socket");
    close(sv[0]);
    close(sv[1]);
}

static void test_encode_limit(void)
{
    Envelope env;
    Memprof__ErrorReply e = MEMPROF__ERROR_REPLY__INIT;
    char err[MP_ERRLEN] = "";
    uint8_t *buf = NULL;
    size_t len;
    char *big = malloc(WIRE_MAX_MSG + 10);
    memset(big, 'x', WIRE_MAX_MSG + 9);
    big[WIRE_MAX_MSG + 9] = 0;
    memprof__envelope__init(&env);
    e.message = big;
    env.msg_case = MEMPROF__ENVELOPE__MSG_ERROR;
    env.error = &e;
    CHECK(wire_encode(&env, &buf, &len, err) == -1 && buf == NULL, "encoding over the limit is refused");
    free(big);
}

/* Payloads that protobuf-c would unpack into many times their size are refused before unpack
 * (proto/wire.h's WIRE_DECODE_*); a legitimate report of tiny stacks and a newer peer's few unknown fields
 * still decode. */
static void test_decode_bombs(void)
{
    Envelope *out = (Envelope *)1, env;
    Memprof__AllocReport rep = MEMPROF__ALLOC_REPORT__INIT;
    char err[MP_ERRLEN] = "";
    size_t n = 60000, len;
    uint8_t *p = malloc(6 * n + 16), *buf;
    /* 3-byte unknown fields (field 1000, varint 1): ~25 times their size unpacked */
    for (size_t i = 0; i < n; i++) memcpy(p + 3 * i, "\xc0\x3e\x01", 3);
    CHECK(wire_decode(p, 3 * n, &out, err) == -1 && out == NULL && strstr(err, "unknown fields would take"),
          "a frame of unknown fields is refused before unpack");
    /* alloc_report (17) holding n empty stacks (field 3): ~70 times */
    memcpy(p, "\x8a\x01", 2);
    len = 2 * n;
    p[2] = (uint8_t)(0x80 | (len & 0x7f));
    p[3] = (uint8_t)(0x80 | ((len >> 7) & 0x7f));
    p[4] = (uint8_t)(len >> 14);
    for (size_t i = 0; i < n; i++) memcpy(p + 5 + 2 * i, "\x1a\x00", 2);
    CHECK(wire_decode(p, 5 + len, &out, err) == -1 && out == NULL && strstr(err, "would take"),
          "a frame of empty submessages is refused before unpack");
    /* a real report of 3000 one-frame stacks */
    Memprof__AllocStack *stacks = calloc(3000, sizeof *stacks), **sp = calloc(3000, sizeof *sp);
    uint32_t frame = 7;
    for (int i = 0; i < 3000; i++) {
        memprof__alloc_stack__init(&stacks[i]);
        stacks[i].id = (uint32_t)i + 1;
        stacks[i].n_frames = 1;
        stacks[i].frames = &frame;
        sp[i] = &stacks[i];
    }
    rep.n_stacks = 3000;
    rep.stacks = sp;
    memprof__envelope__init(&env);
    env.msg_case = MEMPROF__ENVELOPE__MSG_ALLOC_REPORT;
    env.alloc_report = &rep;
    CHECK(wire_encode(&env, &buf, &len, err) == 0 && wire_decode(buf + WIRE_HDR, len - WIRE_HDR, &out, err) == 0 &&
              out && out->alloc_report->n_stacks == 3000,
          "a report of 3000 one-frame stacks decodes");
    wire_free(out);
    free(buf);
    /* a newer peer's field in each of them */
    buf = malloc(len + 3 * 3000);
    {
        size_t off = 0;
        uint8_t *q;
        wire_encode(&env, &q, &len, err);
        memcpy(buf, q, len);
        off = len;
        for (int i = 0; i < 3000; i++, off += 3) memcpy(buf + off, "\xc0\x3e\x01", 3); /* top level, for brevity */
        CHECK(wire_decode(buf + WIRE_HDR, off - WIRE_HDR, &out, err) == 0 && out &&
                  out->base.n_unknown_fields == 3000,
              "a few unknown fields per stack decode");
        wire_free(out);
        free(q);
    }
    free(buf);
    free(stacks);
    free(sp);
    free(p);
}

int main(void)
{
    test_roundtrip();
    test_two_frames_in_one_read();
    test_oversized_header();
    test_garbage();
    test_field_zero();
    test_socket_truncated();
    test_encode_limit();
    test_decode_bombs();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
