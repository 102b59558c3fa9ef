/*
 * kstate.h - the parameters of the kernel-expanded state (SPEC section 4):
 * per layer and head a trainable U0 (N x M, starting at zero so tuning starts
 * from the pretrained behaviour) and M fixed unit support vectors u_m (N),
 * chosen once before training, deterministically from a seed:
 *   - "random": Gaussian directions, normalised;
 *   - "kmeans": spherical k-means (cosine assignment, normalised means) on
 *     the normalised receptances r_t / |r_t| of a data sample, seeded by
 *     distinct sample points picked with the seed; a cluster that empties
 *     keeps its previous centre.
 * The engine reads them through an engine_kstate_t view (engine.h).
 * Stored beside the tuned state as DIR/kstate.safetensors
 * (blocks.{l}.att.kstate_u0 [H, N, M], blocks.{l}.att.kstate_support [H, M, N],
 * gamma in the metadata); standard state formats cannot hold it.
 */
#ifndef ST_ENGINE_KSTATE_H
#define ST_ENGINE_KSTATE_H

#include "engine/engine.h"

#include <stddef.h>
#include <stdint.h>

#define KSTATE_MAX_FEATURES 1024

typedef struct kstate kstate_t;

/* U0 = 0 and support vectors unset (all zero) until one of the two inits. */
kstate_t *kstate_new(int n_layer, int n_head, int head_size, int features, float gamma, char *err);
void kstate_destroy(kstate_t **self_p);

/* Random unit support vectors from seed. */
void kstate_support_random(kstate_t *self, uint64_t seed);

/* Spherical k-means per layer and head on rows of receptances r (L, n_rows, C)
 * (rows whose r is all zero are skipped), iters Lloyd iterations. Fails with
 * ST_EINVAL when a head has fewer usable rows than features. */
int kstate_support_kmeans(kstate_t *self, const float *r, size_t n_rows, uint64_t seed, int iters, char *err);

/* The support vectors a job asks for: "random" from seed, or "kmeans" on the
 * receptances the engine computes from state0 for up to max_b samples of ds
 * (each cut to its first ctx tokens; 12 Lloyd iterations). */
struct dataset;
int kstate_support_init(kstate_t *self, const char *support, engine_t *engine, const struct dataset *ds, int max_b,
                        int ctx, const float *state0, uint64_t seed, char *err);

/* The engine's view; valid while self lives (U0 updates show through). */
const engine_kstate_t *kstate_view(const kstate_t *self);
float *kstate_u0(kstate_t *self);              /* (L, H, N, M) */
const float *kstate_support(const kstate_t *self); /* (L, H, M, N) */
size_t kstate_u0_size(const kstate_t *self);   /* L H N M */
int kstate_features(const kstate_t *self);

/* Writes DIR/kstate.safetensors-style file at path, atomically. */
int kstate_write(const kstate_t *self, const char *path, char *err);

/* Checkpoint of the trained part (U0 and its Adam moments m, v and step
 * count t, at optimizer step `step`), written atomically beside the loop's
 * checkpoint: magic "STKSCKP1", shape, step, t, U0, m, v, the support
 * vectors, then a sha256 of everything before it. Reading checks all of it
 * (the file is untrusted) and restores U0 and the support vectors. */
#define KSTATE_CKPT_FILE "kstate.ckpt"
int kstate_ckpt_write(const kstate_t *self, const char *path, int64_t step, const float *m, const float *v,
                      int64_t t, char *err);
int kstate_ckpt_read(kstate_t *self, const char *path, int64_t *step, float *m, float *v, int64_t *t, char *err);

#endif
