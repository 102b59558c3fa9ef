/*
 * st_fs.c - atomic file writes, whole-file reads and streamed hashing.
 */
#define _POSIX_C_SOURCE 200809L
#include "st_fs.h"
#include "st_err.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct st_atomic_file {
    FILE *fp;    /* stream on the temporary file */
    char *path;  /* final name */
    char *tmp;   /* temporary name beside it */
};

st_atomic_file_t *st_atomic_file_new(const char *path, char *err)
{
    st_atomic_file_t *self = calloc(1, sizeof *self);
    if (!self) {
        st_fail(err, ST_ENOMEM, "out of memory");
        return NULL;
    }
    size_t n = strlen(path) + 64;
    self->path = strdup(path);
    self->tmp = malloc(n);
    if (!self->path || !self->tmp) {
        st_fail(err, ST_ENOMEM, "out of memory");
        st_atomic_file_destroy(&self);
        return NULL;
    }
    snprintf(self->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(self->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || !(self->fp = fdopen(fd, "wb"))) {
        st_fail(err, ST_EIO, "cannot create '%s': %s", self->tmp, strerror(errno));
        if (fd >= 0) close(fd);
        free(self->tmp);
        self->tmp = NULL; /* nothing to unlink */
        st_atomic_file_destroy(&self);
        return NULL;
    }
    return self;
}

FILE *st_atomic_file_stream(st_atomic_file_t *self)
{
    return self->fp;
}

static int s_fsync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy) return -1;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

int st_atomic_file_commit(st_atomic_file_t **self_p, char *err)
{
    st_atomic_file_t *self = *self_p;
    int rc = ST_OK;
    const char *op = NULL;
    if (fflush(self->fp) != 0) op = "write";
    else if (ferror(self->fp)) op = "write";
    else if (fsync(fileno(self->fp)) != 0) op = "fsync";
    if (op) {
        rc = st_fail(err, ST_EIO, "%s '%s': %s", op, self->tmp, strerror(errno));
        st_atomic_file_destroy(self_p);
        return rc;
    }
    int close_rc = fclose(self->fp);
    self->fp = NULL;
    if (close_rc != 0) {
        rc = st_fail(err, ST_EIO, "close '%s': %s", self->tmp, strerror(errno));
        st_atomic_file_destroy(self_p);
        return rc;
    }
    if (rename(self->tmp, self->path) != 0) {
        rc = st_fail(err, ST_EIO, "rename '%s' to '%s': %s", self->tmp, self->path, strerror(errno));
        st_atomic_file_destroy(self_p);
        return rc;
    }
    free(self->tmp);
    self->tmp = NULL;
    (void)s_fsync_dir(self->path); /* best effort: some filesystems refuse it */
    st_atomic_file_destroy(self_p);
    return ST_OK;
}

void st_atomic_file_destroy(st_atomic_file_t **self_p)
{
    if (!self_p || !*self_p) return;
    st_atomic_file_t *self = *self_p;
    if (self->fp) fclose(self->fp);
    if (self->tmp) unlink(self->tmp);
    free(self->tmp);
    free(self->path);
    free(self);
    *self_p = NULL;
}

int st_write_file_atomic(const char *path, const void *data, size_t len, char *err)
{
    st_atomic_file_t *f = st_atomic_file_new(path, err);
    if (!f) return ST_EIO;
    if (len && fwrite(data, 1, len, st_atomic_file_stream(f)) != len) {
        int rc = st_fail(err, ST_EIO, "write '%s': %s", path, strerror(errno));
        st_atomic_file_destroy(&f);
        return rc;
    }
    return st_atomic_file_commit(&f, err);
}

int st_open_regular(const char *path, char *err)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return st_fail(err, errno == ENOENT ? ST_ENOTFOUND : ST_EIO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return st_fail(err, ST_EIO, "'%s' is not a regular file", path);
    }
    return fd;
}

static FILE *s_fopen_regular(const char *path, int *rc, char *err)
{
    int fd = st_open_regular(path, err);
    if (fd < 0) {
        *rc = fd;
        return NULL;
    }
    FILE *fp = fdopen(fd, "rb");
    if (!fp) {
        *rc = st_fail(err, ST_EIO, "cannot open '%s': %s", path, strerror(errno));
        close(fd);
    }
    return fp;
}

int st_read_file(const char *path, size_t max_bytes, char **data_out, size_t *len_out, char *err)
{
    *data_out = NULL;
    if (len_out) *len_out = 0;
    int orc = ST_OK;
    FILE *fp = s_fopen_regular(path, &orc, err);
    if (!fp) return orc;
    struct stat st;
    if (fstat(fileno(fp), &st) != 0) {
        fclose(fp);
        return st_fail(err, ST_EIO, "cannot stat '%s': %s", path, strerror(errno));
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        fclose(fp);
        return st_fail(err, ST_EINVAL, "'%s' is %lld bytes, more than the %zu allowed", path, (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(fp);
        return st_fail(err, ST_ENOMEM, "out of memory reading '%s'", path);
    }
    if (n && fread(buf, 1, n, fp) != n) {
        free(buf);
        fclose(fp);
        return st_fail(err, ST_EIO, "read '%s': short read", path);
    }
    fclose(fp);
    buf[n] = 0;
    *data_out = buf;
    if (len_out) *len_out = n;
    return ST_OK;
}

int st_mkdirs(const char *path, char *err)
{
    char *p = strdup(path);
    if (!p) return st_fail(err, ST_ENOMEM, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int rc = st_fail(err, ST_EIO, "mkdir '%s': %s", p, strerror(errno));
            free(p);
            return rc;
        }
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        int rc = st_fail(err, ST_EIO, "mkdir '%s': %s", p, strerror(errno));
        free(p);
        return rc;
    }
    free(p);
    return ST_OK;
}

static void s_hex(const unsigned char *h, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[h[i] >> 4];
        out[2 * i + 1] = digits[h[i] & 15];
    }
    out[2 * n] = 0;
}

int st_sha256_file(const char *path, char hex_out[65], char *err)
{
    int orc = ST_OK;
    FILE *fp = s_fopen_regular(path, &orc, err);
    if (!fp) return orc;
    crypto_hash_sha256_state st;
    crypto_hash_sha256_init(&st);
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = malloc(CHUNK);
    if (!buf) {
        fclose(fp);
        return st_fail(err, ST_ENOMEM, "out of memory");
    }
    size_t n;
    while ((n = fread(buf, 1, CHUNK, fp)) > 0) crypto_hash_sha256_update(&st, buf, n);
    int bad = ferror(fp);
    free(buf);
    fclose(fp);
    if (bad) return st_fail(err, ST_EIO, "read '%s' failed", path);
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&st, h);
    s_hex(h, sizeof h, hex_out);
    return ST_OK;
}

void st_sha256_hex(const void *data, size_t len, char hex_out[65])
{
    unsigned char h[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(h, data, len);
    s_hex(h, sizeof h, hex_out);
}

char *st_path_relative_to(const char *base_file, const char *path)
{
    if (path[0] == '/') return strdup(path);
    const char *slash = strrchr(base_file, '/');
    if (!slash) return strdup(path);
    size_t dlen = (size_t)(slash - base_file);
    size_t n = dlen + 1 + strlen(path) + 1;
    char *out = malloc(n);
    if (!out) return NULL;
    snprintf(out, n, "%.*s/%s", (int)dlen, base_file, path);
    return out;
}
