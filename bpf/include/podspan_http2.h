/* SPDX-License-Identifier: Apache-2.0
 * HTTP/2: HPACK needs every header block and streams interleave within a run, so a connection whose
 * run starts with the client preface (prior knowledge, or after an h2c upgrade) gets every chunk
 * captured (PODSPAN_CONN_HTTP2), a long one as several pieces of PODSPAN_CHUNK_CAPTURE_SIZE bytes.
 */
#ifndef PODSPAN_HTTP2_H
#define PODSPAN_HTTP2_H

#include "podspan_maps.h"

#define PODSPAN_H2_PREFACE_HEAD 0x5448202a20495250ULL /* "PRI * HT" read as a little-endian u64 */

/* A run starting with the client preface marks its connection (and the event announcing the run). */
static __always_inline void detect_http2(struct podspan_conn *conn, struct podspan_data_event *ev)
{
    if (ev->captured >= sizeof(__u64) && *(__u64 *)ev->data == PODSPAN_H2_PREFACE_HEAD) {
        conn->flags |= PODSPAN_CONN_HTTP2;
        ev->hdr.flags = conn->flags;
    }
}

/* Bytes of the chunk's remaining `rest` that this event covers: an HTTP/2 chunk longer than the
 * capture `limit` is cut into pieces, up to PODSPAN_MAX_PIECES per syscall (the last takes the rest). */
static __always_inline __u64 http2_piece(const struct podspan_conn *conn, const struct chunk_job *job, __u64 rest,
                                         __u32 limit)
{
    if ((conn->flags & PODSPAN_CONN_HTTP2) && rest > limit && job->piece + 1 < PODSPAN_MAX_PIECES)
        return limit;
    return rest;
}

#endif /* PODSPAN_HTTP2_H */
