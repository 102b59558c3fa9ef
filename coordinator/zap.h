/*
 * zap.h - the coordinator's ZAP handler (RFC 27): a thread on
 * inproc://zeromq.zap.01 that lets a CURVE peer in only when its public key
 * is one of the *.pub files of the allow directory (SPEC section 6). The
 * directory is read again for every connection, so adding or removing a key
 * file takes effect without a restart. Each refusal is logged with the key.
 */
#ifndef ST_COORD_ZAP_H
#define ST_COORD_ZAP_H

#include <stdio.h>

typedef struct zap zap_t;

/* Binds the ZAP endpoint on ctx and starts the thread. log may be NULL
 * (stderr). Returns NULL and fills err on failure. */
zap_t *zap_new(void *ctx, const char *allow_dir, FILE *log, char *err);

/* Stops the thread and closes its socket. Accepts NULL. */
void zap_destroy(zap_t **self_p);

#endif
