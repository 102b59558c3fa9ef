/*
 * statetune_client.h - the small C library that talks to a statetune
 * coordinator (docs/protocol.md): the `statetune` command line, the worker
 * groups' rank 0 and inference programs all link it.
 *
 * An inference program fetches a tuned state in a few lines:
 *
 *     char err[ST_ERR_LEN];
 *     statetune_client_t *c = statetune_client_new("tcp://10.0.0.5:5555", NULL, err);
 *     statetune_state_t st;
 *     if (c && statetune_client_get_state(c, "support-style@latest", &st, err) == ST_OK) {
 *         ... st.data is [layers, heads, head_size, head_size] fp32, official layout ...
 *         ... e.g. rwkv_rnn_t *rnn = rwkv_rnn_new(model, st.data, err) (engine/engine.h), and for a
 *         kernel-expanded state (st.kstate != NULL) its term too:
 *             size_t n = (size_t)st.layers * st.heads * st.head_size * st.kernel_features;
 *             engine_kstate_t ks = {st.kernel_features, st.kernel_gamma, st.kstate, st.kstate + n};
 *             rwkv_rnn_set_kstate(rnn, &ks, err);
 *         statetune_state_free(&st);
 *     }
 *     statetune_client_destroy(&c);
 *
 * With CURVE (every deployment but local tests) pass key files in opts, or set
 * STATETUNE_CURVE_PUBLIC, STATETUNE_CURVE_SECRET and STATETUNE_SERVER_KEY.
 *
 * A client is one DEALER socket; it is not thread-safe (one per thread).
 */
#ifndef STATETUNE_CLIENT_H
#define STATETUNE_CLIENT_H

#include "common/st_err.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* ---- protocol constants (docs/protocol.md) ---- */
#define ST_PROTO_VERSION 1
#define ST_PROTO_MAX_JSON (1u << 20)         /* one JSON frame */
#define ST_PROTO_MAX_PAYLOAD (64u << 20)     /* one binary frame (a state) */
#define ST_PROTO_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define ST_PROTO_HEARTBEAT_MS 1000           /* heartbeat interval, both ways */
#define ST_PROTO_LIVENESS 3                  /* intervals missed before a peer is lost */
#define ST_CURVE_KEY_LEN 40                  /* Z85 text of a 32-byte key */

typedef struct {
    const char *curve_public; /* file with our public key (Z85), or NULL: derived from the secret */
    const char *curve_secret; /* file with our secret key (Z85); NULL with no env = plain mode */
    const char *server_key;   /* file with the coordinator's public key (Z85) */
    const char *identity;     /* DEALER routing id, or NULL for a random one */
} statetune_client_opts_t;

typedef struct statetune_client statetune_client_t;

/* Connects a DEALER to endpoint (NULL = $STATETUNE_ENDPOINT or the default).
 * NULL fields of opts (or opts NULL) fall back to the STATETUNE_CURVE_* env
 * variables; with no secret key at all the connection is plain. Connecting
 * never blocks: an unreachable coordinator shows as a request timeout.
 * Returns NULL and fills err on failure (bad key file, bad endpoint). */
statetune_client_t *statetune_client_new(const char *endpoint, const statetune_client_opts_t *opts, char *err);
void statetune_client_destroy(statetune_client_t **self_p);

/* The endpoint this client connected to (borrowed). */
const char *statetune_client_endpoint(const statetune_client_t *self);

/* Sends req (fields "v" and "rid" are set on it) with an optional payload and
 * waits up to timeout_ms for the reply with the same rid; other messages
 * arriving meanwhile are dropped. On an "ok" reply returns ST_OK with *reply
 * (caller decrefs) and the payload, if any, in *payload (caller frees; may be
 * NULL when not wanted). An "error" reply returns its code with its sentence
 * in err; a timeout returns ST_ENET with a sentence that says so. */
int statetune_client_request(statetune_client_t *self, json_t *req, const void *payload, size_t payload_len,
                             int timeout_ms, json_t **reply, void **payload_out, size_t *payload_len_out, char *err);

/* Sends a notification (no rid, no reply). Never blocks: ST_EBUSY when the
 * queue to an absent coordinator is full (the message is not sent). */
int statetune_client_send(statetune_client_t *self, json_t *msg, const void *payload, size_t payload_len, char *err);

/* Receives any one message within timeout_ms. ST_OK with *msg (caller
 * decrefs) and optional payload; ST_EBUSY on timeout (nothing received);
 * ST_EFORMAT for a malformed message (dropped). */
int statetune_client_recv(statetune_client_t *self, int timeout_ms, json_t **msg, void **payload_out,
                          size_t *payload_len_out, char *err);

/* The underlying ZeroMQ socket, for zmq_poll (borrowed). */
void *statetune_client_socket(statetune_client_t *self);

/* ---- fetching a state ---- */
typedef struct {
    char name[128];
    int version;
    int layers, heads, head_size;
    float *data;    /* [layers, heads, head_size, head_size], owned */
    size_t n_floats;
    char sha256[65];
    int kernel_features; /* M > 0: the state has a kernel-expanded part (SPEC section 4) */
    float kernel_gamma;  /* its RBF width, when kstate is set */
    const float *kstate; /* U0 (layers, heads, head_size, M) then the support vectors
                          * (layers, heads, M, head_size), inside data's allocation;
                          * NULL when the state has none or the registry never stored it.
                          * Hand {M, gamma, U0, support} to rwkv_rnn_set_kstate to run it. */
} statetune_state_t;

/* Fetches NAME, NAME@VERSION or NAME@ALIAS (timeout 30 s), with its
 * kernel-expanded part when it has one. */
int statetune_client_get_state(statetune_client_t *self, const char *ref, statetune_state_t *out, char *err);
void statetune_state_free(statetune_state_t *st);

/* ---- maps between st_err codes and the protocol's short names ---- */
const char *statetune_code_name(int code);
int statetune_code_from_name(const char *name);

/* ---- CURVE key files ---- */

/* Reads a Z85 key file (40 characters, optional trailing newline) into
 * z85_out[41]. Refuses anything else with a sentence naming the file. */
int statetune_key_read(const char *path, char z85_out[ST_CURVE_KEY_LEN + 1], char *err);

/* Makes a key pair and writes PREFIX.key (secret, mode 0600) and PREFIX.pub. */
int statetune_keys_generate(const char *prefix, char *err);

#endif
