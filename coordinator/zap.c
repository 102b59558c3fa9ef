/*
 * zap.c - the ZAP handler thread (see zap.h).
 *
 * libzmq asks the handler about every CURVE handshake with a request of
 * frames [version "1.0", request id, domain, address, routing id, mechanism,
 * 32-byte client public key] and waits for [version, request id, status
 * "200" | "400", status text, user id, metadata]. The handler socket is owned
 * by the thread alone (ZeroMQ sockets are not thread-safe); the main thread
 * only sets the stop flag.
 */
#include "coordinator/zap.h"
#include "common/st_log.h"

#include "client/statetune_client.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_POLL_MS 200
#define ZAP_FRAMES 7

struct zap {
    void *sock;            /* REP bound to the ZAP endpoint, used by the thread only */
    char *allow_dir;       /* directory of allowed *.pub files */
    FILE *log;             /* borrowed */
    pthread_t thread;      /* the handler */
    int started;           /* thread is running */
    atomic_int stop;       /* set by zap_destroy */
};

/* Whether z85 (a client's public key) is in one of the *.pub files. */
static int s_allowed(zap_t *self, const char *z85, char *who, size_t who_len)
{
    DIR *d = opendir(self->allow_dir);
    if (!d) return 0;
    struct dirent *e;
    int ok = 0;
    while (!ok && (e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".pub") != 0) continue;
        char path[4096], key[ST_CURVE_KEY_LEN + 1], err[ST_ERR_LEN];
        snprintf(path, sizeof path, "%s/%s", self->allow_dir, e->d_name);
        if (statetune_key_read(path, key, err) != ST_OK) continue; /* a bad file allows nobody */
        if (!strcmp(key, z85)) {
            ok = 1;
            snprintf(who, who_len, "%s", e->d_name);
        }
    }
    closedir(d);
    return ok;
}

static void s_log(zap_t *self, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void s_log(zap_t *self, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    st_logv(self->log, "coordinator", fmt, ap);
    va_end(ap);
}

static void s_handle(zap_t *self)
{
    zmq_msg_t f[ZAP_FRAMES];
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, self->sock, 0) < 0) {
            zmq_msg_close(&m);
            break;
        }
        more = zmq_msg_more(&m);
        if (n < ZAP_FRAMES)
            f[n++] = m;
        else
            zmq_msg_close(&m);
    }
    char reqid[256] = "", addr[128] = "", mech[32] = "", z85[ST_CURVE_KEY_LEN + 1] = "";
    size_t reqid_len = 0;
    if (n >= 2) {
        reqid_len = zmq_msg_size(&f[1]) < sizeof reqid ? zmq_msg_size(&f[1]) : sizeof reqid;
        memcpy(reqid, zmq_msg_data(&f[1]), reqid_len);
    }
    if (n >= 4) snprintf(addr, sizeof addr, "%.*s", (int)zmq_msg_size(&f[3]), (const char *)zmq_msg_data(&f[3]));
    if (n >= 6) snprintf(mech, sizeof mech, "%.*s", (int)zmq_msg_size(&f[5]), (const char *)zmq_msg_data(&f[5]));
    int ok = 0;
    char who[256] = "";
    if (n == ZAP_FRAMES && !strcmp(mech, "CURVE") && zmq_msg_size(&f[6]) == 32) {
        zmq_z85_encode(z85, zmq_msg_data(&f[6]), 32);
        ok = s_allowed(self, z85, who, sizeof who);
    }
    if (ok)
        s_log(self, "CURVE client %s from %s allowed (%s)", z85, addr, who);
    else
        s_log(self, "refused a %s connection from %s: public key %s is not in the allow directory", mech[0] ? mech : "?",
              addr[0] ? addr : "?", z85[0] ? z85 : "(none)");
    zmq_send(self->sock, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(self->sock, reqid, reqid_len, ZMQ_SNDMORE);
    zmq_send(self->sock, ok ? "200" : "400", 3, ZMQ_SNDMORE);
    const char *text = ok ? "OK" : "public key not allowed";
    zmq_send(self->sock, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(self->sock, who, strlen(who), ZMQ_SNDMORE); /* user id: the key file's name */
    zmq_send(self->sock, "", 0, 0);
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
}

static void *s_thread(void *arg)
{
    zap_t *self = arg;
    while (!atomic_load(&self->stop)) {
        zmq_pollitem_t item = {self->sock, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll(&item, 1, ZAP_POLL_MS);
        if (rc < 0 && errno == ETERM) break;
        if (rc > 0) s_handle(self);
    }
    return NULL;
}

zap_t *zap_new(void *ctx, const char *allow_dir, FILE *log, char *err)
{
    zap_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    self->log = log ? log : stderr;
    atomic_init(&self->stop, 0);
    DIR *d = opendir(allow_dir);
    if (!d) {
        st_fail(err, ST_EIO, "cannot read the allow directory '%s': %s", allow_dir, strerror(errno));
        goto fail;
    }
    closedir(d);
    self->allow_dir = strdup(allow_dir);
    self->sock = zmq_socket(ctx, ZMQ_REP);
    if (!self->allow_dir || !self->sock) {
        st_fail(err, ST_ENET, "cannot create the ZAP socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int zero = 0;
    zmq_setsockopt(self->sock, ZMQ_LINGER, &zero, sizeof zero);
    if (zmq_bind(self->sock, ZAP_ENDPOINT) != 0) {
        st_fail(err, ST_ENET, "cannot bind %s: %s", ZAP_ENDPOINT, zmq_strerror(errno));
        goto fail;
    }
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        st_fail(err, ST_ENET, "cannot start the ZAP thread");
        goto fail;
    }
    self->started = 1;
    return self;
fail:
    zap_destroy(&self);
    return NULL;
}

void zap_destroy(zap_t **self_p)
{
    if (!self_p || !*self_p) return;
    zap_t *self = *self_p;
    if (self->started) {
        atomic_store(&self->stop, 1);
        pthread_join(self->thread, NULL);
    }
    if (self->sock) zmq_close(self->sock);
    free(self->allow_dir);
    free(self);
    *self_p = NULL;
}
