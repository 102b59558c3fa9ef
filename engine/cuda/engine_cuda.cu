/*
 * engine_cuda.cu - the CUDA backend of engine.h (see engine/engine_cuda.h):
 * the whole RWKV-7 forward, loss and backward to every layer's initial WKV
 * state on one GPU, the same algorithm as engine/engine_cpu.c (which is the
 * readable reference; its header comment lists the backward step by step).
 *
 * Precision. The engine is one template over the storage type T of weights
 * and activations: float (ENGINE_FP32) or bf16 (ENGINE_BF16). Matrix products
 * go through cuBLAS (cublasGemmEx or cuBLASLt, fp32 accumulation, no TF32 in
 * fp32 mode; same-shape products on different inputs as one strided-batched
 * product: gemm_n and the engine's gemm_batch / gemm_lt switches);
 * everything element-wise is fused into the kernels of kernels/cuda/*.cuh and
 * computes in fp32. Always fp32 whatever T: the residual stream and its
 * gradient, LayerNorm/GroupNorm statistics, the WKV state, its checkpoints and
 * sa, dS0, per-row losses, the decay w and the decay LoRA's output wl (a
 * bf16 decay loses the long memory of a trained model: kernels/cuda/wkv7.cuh).
 * The head runs in row chunks, so the (B*T, V) logits never exist at once:
 * each chunk's logits come out of cuBLAS and the cross-entropy turns them
 * into the gradient in T (kernels/cuda/head.cuh). They come out in fp32
 * wherever something reads them besides the plain cross-entropy (the caller's
 * host copy: verify; the observer). A bf16 engine's plain cross-entropy takes
 * them in bf16 instead, written straight into the gradient's buffer and
 * turned into the gradient in place (bf16_logits, STATETUNE_BF16_LOGITS):
 * half the bytes the product writes and the kernel reads twice. The cost:
 * rounding a logit x to bf16 moves it by up to |x| 2^-8 (1/32 at 8), so a
 * softmax probability moves by up to about 2 max|x| 2^-8 relative (6% where
 * logits reach 8) and a row's loss by up to 2 max|x| 2^-8; the roundings are
 * unbiased and the step's loss and dS0 are sums over thousands of rows (the
 * gradient itself is stored in bf16 either way).
 *
 * Memory plan. Weights are uploaded once into one allocation (matrices in T,
 * vectors fp32). Activations are one more allocation carved by plan_activations
 * (plan_weights for the weights), pure functions of (config, max_batch,
 * max_ctx, precision, mode): a dry run with no base pointer sizes them, so the size is known
 * and checked against free device memory before anything is allocated:
 * per-layer tensors the backward needs (L copies), then scratch shared by all
 * layers; backward scratch reuses forward scratch that is dead by then (the
 * six lerp outputs become their gradients). peak_mem = weights + plan.
 * When that plan does not fit (long contexts: batch 8 x ctx 4096 at 24 x 2048
 * needs about 113 GB), the engine keeps only every layer's input x_res and one
 * slot of the other per-layer tensors, and the backward recomputes each
 * layer's forward into that slot just before it (recompute mode, about one
 * more forward per step).
 *
 * DBP: when the batch asks for dbp_q, each layer's forward also runs the Q
 * recursion (kernels/cuda/dbp.cuh) on the sampled rows, in double.
 *
 * A step (run): host copies in; the forward and the head (run_forward) and
 * the backward (run_backward), queued back to back; the row losses out and
 * checked on the host; dS0 out. The two middle parts are replayed from CUDA
 * graphs once a shape has been seen twice (graphed(); runs that copy to the
 * host mid-step stay eager). Fusions that cross operations: each layer's end computes the next
 * LayerNorm with its residual add (layer_fwd's fuse_out); each LayerNorm but
 * ln0 and ln_out runs with the token shift it feeds, both ways
 * (ln_shift.cuh); the gate's LoRA activation shares a launch with w's
 * (lora_wav_fwd/bwd); and every LayerNorm backward also writes the bf16 copy
 * of dx the next product reads.
 * engine_cuda_set_profiling level 2 brackets every operation with events
 * (PROF) and sums them by class: docs/performance.md section 2.3.
 *
 * Observer and kernel-expanded state (SPEC section 4; the methods_* functions,
 * kernels/cuda/observer.cuh and kstate.cuh): the same hooks as engine_cpu.c.
 * The observer replaces the head's cross-entropy kernel chunk by chunk; the
 * teacher's rows of each chunk are either computed right there from a teacher
 * engine on the same device (engine_batch_t.teacher: the teacher's head
 * input, kept by engine_cuda_teacher_forward, times the teacher's head: one
 * more product per chunk, nothing over PCIe) or uploaded from the caller's
 * host (B, T, V) logits (teacher_logits: 2 GB per 8 x 1024 batch at vocab
 * 65536, which costs several times the step itself); or the teacher is its
 * top-k per row computed ahead of time (teacher_topk: B T k values and ids
 * uploaded once per run, 4 MB at 8 x 1024 x 64, and a kernel that needs no
 * teacher rows at all). The kernel-expanded
 * term joins y right after each layer's WKV forward (recompute mode
 * included) and its backward adds into dr, dw and dU0 right after the WKV
 * backward. Their device buffers are
 * allocated on first use, outside the plan (the plan is made before any
 * batch says whether it uses them), and counted in peak_mem from then on.
 */
extern "C" {
#include "engine/engine_cuda.h"
#include "common/st_err.h"
#include "common/st_half.h"
}
#include "kernels/cuda/channelmix.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/dbp.cuh"
#include "kernels/cuda/groupnorm.cuh"
#include "kernels/cuda/head.cuh"
#include "kernels/cuda/kstate.cuh"
#include "kernels/cuda/layernorm.cuh"
#include "kernels/cuda/ln_shift.cuh"
#include "kernels/cuda/observer.cuh"
#include "kernels/cuda/st_cuda.h"
#include "kernels/cuda/timemix.cuh"
#include "kernels/cuda/wkv7.cuh"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <mutex>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN(expr)                  \
    do {                           \
        int st_rc_ = (expr);       \
        if (st_rc_) return st_rc_; \
    } while (0)

namespace {

const uint32_t ENGINE_CUDA_TAG = 0x57435544u; /* "WCUD" */
const float LN_EPS = 1e-5f;
const size_t ALIGN = 256;
/* fp32 logits of one head chunk: 4096 rows at V 65536. Measured on the
 * H100 (docs/performance.md 2.8), bf16, 8 x 1024: 4096-row chunks against
 * 1024 took 22.75-22.77 against 22.80-22.95 ms a step at 12 x 768 and
 * 54.45-54.57 against 54.69-54.74 at 24 x 1024 (fewer, larger head
 * products and CE launches; a chunk is far past L2 either way), for 1.1 GB
 * more of plan at V 65536. */
const size_t HEAD_CHUNK_BYTES = (size_t)1024 << 20;
const int EW_THREADS = 256;                          /* element-wise blocks */
const size_t LT_WS_BYTES = (size_t)32 << 20;         /* cuBLASLt workspace (split-K, stream-K) */
const int LT_PLANS = 96;                             /* cached cuBLASLt choices (distinct product shapes) */
const int LT_CANDIDATES = 8;                         /* heuristic results timed with gemm_lt 2 */
const int LT_KEY = 17;                               /* lt_gemm's key: the product's description, the device */
const int LT_CHOICES = 1024;                         /* process-wide timed choices (lt_cache), distinct keys */
const int LT_ROUNDS = 7;                             /* timed rounds per candidate; the median counts */
const float LT_MARGIN = 0.03f;                       /* another candidate replaces the first only if this much faster */
const float LT_SAMPLE_MS = 0.05f;                    /* one timed sample: back-to-back products for about this long */
const int LT_INNER_MAX = 32;                         /* at most this many products per sample */
const unsigned long long LT_HOLD_NS_PER_LAUNCH = 10000; /* lt_hold_kernel: host time allowed per queued launch */
const unsigned long long LT_HOLD_NS_MAX = 20000000;  /* and at most 20 ms per round */
/* Defaults measured on the H100 (docs/performance.md 2.4): batching saves
 * 0.2-0.9 ms of r/k/v and 0.1-0.3 ms of LoRA products per step; cuBLASLt's
 * first heuristic choice is no faster than cublasGemmEx; the timed choice
 * (2) is as fast or faster (8 x 1024, dev_engine_bench --variants 10,12):
 * bf16 eager step 136.84 -> 135.37 ms at 24 x 2048, 65.36 -> 65.08 at
 * 24 x 1024, 28.44 -> 28.37 at 12 x 768 (the head's products 7-10% faster);
 * fp32 140.95 -> 135.51 at 12 x 768, 339.04 -> 339.14 at 24 x 1024. Its one
 * cost is the timing, once per process and product shape (about 0.35 s at
 * 12 x 768 bf16). The choice is made once per process and device
 * (lt_cache), so every engine computes the same bits; the GPU tests and
 * verify pass under it in both precisions. But the choice is timed, so two
 * processes can choose differently, and a tuning run amplifies that: on the
 * H100 the fp32 top_k = V observer against the teacher on the fly
 * (gpu_methods_tune.sh, two processes) trained states 1.6e-6 to 2.3e-4
 * apart under 2 (one run over its 1e-4 bound) and 2.2-2.7e-6 under 0. fp32
 * is the mode a user picks for reproducible results, so it keeps the
 * heuristic's choice; bf16 (whose results differ at 1e-2 between any two
 * kernels anyway) takes the faster timed one. */
const int GEMM_BATCH_DEFAULT = 1;   /* STATETUNE_GEMM_BATCH when unset */
const int GEMM_LT_DEFAULT_BF16 = 2; /* STATETUNE_GEMM_LT when unset, bf16 engines */
const int GEMM_LT_DEFAULT_FP32 = 0; /* and fp32 engines */
/* STATETUNE_BF16_LOGITS when unset: a bf16 engine's plain cross-entropy
 * reads bf16 logits (the file comment says what it costs in accuracy).
 * Measured on the H100, 8 x 1024, V 65536, same binary (dev_engine_bench,
 * 0 -> 1): CE 1.87 -> 1.17 ms, head products 2.42 -> 2.21 ms, graphed step
 * 25.47 -> 24.59 ms at 12 x 768; 60.35 -> 59.13 at 24 x 1024; 137.02 ->
 * 136.77 at 24 x 2048. GPU tests and verify pass with it on; on the trained
 * pysrc-rwkv7-5M it moves the mean loss by 4e-4 and dS0 by 0.8% relative
 * against fp32 logits (test_cuda_bf16_logits). */
const int BF16_LOGITS_DEFAULT = 1;

struct dev_layer_t {
    void *receptance, *key, *value, *output, *ffn_key, *ffn_value; /* T, [out, in] */
    void *w1, *w2, *a1, *a2, *v1, *v2, *g1, *g2;                   /* T, LoRA */
    float *ln0_w, *ln0_b, *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    float *mix[6]; /* x_r, x_w, x_k, x_v, x_a, x_g */
    float *w0, *a0, *v0, *k_k, *k_a, *r_k, *ln_x_w, *ln_x_b, *ffn_x_k;
};

/* The time mix's six lerp weights, as the token shift kernels take them. */
st::mix6_t mix6_of(const dev_layer_t *p)
{
    st::mix6_t m;
    for (int i = 0; i < 6; i++) m.m[i] = p->mix[i];
    return m;
}

/* Carves 256-byte aligned pieces out of one allocation; with base NULL it
 * only counts (the dry run that sizes the plan). */
struct carver_t {
    char *base;
    size_t off;
};

void *carve(carver_t *cv, size_t bytes)
{
    size_t o = (cv->off + ALIGN - 1) & ~(ALIGN - 1);
    cv->off = o + bytes;
    return cv->base ? cv->base + o : NULL;
}

} // namespace

/* One cached cuBLASLt product (gemm_lt): the shape it was made for and the
 * algorithm chosen for it. */
struct lt_plan_t {
    long long key[LT_KEY]; /* lt_gemm's: transposes, m n k, leading dims, strides, batch, types, beta, alignments, device */
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
};

/* The optional methods' per-run switches and device buffers (methods_*). */
struct methods_cuda_t {
    const engine_kstate_t *ks; /* this run's kernel-expanded state, NULL = off */
    int obs;                   /* this run's head is the observer objective */
    int want_dU0;              /* this run accumulates dU0 */
    float *rec_out;            /* host (L, B, T, C): receptances wanted from this forward */
    char *ks_mem;              /* one allocation: U0, sv, dU0 (L, H, N, M) and the rbf buffers */
    size_t ks_bytes;
    int ks_M;                  /* features the allocation holds */
    float *U0, *sv, *dU0, *h_dU0;
    st::rbf_cuda_bufs_t bufs;
    char *obs_mem;             /* one allocation: row_ce, row_kl (maxR) */
    size_t obs_bytes;          /* obs_mem + teacher + tk_mem */
    float *teacher;            /* (head_chunk, V) one chunk of full teacher rows; allocated on first use */
    float *row_ce, *row_kl, *h_ce, *h_kl;
    int topk;                  /* this run's teacher is its top-k (engine_batch_t.teacher_topk) */
    char *tk_mem;              /* one allocation: tk_val (maxR, tk_K) fp32, tk_id (maxR, tk_K) int32 */
    int tk_K;                  /* k the allocation holds */
    float *tk_val;
    int32_t *tk_id;
    const struct engine_cuda *dev_teacher; /* this run's teacher engine on the device, NULL = host logits */
    int head_input_only;       /* engine_cuda_teacher_forward: stop at ln_out, keep it in lnout */
    int hid_R;                 /* rows of the head input kept by the last teacher forward, 0 = none */
};

struct engine_cuda {
    uint32_t tag;
    const rwkv_model_t *m;
    int maxB, maxT, nck, bf16, head_chunk;
    int head_chunk_max; /* rows the plan's logits buffer holds */
    /* bf16 engines, runs with the plain cross-entropy and no host logits:
     * the head product writes bf16 logits into dlogits and ce_kernel turns
     * them into the gradient in place; read once at creation from
     * STATETUNE_BF16_LOGITS (0 off, 1 on), so one binary measures both */
    int bf16_logits;
    int recompute; /* one slot of per-layer activations, refilled by a second forward in the backward */
    size_t esz; /* bytes of one T */
    cudaStream_t stream;
    cublasHandle_t blas;
    /* matrix products (docs/performance.md 2.4), chosen at creation from
     * STATETUNE_GEMM_BATCH and STATETUNE_GEMM_LT: gemm_batch 1 runs the
     * same-shape r/k/v projections (forward and dX) as one strided-batched
     * product, and the w and a LoRAs' products as 2-batch ones where their
     * widths agree (lora_wav_fwd/bwd); gemm_lt 0 is cublasGemmEx, 1 cuBLASLt with a workspace and the
     * heuristic's first algorithm, 2 the fastest of its first LT_CANDIDATES
     * timed on first use, chosen once per process and device (lt_cache); the
     * plan is cached per shape in lt_plan */
    int gemm_batch, gemm_lt;
    /* wav: gemm_batch on and the w and a LoRAs of one width, so that
     * lora_wav_fwd/bwd run them (with the gate's beside them); else each
     * LoRA alone through lora_fwd/bwd */
    int wav;
    /* vbatch: gemm_batch on, w and a LoRAs of one width D and v's no wider:
     * v's LoRA weights are stored zero-padded to D beside w's and
     * a's, so that its products join theirs as 3-batch and 2-batch ones
     * (lora_wav_fwd/bwd; the padding adds exact zeros). vwidth: v's stored
     * width. Measured on the H100 (docs/performance.md 2.8), worker bench,
     * same call: 22.82-22.83 against 22.84-22.88 ms a step at 12 x 768,
     * 54.58-54.63 against 54.77-54.95 at 24 x 1024, 126.50-126.51 against
     * 126.85-126.94 at 24 x 2048; the LoRA products' profile 1.85 -> 1.64 ms
     * and 148 -> 115 launches at 12 x 768. */
    int vbatch, vwidth;
    cublasLtHandle_t lt;
    void *lt_ws; /* LT_WS_BYTES, carved in the activation plan */
    struct lt_plan_t *lt_plan; /* LT_PLANS entries, replaced round-robin when full */
    int lt_n, lt_next;
    int lt_device; /* the CUDA ordinal: part of the process-wide choice's key (lt_cache) */
    char *wmem, *amem;
    size_t wbytes, abytes;
    dev_layer_t *L;
    void *emb, *head;
    float *ln_out_w, *ln_out_b;
    /* per layer: L blocks (x_res has L + 1) */
    float *x_res, *x_mid, *ln1_mean, *ln1_rstd, *ln2_mean, *ln2_rstd, *gn_mean, *gn_rstd, *ckpt, *sa;
    float *w, *wl; /* the decay and its LoRA output stay fp32 in bf16 mode too (wkv7.cuh says why) */
    void *r, *kraw, *kf, *kk, *a, *v, *vraw, *vs, *g, *y, *whid, *ghid, *kpre;
    /* scratch */
    void *v_first; /* layer 0's v, (R, C) T */
    void *lerp[6], *hid0, *hid, *hid2, *dghid, *wa, *wb, *oin, *tmp, *act, *lnout, *dlogits, *dxT;
    float *logits; /* one chunk of rows, fp32 (the bf16 logits of bf16_logits live in dlogits) */
    float *dw;
    void *dr, *dk, *dv, *da, *db, *dy, *dg, *dbr, *dbk, *dbv, *dwl, *dal, *dkraw, *dvraw, *dvl, *dxh;
    float *dx, *sfin, *lnout_mean, *lnout_rstd, *row_loss, *state0, *ds0;
    int32_t *tokens, *targets, *row_correct;
    double *dbp_q, *h_dbp_q; /* (L, H, N, N) on the device and its host copy */
    uint8_t *dbp_rows;       /* (maxB) */
    /* profiling (engine_cuda_set_profiling): phase marks and one pair of
     * events around every WKV call, [0..L) forward, [L..2L) backward */
    int profile;
    cudaEvent_t mark[4], wkv_ev[2][2 * 256];
    engine_cuda_profile_t last;
    /* fine profiling (level 2): a pair of events around each operation,
     * its class, phase and launch count; summed after the step */
    cudaEvent_t *prof_ev;  /* 2 * prof_cap */
    uint8_t *prof_cls, *prof_ph;
    uint16_t *prof_nl;
    int prof_cap, prof_n, prof_phase, prof_drop;
    /* CUDA graphs (engine_cuda_set_graphs): captured forward + head and
     * backward parts of a step, by shape and switches */
    int graphs;
    struct graph_slot_t {
        uint64_t key[8]; /* graph_key(): part, B, T, switches, dS0's address */
        int seen;        /* the first run of a key is eager (lazy loading, cuBLAS plans), the second captures */
        cudaGraphExec_t exec;
        uint64_t used;   /* for replacing the least recently used slot */
    } gslot[8];
    uint64_t gclock;
    long greplays; /* parts launched from a graph */
    methods_cuda_t meth; /* observer and kernel-expanded state (methods_*) */
    /* resident parameters (engine_cuda_run_resident): during such a run S0
     * is copied from res_state0 on the device and ds0 points at res_ds0 */
    const float *res_state0;
    float *res_ds0;
    /* and DBP's Q, when not NULL: dbp_q points at it, accumulated across the
     * step's runs (engine_cuda_run_resident_q: not zeroed, not copied out) */
    double *res_q;
    /* host staging */
    float *h_loss, *h_ds0;
    int32_t *h_correct;
};

namespace {

/* ---- memory plans ---------------------------------------------------------- */

void plan_weights(engine_cuda_t *e, carver_t *cv)
{
    const rwkv_config_t *c = &e->m->cfg;
    size_t C = c->n_embd, F = c->ffn_dim, V = c->vocab, es = e->esz;
    e->emb = carve(cv, V * C * es);
    e->head = carve(cv, V * C * es);
    e->ln_out_w = (float *)carve(cv, C * 4);
    e->ln_out_b = (float *)carve(cv, C * 4);
    for (int l = 0; l < c->n_layer; l++) {
        dev_layer_t *d = &e->L[l];
        const rwkv_layer_t *p = &e->m->layers[l];
        d->receptance = carve(cv, C * C * es);
        d->key = carve(cv, C * C * es);
        d->value = carve(cv, C * C * es);
        d->output = carve(cv, C * C * es);
        d->ffn_key = carve(cv, F * C * es);
        d->ffn_value = carve(cv, C * F * es);
        /* with vbatch v1, v2, w1, w2, a1, a2 follow each other at one size, so
         * (v1, w1, a1) and (v2, w2, a2) lie one stride apart */
        if (e->vbatch) {
            d->v1 = p->v1 ? carve(cv, C * e->vwidth * es) : NULL;
            d->v2 = p->v2 ? carve(cv, C * e->vwidth * es) : NULL;
        }
        d->w1 = carve(cv, C * c->d_decay * es);
        d->w2 = carve(cv, C * c->d_decay * es);
        d->a1 = carve(cv, C * c->d_aaa * es);
        d->a2 = carve(cv, C * c->d_aaa * es);
        if (!e->vbatch) {
            d->v1 = p->v1 ? carve(cv, C * c->d_mv * es) : NULL;
            d->v2 = p->v2 ? carve(cv, C * c->d_mv * es) : NULL;
        }
        d->g1 = carve(cv, C * c->d_gate * es);
        d->g2 = carve(cv, C * c->d_gate * es);
        d->ln0_w = p->ln0_w ? (float *)carve(cv, C * 4) : NULL;
        d->ln0_b = p->ln0_b ? (float *)carve(cv, C * 4) : NULL;
        d->ln1_w = (float *)carve(cv, C * 4);
        d->ln1_b = (float *)carve(cv, C * 4);
        d->ln2_w = (float *)carve(cv, C * 4);
        d->ln2_b = (float *)carve(cv, C * 4);
        for (int i = 0; i < 6; i++) d->mix[i] = (float *)carve(cv, C * 4);
        d->w0 = (float *)carve(cv, C * 4);
        d->a0 = (float *)carve(cv, C * 4);
        d->v0 = p->v0 ? (float *)carve(cv, C * 4) : NULL;
        d->k_k = (float *)carve(cv, C * 4);
        d->k_a = (float *)carve(cv, C * 4);
        d->r_k = (float *)carve(cv, C * 4);
        d->ln_x_w = (float *)carve(cv, C * 4);
        d->ln_x_b = (float *)carve(cv, C * 4);
        d->ffn_x_k = (float *)carve(cv, C * 4);
    }
}

/* The activation plan for maxB x maxT (see the file comment). */
/* Floats of one layer's WKV7 checkpoints at the launchers' default
 * interval (wkv7.cuh: a checkpoint every chunk, or every two in a build
 * with -DWKV7_CKPT_BF16_DEFAULT=32, which halves them) */
size_t ckpt_floats(const engine_cuda_t *e)
{
    return wkv7_cuda_ckpt_floats_every(e->maxB, e->maxT, e->m->cfg.n_head, wkv7_cuda_ckpt_every(e->bf16));
}

void plan_activations(engine_cuda_t *e, carver_t *cv)
{
    const rwkv_config_t *c = &e->m->cfg;
    size_t R = (size_t)e->maxB * e->maxT, C = c->n_embd, L = c->n_layer, H = c->n_head, F = c->ffn_dim;
    size_t V = c->vocab, es = e->esz, RC = R * C;
    size_t D = c->d_decay;
    if ((size_t)c->d_aaa > D) D = c->d_aaa;
    if ((size_t)c->d_mv > D) D = c->d_mv;
    if ((size_t)c->d_gate > D) D = c->d_gate;
    size_t HNN = rwkv_state_layer_size(c);
    e->x_res = (float *)carve(cv, (L + 1) * RC * 4); /* always every layer's input */
    const size_t LS = e->recompute ? 1 : L;          /* slots of the other per-layer tensors */
    e->x_mid = (float *)carve(cv, LS * RC * 4);
    e->ln1_mean = (float *)carve(cv, LS * R * 4);
    e->ln1_rstd = (float *)carve(cv, LS * R * 4);
    e->ln2_mean = (float *)carve(cv, LS * R * 4);
    e->ln2_rstd = (float *)carve(cv, LS * R * 4);
    e->gn_mean = (float *)carve(cv, LS * R * H * 4);
    e->gn_rstd = (float *)carve(cv, LS * R * H * 4);
    e->ckpt = (float *)carve(cv, LS * ckpt_floats(e) * 4);
    e->sa = (float *)carve(cv, LS * RC * 4);
    e->w = (float *)carve(cv, LS * RC * 4);
    e->wl = (float *)carve(cv, LS * RC * 4);
    e->dw = (float *)carve(cv, RC * 4);
    /* wa and wb (the WKV's a and b inputs) too: keeping them costs 2 RC per
     * layer and saves the backward a pass that rebuilt them from kk and a */
    /* r, kraw and vraw first and adjacent: one strided-batched product
     * writes them (layer_fwd), so they lie the same stride apart */
    void **per_layer[] = {&e->r, &e->kraw, &e->vraw, &e->kf, &e->kk, &e->a,
                          &e->v, &e->vs, &e->g, &e->y, &e->wa, &e->wb};
    for (size_t i = 0; i < sizeof per_layer / sizeof per_layer[0]; i++) *per_layer[i] = carve(cv, LS * RC * es);
    /* with vbatch each slot is [v's hidden | w's | a's] (lora_wav_fwd) */
    e->whid = carve(cv, LS * R * c->d_decay * es * (e->vbatch ? 3 : 1));
    e->ghid = carve(cv, LS * R * c->d_gate * es);
    e->kpre = carve(cv, LS * R * F * es);
    e->v_first = carve(cv, RC * es);
    /* likewise the inputs of r, k and v (lerps 0, 2, 3) and the gradients
     * their dX products read (dr, dkraw, dvraw) are adjacent */
    void **scratch[] = {&e->lerp[0], &e->lerp[2], &e->lerp[3], &e->lerp[1], &e->lerp[4],
                        &e->lerp[5], &e->oin, &e->tmp, &e->lnout, &e->dxT,
                        &e->dr, &e->dkraw, &e->dvraw, &e->dk, &e->dv, &e->da, &e->db, &e->dy, &e->dg,
                        &e->dbr, &e->dbk, &e->dbv, &e->dvl, &e->dwl, &e->dal, &e->dxh};
    for (size_t i = 0; i < sizeof scratch / sizeof scratch[0]; i++) *scratch[i] = carve(cv, RC * es);
    /* v's, w's and a's LoRA hidden gradients, one stride apart (lora_wav_bwd;
     * without vbatch it uses the last two) */
    e->hid0 = carve(cv, R * D * es);
    e->hid = carve(cv, R * D * es);
    e->hid2 = carve(cv, R * D * es);
    e->dghid = carve(cv, R * c->d_gate * es); /* the gate's, beside them (lora_wav_bwd) */
    e->act = carve(cv, R * F * es);
    e->logits = (float *)carve(cv, (size_t)e->head_chunk * V * 4);
    e->dlogits = e->bf16 ? carve(cv, (size_t)e->head_chunk * V * es) : (void *)e->logits;
    e->dx = (float *)carve(cv, RC * 4);
    e->sfin = (float *)carve(cv, (size_t)e->maxB * HNN * 4);
    e->lnout_mean = (float *)carve(cv, R * 4);
    e->lnout_rstd = (float *)carve(cv, R * 4);
    e->row_loss = (float *)carve(cv, R * 4);
    e->state0 = (float *)carve(cv, L * HNN * 4);
    e->ds0 = (float *)carve(cv, L * HNN * 4);
    e->tokens = (int32_t *)carve(cv, R * 4);
    e->targets = (int32_t *)carve(cv, R * 4);
    e->row_correct = (int32_t *)carve(cv, R * 4);
    e->dbp_q = (double *)carve(cv, L * HNN * 8);
    e->dbp_rows = (uint8_t *)carve(cv, (size_t)e->maxB);
    e->lt_ws = carve(cv, LT_WS_BYTES);
}

/* Copies n fp32 values to the device as T (bf16 rounded to nearest even, as
 * torch does). stage holds n uint16. */
int upload(engine_cuda_t *e, void *dst, const float *src, size_t n, bool as_t, uint16_t *stage, char *err)
{
    if (!dst) return ST_OK;
    if (!src) return st_fail(err, ST_EINVAL, "the model lacks a tensor the CUDA engine planned for");
    if (as_t && e->bf16) {
        for (size_t i = 0; i < n; i++) stage[i] = st_f32_to_bf16(src[i]);
        ST_CUDA_CHECK(cudaMemcpy(dst, stage, n * 2, cudaMemcpyHostToDevice));
    } else {
        ST_CUDA_CHECK(cudaMemcpy(dst, src, n * 4, cudaMemcpyHostToDevice));
    }
    return ST_OK;
}

/* v's LoRA weights zero-padded to e->vwidth (vbatch): v1 (C, d_mv) ->
 * (C, vwidth) with zero columns, v2 (d_mv, C) -> (vwidth, C) with zero
 * rows. The products then add exact zeros: the same results as the
 * unpadded ones up to the products' summation order. */
int upload_v_padded(engine_cuda_t *e, dev_layer_t *d, const rwkv_layer_t *p, uint16_t *stage, char *err)
{
    if (!d->v1) return ST_OK; /* layer 0 has no v LoRA */
    const size_t C = e->m->cfg.n_embd, dm = e->m->cfg.d_mv, DV = e->vwidth;
    float *pad = (float *)calloc(C * DV, sizeof(float));
    if (!pad) return st_fail(err, ST_ENOMEM, "out of host memory staging the weights");
    if (p->v1)
        for (size_t i = 0; i < C; i++) memcpy(pad + i * DV, p->v1 + i * dm, dm * sizeof(float));
    int rc = upload(e, d->v1, p->v1 ? pad : NULL, C * DV, true, stage, err);
    if (rc == ST_OK) {
        memset(pad, 0, C * DV * sizeof(float));
        if (p->v2) memcpy(pad, p->v2, dm * C * sizeof(float));
        rc = upload(e, d->v2, p->v2 ? pad : NULL, C * DV, true, stage, err);
    }
    free(pad);
    return rc;
}

int upload_weights(engine_cuda_t *e, char *err)
{
    const rwkv_model_t *m = e->m;
    const rwkv_config_t *c = &m->cfg;
    size_t C = c->n_embd, F = c->ffn_dim, V = c->vocab;
    size_t maxn = V * C > F * C ? V * C : F * C;
    uint16_t *stage = (uint16_t *)malloc(maxn * 2);
    if (!stage) return st_fail(err, ST_ENOMEM, "out of host memory staging the weights");
    int rc = ST_OK;
#define UP(dst, src, n, ast) \
    if (rc == ST_OK) rc = upload(e, dst, src, n, ast, stage, err)
    UP(e->emb, m->emb, V * C, true);
    UP(e->head, m->head, V * C, true);
    UP(e->ln_out_w, m->ln_out_w, C, false);
    UP(e->ln_out_b, m->ln_out_b, C, false);
    for (int l = 0; l < c->n_layer && rc == ST_OK; l++) {
        dev_layer_t *d = &e->L[l];
        const rwkv_layer_t *p = &m->layers[l];
        UP(d->receptance, p->receptance, C * C, true);
        UP(d->key, p->key, C * C, true);
        UP(d->value, p->value, C * C, true);
        UP(d->output, p->output, C * C, true);
        UP(d->ffn_key, p->ffn_key, F * C, true);
        UP(d->ffn_value, p->ffn_value, C * F, true);
        UP(d->w1, p->w1, C * c->d_decay, true);
        UP(d->w2, p->w2, C * c->d_decay, true);
        UP(d->a1, p->a1, C * c->d_aaa, true);
        UP(d->a2, p->a2, C * c->d_aaa, true);
        if (e->vbatch && rc == ST_OK) {
            rc = upload_v_padded(e, d, p, stage, err);
        } else {
            UP(d->v1, p->v1, C * c->d_mv, true);
            UP(d->v2, p->v2, C * c->d_mv, true);
        }
        UP(d->g1, p->g1, C * c->d_gate, true);
        UP(d->g2, p->g2, C * c->d_gate, true);
        UP(d->ln0_w, p->ln0_w, C, false);
        UP(d->ln0_b, p->ln0_b, C, false);
        UP(d->ln1_w, p->ln1_w, C, false);
        UP(d->ln1_b, p->ln1_b, C, false);
        UP(d->ln2_w, p->ln2_w, C, false);
        UP(d->ln2_b, p->ln2_b, C, false);
        const float *mix[6] = {p->x_r, p->x_w, p->x_k, p->x_v, p->x_a, p->x_g};
        for (int i = 0; i < 6; i++) UP(d->mix[i], mix[i], C, false);
        UP(d->w0, p->w0, C, false);
        UP(d->a0, p->a0, C, false);
        UP(d->v0, p->v0, C, false);
        UP(d->k_k, p->k_k, C, false);
        UP(d->k_a, p->k_a, C, false);
        UP(d->r_k, p->r_k, C, false);
        UP(d->ln_x_w, p->ln_x_w, C, false);
        UP(d->ln_x_b, p->ln_x_b, C, false);
        UP(d->ffn_x_k, p->ffn_x_k, C, false);
    }
#undef UP
    free(stage);
    return rc;
}

/* ---- fine profiling (engine_cuda_set_profiling level 2) ----
 * PROF(class, launches, statements) brackets one operation with a pair of
 * events; run() sums the pairs by class and phase after the step. The pairs
 * leave out the gaps between operations on purpose: the step minus their sum
 * is the launch-gap share. */

enum prof_class {
    PC_GEMM_RKV, PC_GEMM_LORA, PC_GEMM_OUT, PC_GEMM_FFN_K, PC_GEMM_FFN_V, PC_GEMM_HEAD,
    PC_LN, PC_GN, PC_LORA_ACT, PC_KK, PC_VMIX, PC_RELU2, PC_RESID, PC_CE, PC_CONVERT,
    PC_WKV, PC_DBP, PC_EMBED, PC_METHODS, PC_COUNT
};
const char *const PROF_NAMES[PC_COUNT] = {
    "gemm r/k/v",      "gemm LoRA (w,a,v,g)", "gemm output",       "gemm ffn key",      "gemm ffn value",
    "gemm head",       "layernorm + shift",   "groupnorm+bonus+g", "LoRA tanh/sigmoid", "w/a/kk (timemix)",
    "v mix / v_first", "relu^2",              "residual/add3",     "CE softmax",        "converts/memsets",
    "WKV7",            "DBP Q",               "embedding",         "methods hooks"};
static_assert((int)PC_COUNT <= (int)ENGINE_CUDA_PROF_CLASSES, "engine_cuda.h's profile has too few classes");

void prof_begin(engine_cuda_t *e, int cls, int launches)
{
    if (e->profile < 2) return;
    if (e->prof_n >= e->prof_cap) {
        e->prof_drop++;
        return;
    }
    const int i = e->prof_n;
    e->prof_cls[i] = (uint8_t)cls;
    e->prof_ph[i] = (uint8_t)e->prof_phase;
    e->prof_nl[i] = (uint16_t)launches;
    (void)cudaEventRecord(e->prof_ev[2 * i], e->stream); /* a failed record only loses a timing */
}

void prof_end(engine_cuda_t *e)
{
    if (e->profile < 2 || e->prof_n >= e->prof_cap) return;
    (void)cudaEventRecord(e->prof_ev[2 * e->prof_n + 1], e->stream);
    e->prof_n++;
}

#define PROF(cls, launches, ...)        \
    do {                                \
        prof_begin(e, (cls), (launches)); \
        __VA_ARGS__;                    \
        prof_end(e);                    \
    } while (0)

/* ---- matrix products (row-major in our terms; cuBLAS is column-major, so a
 * row-major (R, IN) matrix is its transpose (IN, R) with leading dim IN) ---- */

template <typename T> cudaDataType_t dtype_of();
template <> cudaDataType_t dtype_of<float>() { return CUDA_R_32F; }
template <> cudaDataType_t dtype_of<__nv_bfloat16>() { return CUDA_R_16BF; }

void lt_plan_free(lt_plan_t *p)
{
    if (p->lc) cublasLtMatrixLayoutDestroy(p->lc);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->op) cublasLtMatmulDescDestroy(p->op);
    memset(p, 0, sizeof *p);
}

/* The largest power of two up to 256 that divides the address: the
 * alignment cuBLASLt's heuristic may assume for an operand. */
long long lt_align(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    long long al = 256;
    while (al > 1 && a % (uintptr_t)al) al /= 2;
    return al;
}

int lt_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t, int rows, int cols, int ld, int batch, long long stride,
              char *err)
{
    ST_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(l, t, (uint64_t)rows, (uint64_t)cols, ld));
    if (batch > 1) {
        int32_t bc = batch;
        int64_t sb = stride;
        ST_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
        ST_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof sb));
    }
    return ST_OK;
}

/* ---- cuBLASLt's timed choice (gemm_lt 2) -----------------------------------
 *
 * The process-wide cache of choices. Why a process-wide object (the only
 * one in the engine; cuBLAS keeps process-wide caches of its own the same
 * way): the fastest of a few algorithms is a measurement, and two engines
 * that time the same product can pick different algorithms, which sum in
 * different orders, so two engines on one model (a recompute engine and a
 * plain one, a graph's and an eager one, a service's successive jobs)
 * would give results that differ in the last bits. So the first engine
 * that meets a product (lt_gemm's key plus the device ordinal) chooses, and
 * every later plan of that key, in any engine of the process, takes the
 * same algorithm.
 *
 * Invariants: an entry is never changed or removed once inserted (so every
 * engine that ever used a key used the same algorithm); an entry holds only
 * the algorithm, plain data valid for any cuBLASLt handle on its device, so
 * engines may be created and destroyed in any order and from any thread;
 * the table is bounded (LT_CHOICES): once full, a product it does not know
 * takes the heuristic's first candidate untimed, which is deterministic,
 * so still the same in every engine. The mutex guards lookups and inserts
 * only, never the timing (which synchronises the engine's stream: a lock
 * held across that could wait on another thread's collective); two engines
 * that meet a new product at once may both time it, the first to insert
 * wins and the other takes the winner's algorithm before using its own. */
struct lt_choice_t {
    long long key[LT_KEY]; /* lt_gemm's key, then the device ordinal */
    cublasLtMatmulAlgo_t algo;
    engine_cuda_lt_choice_t info; /* what engine_cuda_lt_choices lists */
};

struct lt_cache_t {
    std::mutex mu;
    int n; /* entries in use, in the order they were inserted */
    lt_choice_t c[LT_CHOICES];
};

lt_cache_t *lt_cache()
{
    static lt_cache_t cache; /* zero-initialised; see the comment above for why it exists */
    return &cache;
}

/* The cached choice of key, or NULL. Call with the mutex held. */
const lt_choice_t *lt_cache_find(const lt_cache_t *c, const long long *key)
{
    for (int i = 0; i < c->n; i++)
        if (!memcmp(c->c[i].key, key, sizeof c->c[i].key)) return &c->c[i];
    return NULL;
}

/* Holds the stream for ns nanoseconds (lt_time): the host queues a whole
 * round of timed products behind it, so that the events measure the GPU's
 * time for each product, not how fast the host launches small ones. */
__global__ void lt_hold_kernel(unsigned long long ns)
{
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(2000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

/* One product of plan p with algorithm algo on the given operands. */
cublasStatus_t lt_run(engine_cuda_t *e, const lt_plan_t *p, const cublasLtMatmulAlgo_t *algo, const void *A,
                      const void *B, void *Cm, float beta)
{
    const float alpha = 1.f;
    return cublasLtMatmul(e->lt, p->op, &alpha, A, p->la, B, p->lb, &beta, Cm, p->lc, Cm, p->lc, algo, e->lt_ws,
                          LT_WS_BYTES, e->stream);
}

/* Times the nres candidates of plan p into ms (median ms of one product; -1
 * for a candidate that does not run). Each candidate runs once untimed
 * (cuBLAS's and the GPU's first-run costs), then LT_ROUNDS rounds each
 * time every candidate over `inner` back-to-back products (enough for about
 * LT_SAMPLE_MS, so that event resolution does not matter), the round queued
 * behind lt_hold_kernel and started at a different candidate each round
 * (no candidate always runs first, right after the hold). The median of
 * the rounds ignores a round that a clock change or another process on the
 * GPU disturbed. */
int lt_time(engine_cuda_t *e, const lt_plan_t *p, const cublasLtMatmulHeuristicResult_t *res, int nres, const void *A,
            const void *B, void *Cm, float beta, float *ms, char *err)
{
    cudaEvent_t ev[2 * LT_CANDIDATES] = {};
    float samp[LT_CANDIDATES][LT_ROUNDS];
    int ok[LT_CANDIDATES], base = -1, inner = 1, rc = ST_OK;
    cudaError_t ce = cudaSuccess;
    float t1 = 0;
    for (int i = 0; i < 2 * nres && ce == cudaSuccess; i++) ce = cudaEventCreate(&ev[i]);
    if (ce != cudaSuccess) {
        rc = st_fail(err, ST_ECUDA, "cudaEventCreate failed while timing cuBLASLt's candidates: %s",
                     cudaGetErrorString(ce));
        goto done;
    }
    for (int i = 0; i < nres; i++) {
        ok[i] = lt_run(e, p, &res[i].algo, A, B, Cm, beta) == CUBLAS_STATUS_SUCCESS;
        if (ok[i] && base < 0) base = i;
        ms[i] = -1.f;
    }
    if (base < 0) goto done; /* nothing runs: lt_gemm's own call reports the error */
    /* how many products make one sample: one run of the first that runs */
    lt_hold_kernel<<<1, 1, 0, e->stream>>>(LT_HOLD_NS_PER_LAUNCH * 4);
    (void)cudaEventRecord(ev[0], e->stream);
    (void)lt_run(e, p, &res[base].algo, A, B, Cm, beta);
    (void)cudaEventRecord(ev[1], e->stream);
    if ((ce = cudaEventSynchronize(ev[1])) != cudaSuccess || (ce = cudaEventElapsedTime(&t1, ev[0], ev[1])) != cudaSuccess) {
        rc = st_fail(err, ST_ECUDA, "timing cuBLASLt's candidates failed: %s", cudaGetErrorString(ce));
        goto done;
    }
    inner = t1 > 0 ? (int)(LT_SAMPLE_MS / t1) + 1 : LT_INNER_MAX;
    if (inner > LT_INNER_MAX) inner = LT_INNER_MAX;
    for (int r = 0; r < LT_ROUNDS; r++) {
        unsigned long long hold = LT_HOLD_NS_PER_LAUNCH * (unsigned long long)(nres * (inner + 2));
        lt_hold_kernel<<<1, 1, 0, e->stream>>>(hold < LT_HOLD_NS_MAX ? hold : LT_HOLD_NS_MAX);
        for (int j = 0; j < nres; j++) {
            const int i = (j + r) % nres;
            if (!ok[i]) continue;
            (void)cudaEventRecord(ev[2 * i], e->stream);
            for (int q = 0; q < inner; q++)
                if (lt_run(e, p, &res[i].algo, A, B, Cm, beta) != CUBLAS_STATUS_SUCCESS) ok[i] = 0;
            (void)cudaEventRecord(ev[2 * i + 1], e->stream);
        }
        if ((ce = cudaStreamSynchronize(e->stream)) != cudaSuccess) {
            rc = st_fail(err, ST_ECUDA, "timing cuBLASLt's candidates failed: %s", cudaGetErrorString(ce));
            goto done;
        }
        for (int i = 0; i < nres; i++) {
            float t = 0;
            if (ok[i] && cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]) != cudaSuccess) ok[i] = 0;
            samp[i][r] = t / (float)inner;
        }
    }
    for (int i = 0; i < nres; i++) {
        if (!ok[i]) continue;
        std::sort(samp[i], samp[i] + LT_ROUNDS);
        ms[i] = samp[i][LT_ROUNDS / 2];
    }
done:
    for (int i = 0; i < 2 * nres; i++)
        if (ev[i]) cudaEventDestroy(ev[i]);
    if (rc == ST_OK && (ce = cudaGetLastError()) != cudaSuccess)
        rc = st_fail(err, ST_ECUDA, "timing cuBLASLt's candidates failed: %s", cudaGetErrorString(ce));
    return rc;
}

/* Chooses among the nres candidates of plan p (key: lt_gemm's plus the
 * device) and fills c. The heuristic's first candidate stays unless another
 * is at least LT_MARGIN faster by the medians of lt_time: a choice that
 * flips with timing noise would make the algorithm (hence the last bits of
 * every result) depend on the run, and a few percent of one product is not
 * worth that. Untimed, the first candidate: while the stream is being
 * captured into a graph (nothing may run; the engine's graphs run every
 * shape eagerly first, so this is rare), when the heuristic offers one, or
 * when a product that accumulates (beta != 0) finds no device memory for a
 * scratch output (it is timed on a zeroed scratch copy of C's extent, so
 * that repeated runs do not add into C). */
int lt_choose(engine_cuda_t *e, const lt_plan_t *p, const cublasLtMatmulHeuristicResult_t *res, int nres,
              cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A, const void *B, void *Cm,
              int ldc, long long sC, int batch, float beta, cudaDataType_t t, cudaDataType_t tc, lt_choice_t *c,
              char *err)
{
    engine_cuda_lt_choice_t *in = &c->info;
    memset(in, 0, sizeof *in);
    in->device = e->lt_device;
    in->m = m;
    in->n = n;
    in->k = k;
    in->batch = batch;
    in->ta = ta == CUBLAS_OP_N ? 'N' : 'T';
    in->tb = tb == CUBLAS_OP_N ? 'N' : 'T';
    snprintf(in->types, sizeof in->types, "%s>%s", t == CUDA_R_16BF ? "bf16" : "f32", tc == CUDA_R_16BF ? "bf16" : "f32");
    in->accumulate = beta != 0.f;
    in->candidates = nres;
    c->algo = res[0].algo;
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    ST_CUDA_CHECK(cudaStreamIsCapturing(e->stream, &cs));
    if (cs != cudaStreamCaptureStatusNone) {
        in->why = "first met while a CUDA graph was being captured";
        return ST_OK;
    }
    if (nres < 2) {
        in->why = "the heuristic offered one algorithm";
        return ST_OK;
    }
    char *scratch = NULL;
    void *Ct = Cm;
    if (beta != 0.f) {
        const size_t es = tc == CUDA_R_32F ? 4 : 2;
        const size_t extent = ((size_t)(batch > 1 ? batch - 1 : 0) * (size_t)sC + (size_t)(n - 1) * ldc + m) * es;
        if (cudaMallocAsync((void **)&scratch, extent + 256, e->stream) != cudaSuccess ||
            cudaMemsetAsync(scratch, 0, extent + 256, e->stream) != cudaSuccess) {
            (void)cudaGetLastError(); /* an allocation failure is not sticky */
            if (scratch) (void)cudaFreeAsync(scratch, e->stream);
            in->why = "no device memory for a scratch output to time an accumulating product on";
            return ST_OK;
        }
        Ct = scratch + ((uintptr_t)Cm & 255); /* C's own alignment: the one the heuristic assumed */
    }
    float ms[LT_CANDIDATES];
    int rc = lt_time(e, p, res, nres, A, B, Ct, beta, ms, err);
    if (scratch) (void)cudaFreeAsync(scratch, e->stream);
    if (rc != ST_OK) return rc;
    int first = -1, fastest = -1;
    for (int i = 0; i < nres; i++) {
        if (ms[i] < 0) continue;
        if (first < 0) first = i;
        if (fastest < 0 || ms[i] < ms[fastest]) fastest = i;
    }
    if (first < 0) {
        in->why = "no candidate ran";
        return ST_OK;
    }
    const int chosen = ms[fastest] <= (1.f - LT_MARGIN) * ms[first] ? fastest : first;
    c->algo = res[chosen].algo;
    in->timed = 1;
    in->chosen = chosen;
    in->fastest = fastest;
    in->first_ms = ms[first];
    in->chosen_ms = ms[chosen];
    in->fastest_ms = ms[fastest];
    return ST_OK;
}

/* Makes plan p for key (see lt_gemm; LT_KEY longs, the device last) and
 * chooses its algorithm: the heuristic's first (gemm_lt 1), or with
 * gemm_lt 2 the process-wide choice of key (lt_cache), made here by
 * lt_choose when this is the process's first plan of key. */
int lt_plan_make(engine_cuda_t *e, lt_plan_t *p, const long long *key, cublasOperation_t ta, cublasOperation_t tb,
                 int m, int n, int k, const void *A, int lda, long long sA, const void *B, int ldb, long long sB,
                 void *Cm, int ldc, long long sC, int batch, float beta, cudaDataType_t t, cudaDataType_t tc,
                 char *err)
{
    ST_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    int32_t opa = ta, opb = tb;
    ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    RUN(lt_layout(&p->la, t, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda, batch, sA, err));
    RUN(lt_layout(&p->lb, t, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb, batch, sB, err));
    RUN(lt_layout(&p->lc, tc, m, n, ldc, batch, sC, err));
    lt_cache_t *cache = lt_cache();
    int full = 0;
    if (e->gemm_lt >= 2) {
        std::lock_guard<std::mutex> lock(cache->mu);
        const lt_choice_t *hit = lt_cache_find(cache, key);
        if (hit) {
            p->algo = hit->algo;
            return ST_OK;
        }
        full = cache->n >= LT_CHOICES;
    }
    cublasLtMatmulPreference_t pref;
    ST_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    uint64_t ws = LT_WS_BYTES;
    /* as the cuBLAS handle's DISALLOW_REDUCED_PRECISION_REDUCTION: split-K
     * partial sums are never reduced in the output type (bf16) */
    uint32_t red = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_INPLACE |
                   CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
    uint32_t al[3] = {(uint32_t)lt_align(A), (uint32_t)lt_align(B), (uint32_t)lt_align(Cm)};
    cublasLtMatmulHeuristicResult_t res[LT_CANDIDATES];
    int nres = 0;
    cublasStatus_t hs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (hs == CUBLAS_STATUS_SUCCESS)
        hs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &red, sizeof red);
    if (hs == CUBLAS_STATUS_SUCCESS)
        hs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4);
    if (hs == CUBLAS_STATUS_SUCCESS)
        hs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4);
    if (hs == CUBLAS_STATUS_SUCCESS)
        hs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4);
    if (hs == CUBLAS_STATUS_SUCCESS)
        hs = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[2], 4);
    if (hs == CUBLAS_STATUS_SUCCESS)
        hs = cublasLtMatmulAlgoGetHeuristic(e->lt, p->op, p->la, p->lb, p->lc, p->lc, pref,
                                            e->gemm_lt >= 2 && !full ? LT_CANDIDATES : 1, res, &nres);
    cublasLtMatmulPreferenceDestroy(pref);
    if (hs != CUBLAS_STATUS_SUCCESS || nres == 0)
        return st_fail(err, ST_ECUDA, "cuBLASLt has no algorithm for a %d x %d x %d product (batch %d): %s", m, n, k,
                       batch, cublasGetStatusString(hs));
    p->algo = res[0].algo;
    if (e->gemm_lt < 2 || full) return ST_OK; /* full: the first, untimed (deterministic; see lt_cache) */
    lt_choice_t c;
    RUN(lt_choose(e, p, res, nres, ta, tb, m, n, k, A, B, Cm, ldc, sC, batch, beta, t, tc, &c, err));
    memcpy(c.key, key, sizeof c.key);
    std::lock_guard<std::mutex> lock(cache->mu);
    const lt_choice_t *won = lt_cache_find(cache, key); /* another engine chose meanwhile: its choice holds */
    if (won) {
        p->algo = won->algo;
    } else {
        p->algo = c.algo;
        if (cache->n < LT_CHOICES) cache->c[cache->n++] = c;
        else p->algo = res[0].algo; /* filled meanwhile: as when full */
    }
    return ST_OK;
}

/* C = A op B through cuBLASLt with the cached plan of this shape (made on
 * first use; lt_plan_make). */
int lt_gemm(engine_cuda_t *e, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A,
            int lda, long long sA, const void *B, int ldb, long long sB, void *Cm, int ldc, long long sC, int batch,
            float beta, cudaDataType_t t, cudaDataType_t tc, char *err)
{
    const long long key[LT_KEY] = {ta, tb, m, n, k, lda, ldb, ldc, batch > 1 ? sA : 0, batch > 1 ? sB : 0,
                                   batch > 1 ? sC : 0, batch, (long long)t * 256 + tc, beta != 0.f,
                                   lt_align(A) * 1000 + lt_align(B), lt_align(Cm), e->lt_device};
    lt_plan_t *p = NULL;
    for (int i = 0; i < e->lt_n && !p; i++)
        if (!memcmp(e->lt_plan[i].key, key, sizeof key)) p = &e->lt_plan[i];
    if (!p) {
        if (e->lt_n < LT_PLANS) {
            p = &e->lt_plan[e->lt_n++];
        } else {
            p = &e->lt_plan[e->lt_next];
            e->lt_next = (e->lt_next + 1) % LT_PLANS;
            lt_plan_free(p);
        }
        int rc = lt_plan_make(e, p, key, ta, tb, m, n, k, A, lda, sA, B, ldb, sB, Cm, ldc, sC, batch, beta, t, tc,
                              err);
        if (rc != ST_OK) {
            lt_plan_free(p); /* its key stays zero: m 0 matches no product */
            return rc;
        }
        memcpy(p->key, key, sizeof key);
    }
    const float alpha = 1.f;
    ST_CUBLAS_CHECK(cublasLtMatmul(e->lt, p->op, &alpha, A, p->la, B, p->lb, &beta, Cm, p->lc, Cm, p->lc, &p->algo,
                                e->lt_ws, LT_WS_BYTES, e->stream));
    return ST_OK;
}

/* A and B of storage type T; the output is T, or fp32 when c_f32 (bf16
 * products whose result feeds something sensitive: the decay LoRA, logits).
 * batch > 1: that many products, operand i at A + i sA, B + i sB, C + i sC
 * (strides in elements). */
template <typename T>
int gemm_n(engine_cuda_t *e, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A,
           int lda, long long sA, const void *B, int ldb, long long sB, void *Cm, int ldc, long long sC, int batch,
           float beta, char *err, bool c_f32 = false)
{
    const float alpha = 1.f;
    const cudaDataType_t t = dtype_of<T>(), tc = c_f32 ? CUDA_R_32F : t;
    if (e->gemm_lt)
        return lt_gemm(e, ta, tb, m, n, k, A, lda, sA, B, ldb, sB, Cm, ldc, sC, batch, beta, t, tc, err);
    if (batch > 1)
        ST_CUBLAS_CHECK(cublasGemmStridedBatchedEx(e->blas, ta, tb, m, n, k, &alpha, A, t, lda, sA, B, t, ldb, sB, &beta,
                                                Cm, tc, ldc, sC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    else
        ST_CUBLAS_CHECK(cublasGemmEx(e->blas, ta, tb, m, n, k, &alpha, A, t, lda, B, t, ldb, &beta, Cm, tc, ldc,
                                  CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return ST_OK;
}

template <typename T>
int gemm(engine_cuda_t *e, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A,
         int lda, const void *B, int ldb, void *Cm, int ldc, float beta, char *err, bool c_f32 = false)
{
    return gemm_n<T>(e, ta, tb, m, n, k, A, lda, 0, B, ldb, 0, Cm, ldc, 0, 1, beta, err, c_f32);
}

/* The stride in elements of size es between n pointers that lie equally far
 * apart, or 0 when they do not (then each product is its own call). */
long long common_stride(const void *const *p, int n, size_t es)
{
    const long long d = (const char *)p[1] - (const char *)p[0];
    if (d <= 0 || d % (long long)es) return 0; /* increasing only: negative strides are not documented */
    for (int i = 2; i < n; i++)
        if ((const char *)p[i] - (const char *)p[i - 1] != d) return 0;
    return d / (long long)es;
}

/* How many calls gemm_each makes for these n products:
 * 1 when batching is on and every operand lies a fixed stride apart. */
int products_calls(const engine_cuda_t *e, int n, const void *const *x, const void *const *W, void *const *out)
{
    if (!e->gemm_batch || n < 2) return n;
    return common_stride(x, n, e->esz) && common_stride(W, n, e->esz) && common_stride((const void *const *)out, n, e->esz)
               ? 1
               : n;
}

/* out (R, OUT) = x (R, IN) W^T, W (OUT, IN) */
template <typename T>
int linear_fwd(engine_cuda_t *e, int R, int IN, int OUT, const void *x, const void *W, void *out, char *err,
               bool out_f32 = false)
{
    return gemm<T>(e, CUBLAS_OP_T, CUBLAS_OP_N, OUT, R, IN, W, IN, x, IN, out, OUT, 0.f, err, out_f32);
}

/* dinp (R, IN) = beta dinp + dout (R, OUT) W */
template <typename T>
int linear_bwd(engine_cuda_t *e, int R, int IN, int OUT, const void *dout, const void *W, void *dinp,
               float beta, char *err)
{
    return gemm<T>(e, CUBLAS_OP_N, CUBLAS_OP_N, IN, R, OUT, W, IN, dout, OUT, dinp, IN, beta, err);
}

/* Cm_i = op(A_i) op(B_i) for i < cnt, same shapes: one strided-batched
 * product when products_calls says so (the caller profiles it with that
 * many launches), else one call each. */
template <typename T>
int gemm_each(engine_cuda_t *e, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, int cnt,
              const void *const *A, int lda, const void *const *B, int ldb, void *const *Cm, int ldc, float beta,
              char *err)
{
    if (cnt > 1 && products_calls(e, cnt, B, A, Cm) == 1) {
        const size_t es = e->esz;
        return gemm_n<T>(e, ta, tb, m, n, k, A[0], lda, common_stride(A, cnt, es), B[0], ldb,
                         common_stride(B, cnt, es), Cm[0], ldc, common_stride((const void *const *)Cm, cnt, es), cnt,
                         beta, err);
    }
    for (int i = 0; i < cnt; i++) RUN(gemm<T>(e, ta, tb, m, n, k, A[i], lda, B[i], ldb, Cm[i], ldc, beta, err));
    return ST_OK;
}

/* out_i (R, OUT) = x_i (R, IN) W_i^T for i < n: same-shape projections on
 * different inputs (r, k and v) */
template <typename T>
int linear_fwd_n(engine_cuda_t *e, int n, int R, int IN, int OUT, const void *const *x, const void *const *W,
                 void *const *out, char *err)
{
    return gemm_each<T>(e, CUBLAS_OP_T, CUBLAS_OP_N, OUT, R, IN, n, W, IN, x, IN, out, OUT, 0.f, err);
}

/* dinp_i (R, IN) = dout_i (R, OUT) W_i for i < n (overwritten) */
template <typename T>
int linear_bwd_n(engine_cuda_t *e, int n, int R, int IN, int OUT, const void *const *dout, const void *const *W,
                 void *const *dinp, char *err)
{
    return gemm_each<T>(e, CUBLAS_OP_N, CUBLAS_OP_N, IN, R, OUT, n, W, IN, dout, OUT, dinp, IN, 0.f, err);
}

/* The LoRA activations of one segment, or of two in one launch (s2.n 0:
 * none); forward in place on x, backward dhid (x) *= act'(h). */
template <typename T>
int lora_act(engine_cuda_t *e, bool fwd, st::act_seg_t<T> s1, st::act_seg_t<T> s2, char *err)
{
    const unsigned grid = st::grid_for8(st::act_seg_span(s1) + st::act_seg_span(s2));
    if (fwd)
        PROF(PC_LORA_ACT, 1, st::lora_act_fwd_kernel<T><<<grid, EW_THREADS, 0, e->stream>>>(s1, s2));
    else
        PROF(PC_LORA_ACT, 1, st::lora_act_bwd_kernel<T><<<grid, EW_THREADS, 0, e->stream>>>(s1, s2));
    ST_CUDA_CHECK_LAUNCH("lora_act_kernel");
    return ST_OK;
}
template <typename T> st::act_seg_t<T> act_seg(int R, int D, int act, const void *h, void *x)
{
    return st::act_seg_t<T>{(size_t)R * D, act, (const T *)h, (T *)x};
}

/* x's LoRA up to its hidden layer (the first product and the activation)
 * and the second product, apart: lora_wav_fwd runs the gate's between the
 * others' so that both activations take one launch. */
template <typename T>
int lora_down(engine_cuda_t *e, int R, int C, int D, const void *x, const void *w1, void *hid, char *err)
{
    PROF(PC_GEMM_LORA, 1, RUN(gemm<T>(e, CUBLAS_OP_N, CUBLAS_OP_N, D, R, C, w1, D, x, C, hid, D, 0.f, err)));
    return ST_OK;
}
template <typename T>
int lora_up(engine_cuda_t *e, int R, int C, int D, const void *hid, const void *w2, void *out, char *err,
            bool out_f32 = false)
{
    PROF(PC_GEMM_LORA, 1, RUN(gemm<T>(e, CUBLAS_OP_N, CUBLAS_OP_N, C, R, D, w2, C, hid, D, out, C, 0.f, err, out_f32)));
    return ST_OK;
}

template <typename T>
int lora_fwd(engine_cuda_t *e, int R, int C, int D, const void *x, const void *w1, const void *w2, int act,
             void *hid, void *out, char *err, bool out_f32 = false)
{
    RUN(lora_down<T>(e, R, C, D, x, w1, hid, err));
    if (act) RUN(lora_act<T>(e, true, act_seg<T>(R, D, act, NULL, hid), st::act_seg_t<T>{}, err));
    return lora_up<T>(e, R, C, D, hid, w2, out, err, out_f32);
}

/* The backward in the same halves: dhid = dout w2^T, then (after act') dx
 * = beta dx + dhid w1^T. */
template <typename T>
int lora_dhid(engine_cuda_t *e, int R, int C, int D, const void *w2, const void *dout, void *dhid, char *err)
{
    PROF(PC_GEMM_LORA, 1, RUN(gemm<T>(e, CUBLAS_OP_T, CUBLAS_OP_N, D, R, C, w2, C, dout, C, dhid, D, 0.f, err)));
    return ST_OK;
}
template <typename T>
int lora_dx(engine_cuda_t *e, int R, int C, int D, const void *w1, const void *dhid, void *dx, float beta, char *err)
{
    PROF(PC_GEMM_LORA, 1, RUN(gemm<T>(e, CUBLAS_OP_T, CUBLAS_OP_N, C, R, D, w1, D, dhid, D, dx, C, beta, err)));
    return ST_OK;
}

/* dx = beta dx + (act'(z) * (dout w2^T)) w1^T */
template <typename T>
int lora_bwd(engine_cuda_t *e, int R, int C, int D, const void *w1, const void *w2, int act, const void *hid,
             const void *dout, void *dhid, void *dx, float beta, char *err)
{
    RUN(lora_dhid<T>(e, R, C, D, w2, dout, dhid, err));
    if (act) RUN(lora_act<T>(e, false, act_seg<T>(R, D, act, hid, dhid), st::act_seg_t<T>{}, err));
    return lora_dx<T>(e, R, C, D, w1, dhid, dx, beta, err);
}

/* The gate's LoRA (x g1 -> sigmoid -> g2) where lora_wav_fwd/bwd run it
 * beside the others: its products alone, its activation in their launch. */
struct gate_lora_t {
    int D;
    const void *x;    /* forward: lerp 5 */
    void *hid, *out;  /* forward: ghid (kept), g */
    const void *dout; /* backward: dg */
    void *dhid, *dx;  /* backward: its hidden gradient (scratch), lerp 5's gradient (overwritten) */
};

/* The decay (w) and in-context rate (a) LoRAs together, when their widths
 * agree and gemm_batch is on, and with vbatch the value (v) LoRA too (xv,
 * vhid, vout given; layers after the first): the first products as one 2-
 * or 3-batch product (x: lerps 3, 1, 4, adjacent in the plan; weights v1,
 * w1, a1; with v the hidden layers are the slot's [v | w | a] blocks, else
 * ahid is a scratch), w's tanh and fp32 second product alone, a's second
 * product batched with v's. At R 8192 these thin products cost about as
 * much batched as alone (a 2-batch fills the GPU where one D = 64 product
 * fills half; dev_engine_bench's product table), so each batch saves
 * nearly a product's time. Operands that do not lie one stride apart get
 * one call each (gemm_each). The gate's LoRA (gl) runs between them, so that
 * w's tanh and g's sigmoid take one launch. */
template <typename T>
int lora_wav_fwd(engine_cuda_t *e, int R, int C, int D, const dev_layer_t *p, const void *xv, const void *xw,
                 const void *xa, void *vhid, void *whid, void *ahid, float *wl, void *vout, void *aout,
                 const gate_lora_t &gl, char *err)
{
    const int o = xv ? 0 : 1; /* the first operand: v's, or w's */
    const void *xs[3] = {xv, xw, xa}, *w1s[3] = {p->v1, p->w1, p->a1};
    void *hs[3] = {vhid, whid, ahid};
    PROF(PC_GEMM_LORA, products_calls(e, 3 - o, xs + o, w1s + o, hs + o),
         RUN(gemm_each<T>(e, CUBLAS_OP_N, CUBLAS_OP_N, D, R, C, 3 - o, w1s + o, D, xs + o, C, hs + o, D, 0.f, err)));
    RUN(lora_down<T>(e, R, C, gl.D, gl.x, p->g1, gl.hid, err));
    RUN(lora_act<T>(e, true, act_seg<T>(R, D, st::ACT_TANH, NULL, whid),
                    act_seg<T>(R, gl.D, st::ACT_SIGMOID, NULL, gl.hid), err));
    RUN(lora_up<T>(e, R, C, D, whid, p->w2, wl, err, true));
    const void *h2[2] = {vhid, ahid}, *w2s[2] = {p->v2, p->a2};
    void *o2[2] = {vout, aout};
    PROF(PC_GEMM_LORA, products_calls(e, 2 - o, h2 + o, w2s + o, o2 + o),
         RUN(gemm_each<T>(e, CUBLAS_OP_N, CUBLAS_OP_N, C, R, D, 2 - o, w2s + o, C, h2 + o, D, o2 + o, C, 0.f, err)));
    return lora_up<T>(e, R, C, gl.D, gl.hid, p->g2, gl.out, err);
}

/* Their backward up to the dX of the first products: the hidden gradients
 * from dvl (with_v), dwl and dal (adjacent in the plan) into hid0, hid and
 * hid2 as one product, w's tanh', then w's and a's dX as one product
 * (overwriting dxw, dxa). v's dX (dx_v += hid0 v1^T) is the caller's, after
 * the r/k/v products that overwrite its buffer. The gate's backward (gl)
 * runs whole in here, its sigmoid' in the tanh's launch. */
template <typename T>
int lora_wav_bwd(engine_cuda_t *e, int R, int C, int D, const dev_layer_t *p, bool with_v, const void *whid,
                 void *dxw, void *dxa, const gate_lora_t &gl, char *err)
{
    const int o = with_v ? 0 : 1;
    const void *g2[3] = {e->dvl, e->dwl, e->dal}, *w2s[3] = {p->v2, p->w2, p->a2};
    void *h2[3] = {e->hid0, e->hid, e->hid2};
    RUN(lora_dhid<T>(e, R, C, gl.D, p->g2, gl.dout, gl.dhid, err));
    PROF(PC_GEMM_LORA, products_calls(e, 3 - o, g2 + o, w2s + o, h2 + o),
         RUN(gemm_each<T>(e, CUBLAS_OP_T, CUBLAS_OP_N, D, R, C, 3 - o, w2s + o, C, g2 + o, C, h2 + o, D, 0.f, err)));
    RUN(lora_act<T>(e, false, act_seg<T>(R, D, st::ACT_TANH, whid, e->hid),
                    act_seg<T>(R, gl.D, st::ACT_SIGMOID, gl.hid, gl.dhid), err));
    const void *h1[2] = {e->hid, e->hid2}, *w1s[2] = {p->w1, p->a1};
    void *dxs[2] = {dxw, dxa};
    PROF(PC_GEMM_LORA, products_calls(e, 2, h1, w1s, dxs),
         RUN(gemm_each<T>(e, CUBLAS_OP_T, CUBLAS_OP_N, C, R, D, 2, w1s, D, h1, D, dxs, C, 0.f, err)));
    return lora_dx<T>(e, R, C, gl.D, p->g1, gl.dhid, gl.dx, 0.f, err);
}

/* ---- WKV7 by storage type ---- */

int wkv_fwd(int B, int T, int H, const float *r, const float *w, const float *k, const float *v,
            const float *a, const float *b, const float *s0, float *y, float *sf, float *ck, float *sa,
            cudaStream_t st, char *err)
{
    return wkv7_forward_cuda(B, T, H, r, w, k, v, a, b, s0, y, sf, ck, wkv7_cuda_ckpt_every(0), sa, st, err);
}
int wkv_fwd(int B, int T, int H, const __nv_bfloat16 *r, const float *w, const __nv_bfloat16 *k,
            const __nv_bfloat16 *v, const __nv_bfloat16 *a, const __nv_bfloat16 *b, const float *s0,
            __nv_bfloat16 *y, float *sf, float *ck, float *sa, cudaStream_t st, char *err)
{
    return wkv7_forward_cuda_bf16(B, T, H, r, w, k, v, a, b, s0, y, sf, ck, wkv7_cuda_ckpt_every(1), sa, st, err);
}
int wkv_bwd(int B, int T, int H, const float *r, const float *w, const float *k, const float *v,
            const float *a, const float *b, const float *ck, const float *sa, const float *dy, float *dr,
            float *dw, float *dk, float *dv, float *da, float *db, float *ds0, cudaStream_t st, char *err)
{
    return wkv7_backward_cuda(B, T, H, r, w, k, v, a, b, ck, wkv7_cuda_ckpt_every(0), sa, dy, dr, dw, dk, dv, da, db,
                              ds0, st, err);
}
int wkv_bwd(int B, int T, int H, const __nv_bfloat16 *r, const float *w, const __nv_bfloat16 *k,
            const __nv_bfloat16 *v, const __nv_bfloat16 *a, const __nv_bfloat16 *b, const float *ck,
            const float *sa, const __nv_bfloat16 *dy, __nv_bfloat16 *dr, float *dw,
            __nv_bfloat16 *dk, __nv_bfloat16 *dv, __nv_bfloat16 *da, __nv_bfloat16 *db, float *ds0,
            cudaStream_t st, char *err)
{
    return wkv7_backward_cuda_bf16(B, T, H, r, w, k, v, a, b, ck, wkv7_cuda_ckpt_every(1), sa, dy, dr, dw, dk, dv, da,
                                   db, ds0, st, err);
}

/* ---- optional methods of SPEC section 4: observer, kernel-expanded state ----
 * methods_begin sets this run's switches and uploads U0 and the support
 * vectors; methods_fwd / methods_bwd run right after each layer's WKV
 * forward / backward; methods_head is the head's loss for one chunk of rows;
 * methods_sums and methods_end bring the CE/KL split and dU0 back. */

int methods_begin(engine_cuda_t *e, const engine_batch_t *bt, bool backward, char *err)
{
    methods_cuda_t *mt = &e->meth;
    const rwkv_config_t *c = &e->m->cfg;
    const size_t maxR = (size_t)e->maxB * e->maxT, V = c->vocab;
    mt->ks = bt->kstate;
    mt->dev_teacher = bt->teacher ? engine_cuda_of(bt->teacher) : NULL;
    /* alpha 1 is plain CE, as on the CPU; a top-k teacher is used instead of full rows when set (engine.h) */
    mt->topk = bt->teacher_topk != NULL && bt->obs_alpha < 1.0f;
    mt->obs = (bt->teacher_logits != NULL || mt->dev_teacher != NULL || mt->topk) && bt->obs_alpha < 1.0f;
    if (mt->topk) mt->dev_teacher = NULL;
    mt->hid_R = 0; /* any run of this engine ends what a teacher forward kept */
    if (mt->obs && mt->dev_teacher) {
        const engine_cuda_t *te = mt->dev_teacher;
        if (te == e || te->bf16 != e->bf16 || te->m->cfg.vocab != c->vocab)
            return st_fail(err, ST_EINVAL, "the observer's teacher engine must be another engine of the same "
                           "precision and vocabulary");
        if (te->meth.hid_R != bt->B * bt->T)
            return st_fail(err, ST_EINVAL, "the observer's teacher engine has not run engine_teacher_forward on "
                           "this batch");
    }
    mt->rec_out = bt->receptance;
    mt->want_dU0 = mt->ks && backward && bt->dU0;
    if (mt->ks) {
        const int M = mt->ks->M, H = c->n_head;
        const size_t nU = (size_t)c->n_layer * H * WKV7_CUDA_N * M;
        if (M > mt->ks_M) { /* first use, or more features than before: (re)allocate */
            cudaFree(mt->ks_mem);
            free(mt->h_dU0);
            mt->ks_mem = NULL;
            mt->ks_M = 0;
            mt->h_dU0 = (float *)malloc(nU * 4);
            if (!mt->h_dU0) return st_fail(err, ST_ENOMEM, "out of host memory for the kernel-expanded state's dU0");
            const size_t nb = st::rbf_cuda_buf_floats(maxR, H, M);
            const size_t bytes = (3 * nU + nb) * 4;
            if (cudaMalloc((void **)&mt->ks_mem, bytes) != cudaSuccess) {
                cudaGetLastError(); /* clear it: the engine stays usable without the method */
                mt->ks_mem = NULL;
                return st_fail(err, ST_ENOMEM, "the kernel-expanded state with %d features needs %.2f GB more device "
                               "memory than the engine has free", M, bytes / 1e9);
            }
            mt->ks_bytes = bytes;
            mt->ks_M = M;
            float *p = (float *)mt->ks_mem;
            mt->U0 = p; p += nU;
            mt->sv = p; p += nU;
            mt->dU0 = p; p += nU;
            st::rbf_cuda_bufs_t *b = &mt->bufs;
            b->rn = p; p += maxR * H * WKV7_CUDA_N;
            b->z = p; p += maxR * H * WKV7_CUDA_N;
            b->inv = p; p += maxR * H;
            b->mdec = p; p += maxR * H;
            b->d = p; p += maxR * H;
            b->q = p; p += maxR * H;
            b->phi = p; p += maxR * H * M;
            b->dphi = p;
        }
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->U0, mt->ks->U0, nU * 4, cudaMemcpyHostToDevice, e->stream));
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->sv, mt->ks->support, nU * 4, cudaMemcpyHostToDevice, e->stream));
        if (mt->want_dU0) ST_CUDA_CHECK(cudaMemsetAsync(mt->dU0, 0, nU * 4, e->stream));
    }
    if (mt->obs && !mt->obs_mem) {
        const size_t bytes = 2 * maxR * 4;
        if (!mt->h_ce) mt->h_ce = (float *)malloc(maxR * 4);
        if (!mt->h_kl) mt->h_kl = (float *)malloc(maxR * 4);
        if (!mt->h_ce || !mt->h_kl) return st_fail(err, ST_ENOMEM, "out of host memory for the observer's sums");
        if (cudaMalloc((void **)&mt->obs_mem, bytes) != cudaSuccess) {
            cudaGetLastError(); /* clear it: the engine stays usable without the method */
            mt->obs_mem = NULL;
            return st_fail(err, ST_ENOMEM, "the observer needs %.2f MB more device memory than the engine has free",
                           bytes / 1e6);
        }
        mt->obs_bytes += bytes;
        mt->row_ce = (float *)mt->obs_mem;
        mt->row_kl = mt->row_ce + maxR;
    }
    if (mt->obs && !mt->topk && !mt->teacher) { /* full teacher rows: one chunk of them (256 MB at most) */
        const size_t bytes = (size_t)e->head_chunk * V * 4;
        if (cudaMalloc((void **)&mt->teacher, bytes) != cudaSuccess) {
            cudaGetLastError();
            mt->teacher = NULL;
            return st_fail(err, ST_ENOMEM, "the observer needs %.2f GB more device memory (a chunk of teacher logits) "
                           "than the engine has free", bytes / 1e9);
        }
        mt->obs_bytes += bytes;
    }
    if (mt->topk) { /* the teacher's top-k of this batch's rows: B T k values and ids, uploaded once per run */
        const int K = bt->teacher_k;
        if (K > mt->tk_K) { /* first use, or a larger k than before */
            cudaFree(mt->tk_mem);
            mt->tk_mem = NULL;
            mt->obs_bytes -= (size_t)mt->tk_K * maxR * 8;
            mt->tk_K = 0;
            const size_t bytes = (size_t)K * maxR * 8;
            if (cudaMalloc((void **)&mt->tk_mem, bytes) != cudaSuccess) {
                cudaGetLastError();
                mt->tk_mem = NULL;
                return st_fail(err, ST_ENOMEM, "the observer's top-%d teacher logits need %.2f GB more device memory "
                               "than the engine has free", K, bytes / 1e9);
            }
            mt->obs_bytes += bytes;
            mt->tk_K = K;
            mt->tk_val = (float *)mt->tk_mem;
            mt->tk_id = (int32_t *)(mt->tk_val + (size_t)K * maxR);
        }
        const size_t n = (size_t)bt->B * bt->T * K;
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->tk_val, bt->teacher_topk, n * 4, cudaMemcpyHostToDevice, e->stream));
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->tk_id, bt->teacher_topk_ids, n * 4, cudaMemcpyHostToDevice, e->stream));
    }
    return ST_OK;
}

/* After layer l's WKV forward: its receptances to the host when asked, and
 * the kernel-expanded term into y (before GroupNorm, as on the CPU). */
template <typename T>
int methods_fwd(engine_cuda_t *e, int l, int B, int Tn, const T *r, const float *w, T *y, char *err)
{
    methods_cuda_t *mt = &e->meth;
    const rwkv_config_t *c = &e->m->cfg;
    const int H = c->n_head, L = c->n_layer;
    const size_t RC = (size_t)B * Tn * c->n_embd;
    if (mt->rec_out) {
        const void *src = r;
        if (e->bf16) { /* e->dx is dead during the forward: the fp32 copy goes there */
            st::convert_kernel<float, T><<<st::grid_for8(RC), EW_THREADS, 0, e->stream>>>(RC, r, e->dx);
            ST_CUDA_CHECK_LAUNCH("convert_kernel");
            src = e->dx;
        }
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->rec_out + (size_t)l * RC, src, RC * 4, cudaMemcpyDeviceToHost, e->stream));
        ST_CUDA_CHECK(cudaStreamSynchronize(e->stream)); /* e->dx is reused by the next layer */
        if (l == L - 1) mt->rec_out = NULL; /* a recomputed forward in the backward copies nothing */
    }
    if (!mt->ks) return ST_OK;
    const size_t lo = (size_t)l * H * WKV7_CUDA_N * mt->ks->M;
    return rbf_forward_cuda<T>(e->blas, e->stream, B, Tn, H, mt->ks->M, mt->ks->gamma, r, w, mt->U0 + lo, mt->sv + lo,
                               y, &mt->bufs, err);
}

/* After layer l's WKV backward: the kernel-expanded term's shares of dr, dw
 * and dU0 (before layer 0 returns: its dU0 counts too). */
template <typename T>
int methods_bwd(engine_cuda_t *e, int l, int B, int Tn, const T *r, const float *w, const T *dy, T *dr, float *dw,
                char *err)
{
    methods_cuda_t *mt = &e->meth;
    if (!mt->ks) return ST_OK;
    const int H = e->m->cfg.n_head;
    const size_t lo = (size_t)l * H * WKV7_CUDA_N * mt->ks->M;
    return rbf_backward_cuda<T>(e->blas, e->stream, B, Tn, H, mt->ks->M, mt->ks->gamma, r, w, mt->U0 + lo,
                                mt->sv + lo, dy, dr, dw, mt->want_dU0 ? mt->dU0 + lo : NULL, &mt->bufs, err);
}

/* The loss of head rows r0 .. r0 + n - 1 from e->logits (or, with
 * lowp_logits, from the bf16 logits in e->dlogits: plain CE only): plain CE,
 * or the observer objective against the teacher's top-k (uploaded by
 * methods_begin) or its full rows (computed or uploaded here). */
template <typename T>
int methods_head(engine_cuda_t *e, const engine_batch_t *bt, int r0, int n, bool backward, bool lowp_logits,
                 char *err)
{
    methods_cuda_t *mt = &e->meth;
    const int V = e->m->cfg.vocab, R = bt->B * bt->T;
    const int32_t *tg = bt->targets ? e->targets + r0 : NULL;
    cudaStream_t st = e->stream;
    if (lowp_logits) { /* in place: each thread writes only what it has read */
        st::ce_kernel<T><<<n, st::CE_THREADS, 0, st>>>(V, (const T *)e->dlogits, (T *)e->dlogits, tg,
                                                       e->row_loss + r0, e->row_correct + r0, backward);
        ST_CUDA_CHECK_LAUNCH("ce_kernel");
        return ST_OK;
    }
    if (!mt->obs) {
        st::ce_kernel<T><<<n, st::CE_THREADS, 0, st>>>(V, e->logits, (T *)e->dlogits, tg, e->row_loss + r0,
                                                       e->row_correct + r0, backward);
        ST_CUDA_CHECK_LAUNCH("ce_kernel");
        return ST_OK;
    }
    if (mt->topk) {
        const size_t o = (size_t)r0 * bt->teacher_k;
        st::observer_topk_kernel<T><<<n, st::OBS_THREADS, 0, st>>>(V, bt->teacher_k, e->logits, mt->tk_val + o,
                                                                   mt->tk_id + o, (T *)e->dlogits, tg, bt->obs_alpha,
                                                                   bt->obs_temperature, e->row_loss + r0,
                                                                   mt->row_ce + r0, mt->row_kl + r0,
                                                                   e->row_correct + r0, backward);
        ST_CUDA_CHECK_LAUNCH("observer_topk_kernel");
    } else if (mt->dev_teacher) { /* the teacher's logits of these rows: its head input times its head, fp32 out */
        const engine_cuda_t *te = mt->dev_teacher;
        const int Ct = te->m->cfg.n_embd;
        RUN(linear_fwd<T>(e, n, Ct, V, (const T *)te->lnout + (size_t)r0 * Ct, te->head, mt->teacher, err, true));
    } else {
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->teacher, bt->teacher_logits + (size_t)r0 * V, (size_t)n * V * 4,
                                      cudaMemcpyHostToDevice, st));
    }
    if (!mt->topk) {
        st::observer_kernel<T><<<n, st::OBS_THREADS, 0, st>>>(V, e->logits, mt->teacher, (T *)e->dlogits, tg,
                                                              bt->obs_alpha, bt->obs_temperature, e->row_loss + r0,
                                                              mt->row_ce + r0, mt->row_kl + r0, e->row_correct + r0,
                                                              backward);
        ST_CUDA_CHECK_LAUNCH("observer_kernel");
    }
    if (r0 + n == R) { /* the last chunk: the CE/KL split comes back with the row losses */
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->h_ce, mt->row_ce, (size_t)R * 4, cudaMemcpyDeviceToHost, st));
        ST_CUDA_CHECK(cudaMemcpyAsync(mt->h_kl, mt->row_kl, (size_t)R * 4, cudaMemcpyDeviceToHost, st));
    }
    return ST_OK;
}

/* ce_sum and kl_sum (engine.h) once the row losses are on the host. */
void methods_sums(engine_cuda_t *e, engine_batch_t *bt)
{
    const methods_cuda_t *mt = &e->meth;
    if (!mt->obs) {
        bt->ce_sum = bt->loss_sum;
        return;
    }
    double ce = 0, kl = 0;
    const int R = bt->B * bt->T;
    if (bt->targets)
        for (int i = 0; i < R; i++)
            if (bt->targets[i] >= 0) {
                ce += mt->h_ce[i];
                kl += mt->h_kl[i];
            }
    bt->ce_sum = ce;
    bt->kl_sum = kl;
}

/* After the backward: dU0 (+=) to the caller. */
int methods_end(engine_cuda_t *e, engine_batch_t *bt, char *err)
{
    methods_cuda_t *mt = &e->meth;
    if (!mt->want_dU0) return ST_OK;
    const rwkv_config_t *c = &e->m->cfg;
    const size_t nU = (size_t)c->n_layer * c->n_head * WKV7_CUDA_N * mt->ks->M;
    ST_CUDA_CHECK(cudaMemcpyAsync(mt->h_dU0, mt->dU0, nU * 4, cudaMemcpyDeviceToHost, e->stream));
    ST_CUDA_CHECK(cudaStreamSynchronize(e->stream));
    for (size_t i = 0; i < nU; i++) bt->dU0[i] += mt->h_dU0[i];
    return ST_OK;
}

void methods_free(engine_cuda_t *e)
{
    methods_cuda_t *mt = &e->meth;
    cudaFree(mt->ks_mem);
    cudaFree(mt->obs_mem);
    cudaFree(mt->teacher);
    cudaFree(mt->tk_mem);
    free(mt->h_dU0);
    free(mt->h_ce);
    free(mt->h_kl);
    memset(mt, 0, sizeof *mt);
}

/* ---- one layer ---- */

template <typename T> T *lay(void *base, int l, size_t per) { return (T *)base + (size_t)l * per; }
/* Slot sl's decay-LoRA hidden layer (R, d_decay); with vbatch the middle
 * block of [v | w | a], so v's is whid - Rp D and a's whid + Rp D. */
template <typename T> T *whid_of(const engine_cuda_t *e, int sl, size_t Rp)
{
    const size_t D = e->m->cfg.d_decay;
    return e->vbatch ? (T *)e->whid + (3 * (size_t)sl + 1) * Rp * D : (T *)e->whid + (size_t)sl * Rp * D;
}

/* Layer l's activations that the forward writes and the backward reads:
 * the fp32 residual stream at its input (xin), after the time mix (xmid)
 * and at its output (xout), and the per-layer tensors of its slot (one slot
 * for all layers in recompute mode). */
template <typename T> struct layer_acts_t {
    float *xin, *xmid, *xout, *w, *wl, *ckpt, *sa;
    T *r, *kraw, *kf, *kk, *a, *v, *vraw, *vs, *g, *y, *whid, *ghid, *kpre;
    T *wa, *wb; /* the WKV's a and b inputs */
};
template <typename T> layer_acts_t<T> layer_acts(engine_cuda_t *e, int l)
{
    const rwkv_config_t *c = &e->m->cfg;
    const size_t Rp = (size_t)e->maxB * e->maxT, RCp = Rp * c->n_embd;
    const int sl = e->recompute ? 0 : l;
    layer_acts_t<T> A;
    A.xin = e->x_res + l * RCp;
    A.xmid = e->x_mid + sl * RCp;
    A.xout = e->x_res + (l + 1) * RCp;
    A.w = e->w + sl * RCp;
    A.wl = e->wl + sl * RCp;
    A.ckpt = e->ckpt + (size_t)sl * ckpt_floats(e);
    A.sa = e->sa + sl * RCp;
    A.r = lay<T>(e->r, sl, RCp);
    A.kraw = lay<T>(e->kraw, sl, RCp);
    A.kf = lay<T>(e->kf, sl, RCp);
    A.kk = lay<T>(e->kk, sl, RCp);
    A.a = lay<T>(e->a, sl, RCp);
    A.v = lay<T>(e->v, sl, RCp);
    A.vraw = lay<T>(e->vraw, sl, RCp);
    A.vs = lay<T>(e->vs, sl, RCp);
    A.g = lay<T>(e->g, sl, RCp);
    A.y = lay<T>(e->y, sl, RCp);
    A.whid = whid_of<T>(e, sl, Rp);
    A.ghid = lay<T>(e->ghid, sl, Rp * c->d_gate);
    A.kpre = lay<T>(e->kpre, sl, Rp * c->ffn_dim);
    A.wa = lay<T>(e->wa, sl, RCp);
    A.wb = lay<T>(e->wb, sl, RCp);
    return A;
}

/* Layer l's forward. ln_in_done: the six lerps and layer l's LN1 statistics
 * already hold the token shift of LN1(x_res[l]) (the previous layer's fused
 * end made them). fuse_out: the end-of-layer residual add also computes the
 * next LayerNorm in the same pass (the next layer's LN1 and its token shift
 * into the lerps, or after the last layer ln_out into lnout); the recompute
 * pass in the backward refills one layer alone and passes false to both.
 * Every LayerNorm but ln0 and ln_out feeds a token shift alone: they run as
 * one kernel (ln_shift.cuh), and h never reaches memory. */
template <typename T>
int layer_fwd(engine_cuda_t *e, int l, int B, int Tn, float *final_state, bool dbp, bool ln_in_done, bool fuse_out,
              char *err)
{
    const rwkv_config_t *c = &e->m->cfg;
    const dev_layer_t *p = &e->L[l];
    const int C = c->n_embd, H = c->n_head, F = c->ffn_dim, R = B * Tn;
    const size_t RC = (size_t)R * C, Rp = (size_t)e->maxB * e->maxT;
    const size_t HNN = rwkv_state_layer_size(c);
    cudaStream_t st = e->stream;
    const int sl = e->recompute ? 0 : l; /* slot of the per-layer activations */
    const layer_acts_t<T> A = layer_acts<T>(e, l);
    T *tmp = (T *)e->tmp, *oin = (T *)e->oin;
    T **lerp = (T **)e->lerp;
    st::ptr6_t<T> outs;
    for (int i = 0; i < 6; i++) outs.p[i] = lerp[i];

    if (!ln_in_done) {
        PROF(PC_LN, 1,
             st::ln_shift_fwd_kernel<T, T, 6><<<R, st::ln_threads(C), 0, st>>>(
                 C, Tn, A.xin, NULL, NULL, p->ln1_w, p->ln1_b, LN_EPS, mix6_of(p), outs, e->ln1_mean + sl * Rp,
                 e->ln1_rstd + sl * Rp));
        ST_CUDA_CHECK_LAUNCH("ln_shift_fwd_kernel");
    }
    {
        const void *xs[3] = {lerp[0], lerp[2], lerp[3]}, *ws[3] = {p->receptance, p->key, p->value};
        void *outs3[3] = {A.r, A.kraw, A.vraw};
        PROF(PC_GEMM_RKV, products_calls(e, 3, xs, ws, outs3), RUN(linear_fwd_n<T>(e, 3, R, C, C, xs, ws, outs3, err)));
    }
    const bool vwa = e->vbatch && l > 0; /* layer 0 has no v LoRA */
    const bool wav = e->wav != 0; /* the gate's LoRA in there */
    const gate_lora_t gl = {c->d_gate, lerp[5], A.ghid, A.g, NULL, NULL, NULL};
    if (vwa) {
        const size_t hb = Rp * c->d_decay; /* the [v | w | a] blocks */
        RUN(lora_wav_fwd<T>(e, R, C, c->d_decay, p, lerp[3], lerp[1], lerp[4], A.whid - hb, A.whid, A.whid + hb, A.wl,
                            A.vs, tmp, gl, err));
    } else if (wav) {
        RUN(lora_wav_fwd<T>(e, R, C, c->d_decay, p, NULL, lerp[1], lerp[4], NULL, A.whid, e->hid, A.wl, NULL, tmp, gl,
                            err));
    } else {
        RUN(lora_fwd<T>(e, R, C, c->d_decay, lerp[1], p->w1, p->w2, st::ACT_TANH, A.whid, A.wl, err, true));
        RUN(lora_fwd<T>(e, R, C, c->d_aaa, lerp[4], p->a1, p->a2, 0, e->hid, tmp, err));
    }
    const int RH = R * H;
    PROF(PC_KK, 1,
         st::timemix_fwd_kernel<T><<<(RH + 7) / 8, 256, 0, st>>>(RH, H, A.wl, tmp, A.kraw, p->w0, p->a0, p->k_k,
                                                                 p->k_a, A.w, A.a, A.kk, A.kf, A.wa, A.wb));
    ST_CUDA_CHECK_LAUNCH("timemix_fwd_kernel");
    if (l == 0) {
        PROF(PC_VMIX, 2, ST_CUDA_CHECK(cudaMemcpyAsync(A.v, A.vraw, RC * sizeof(T), cudaMemcpyDeviceToDevice, st));
             /* v_first lives apart: in recompute mode layer 0's slot is reused */
             ST_CUDA_CHECK(cudaMemcpyAsync(e->v_first, A.vraw, RC * sizeof(T), cudaMemcpyDeviceToDevice, st)));
    } else {
        if (!vwa) RUN(lora_fwd<T>(e, R, C, c->d_mv, lerp[3], p->v1, p->v2, 0, e->hid, A.vs, err));
        PROF(PC_VMIX, 1,
             st::vmix_fwd_kernel<T><<<st::grid_for8(RC), EW_THREADS, 0, st>>>(RC, C, A.vraw, (const T *)e->v_first,
                                                                              p->v0, A.vs, A.v));
        ST_CUDA_CHECK_LAUNCH("vmix_fwd_kernel");
    }
    if (!wav) RUN(lora_fwd<T>(e, R, C, c->d_gate, lerp[5], p->g1, p->g2, st::ACT_SIGMOID, A.ghid, A.g, err));
    if (e->profile) ST_CUDA_CHECK(cudaEventRecord(e->wkv_ev[0][l], st));
    PROF(PC_WKV, 1, RUN(wkv_fwd(B, Tn, H, A.r, A.w, A.kf, A.v, (const T *)A.wa, (const T *)A.wb, e->state0 + l * HNN,
                                A.y, final_state ? e->sfin : NULL, A.ckpt, A.sa, st, err)));
    if (e->profile) ST_CUDA_CHECK(cudaEventRecord(e->wkv_ev[1][l], st));
    if (e->meth.ks || e->meth.rec_out) PROF(PC_METHODS, 1, RUN(methods_fwd<T>(e, l, B, Tn, A.r, A.w, A.y, err)));
    if (dbp) {
        PROF(PC_DBP, 1,
             st::dbp_q_kernel<T><<<dim3(H, B), st::DBP_N, 0, st>>>(Tn, H, A.r, A.w, (const T *)A.wa,
                                                                   (const T *)A.wb, e->dbp_rows,
                                                                   e->dbp_q + l * HNN));
        ST_CUDA_CHECK_LAUNCH("dbp_q_kernel");
    }
    if (final_state)
        ST_CUDA_CHECK(cudaMemcpy2DAsync(final_state + l * HNN, (size_t)c->n_layer * HNN * 4, e->sfin, HNN * 4,
                                        HNN * 4, B, cudaMemcpyDeviceToHost, st));
    PROF(PC_GN, 1,
         st::groupnorm_fwd_kernel<T><<<(RH + 7) / 8, 256, 0, st>>>(RH, H, A.y, p->ln_x_w, p->ln_x_b, A.r, A.kf, A.v,
                                                                   p->r_k, A.g, e->gn_mean + sl * Rp * H,
                                                                   e->gn_rstd + sl * Rp * H, oin));
    ST_CUDA_CHECK_LAUNCH("groupnorm_fwd_kernel");
    PROF(PC_GEMM_OUT, 1, RUN(linear_fwd<T>(e, R, C, C, oin, p->output, tmp, err)));
    st::mix6_t mk = {};
    mk.m[0] = p->ffn_x_k;
    PROF(PC_LN, 1,
         st::ln_shift_fwd_kernel<T, T, 1><<<R, st::ln_threads(C), 0, st>>>(
             C, Tn, A.xin, tmp, A.xmid, p->ln2_w, p->ln2_b, LN_EPS, mk, outs, e->ln2_mean + sl * Rp,
             e->ln2_rstd + sl * Rp));
    ST_CUDA_CHECK_LAUNCH("ln_shift_fwd_kernel");
    PROF(PC_GEMM_FFN_K, 1, RUN(linear_fwd<T>(e, R, C, F, lerp[0], p->ffn_key, A.kpre, err)));
    size_t RF = (size_t)R * F;
    PROF(PC_RELU2, 1, st::relu2_fwd_kernel<T><<<st::grid_for8(RF), EW_THREADS, 0, st>>>(RF, A.kpre, (T *)e->act));
    ST_CUDA_CHECK_LAUNCH("relu2_fwd_kernel");
    PROF(PC_GEMM_FFN_V, 1, RUN(linear_fwd<T>(e, R, F, C, e->act, p->ffn_value, tmp, err)));
    if (!fuse_out) {
        PROF(PC_RESID, 1,
             st::residual_add_kernel<T><<<st::grid_for8(RC), EW_THREADS, 0, st>>>(RC, A.xmid, tmp, A.xout));
        ST_CUDA_CHECK_LAUNCH("residual_add_kernel");
        return ST_OK;
    }
    /* xout = xmid + tmp and the next LayerNorm of it, one pass (the same
     * arithmetic as the add and the LayerNorm apart): the next layer's LN1
     * with its token shift, or ln_out */
    if (l + 1 == c->n_layer) {
        PROF(PC_LN, 1,
             st::residual_layernorm_fwd_kernel<T, T><<<R, st::ln_threads(C), 0, st>>>(
                 C, A.xmid, tmp, A.xout, e->ln_out_w, e->ln_out_b, LN_EPS, (T *)e->lnout, e->lnout_mean,
                 e->lnout_rstd));
        ST_CUDA_CHECK_LAUNCH("residual_layernorm_fwd_kernel");
        return ST_OK;
    }
    const int sn = e->recompute ? 0 : l + 1; /* the next layer's slot */
    const dev_layer_t *pn = &e->L[l + 1];
    PROF(PC_LN, 1,
         st::ln_shift_fwd_kernel<T, T, 6><<<R, st::ln_threads(C), 0, st>>>(
             C, Tn, A.xmid, tmp, A.xout, pn->ln1_w, pn->ln1_b, LN_EPS, mix6_of(pn), outs, e->ln1_mean + sn * Rp,
             e->ln1_rstd + sn * Rp));
    ST_CUDA_CHECK_LAUNCH("ln_shift_fwd_kernel");
    return ST_OK;
}

/* dx (fp32) as T, for the matrix products: every LayerNorm backward that
 * updates dx writes this copy too (dxt_out), so it is ready when a product
 * reads it (in fp32 mode it is dx itself). */
template <typename T> void *dx_as_t(engine_cuda_t *e) { return e->bf16 ? e->dxT : (void *)e->dx; }
template <typename T> T *dxt_out(engine_cuda_t *e) { return e->bf16 ? (T *)e->dxT : NULL; }

/* e->dx holds dL/dx_res[l+1] on entry and dL/dx_res[l] on exit (not computed
 * for layer 0); ds0 (H, N, N) +=. */
template <typename T>
int layer_bwd(engine_cuda_t *e, int l, int B, int Tn, char *err)
{
    const rwkv_config_t *c = &e->m->cfg;
    const dev_layer_t *p = &e->L[l];
    const int C = c->n_embd, H = c->n_head, F = c->ffn_dim, R = B * Tn;
    const size_t RC = (size_t)R * C, Rp = (size_t)e->maxB * e->maxT;
    const size_t HNN = rwkv_state_layer_size(c);
    cudaStream_t st = e->stream;
    const int sl = e->recompute ? 0 : l; /* slot of the per-layer activations */
    const layer_acts_t<T> A = layer_acts<T>(e, l);
    T **dl = (T **)e->lerp; /* the lerp outputs are dead: they hold their gradients now */
    T *act = (T *)e->act, *oin = (T *)e->oin;
    float *dw = e->dw;
    T *dr = (T *)e->dr, *dk = (T *)e->dk, *dv = (T *)e->dv, *da = (T *)e->da, *db = (T *)e->db;
    const int RH = R * H;

    /* channel mix: dx += LN2'(CMix'(dx)) */
    void *dxt = dx_as_t<T>(e);
    PROF(PC_GEMM_FFN_V, 1, RUN(linear_bwd<T>(e, R, F, C, dxt, p->ffn_value, act, 0.f, err)));
    size_t RF = (size_t)R * F;
    PROF(PC_RELU2, 1, st::relu2_bwd_kernel<T><<<st::grid_for8(RF), EW_THREADS, 0, st>>>(RF, A.kpre, act));
    ST_CUDA_CHECK_LAUNCH("relu2_bwd_kernel");
    PROF(PC_GEMM_FFN_K, 1, RUN(linear_bwd<T>(e, R, C, F, act, p->ffn_key, dl[0], 0.f, err)));
    st::mix6_t mk = {};
    mk.m[0] = p->ffn_x_k;
    st::ptr6_t<T> douts;
    for (int i = 0; i < 6; i++) douts.p[i] = dl[i];
    PROF(PC_LN, 1,
         st::shift_ln_bwd_kernel<T, 1><<<R, st::ln_threads(C), 0, st>>>(C, Tn, A.xmid, p->ln2_w, e->ln2_mean + sl * Rp,
                                                                      e->ln2_rstd + sl * Rp, mk, douts, e->dx,
                                                                      dxt_out<T>(e)));
    ST_CUDA_CHECK_LAUNCH("shift_ln_bwd_kernel");

    /* output projection, GroupNorm + bonus + gate */
    PROF(PC_GEMM_OUT, 1, RUN(linear_bwd<T>(e, R, C, C, dxt, p->output, oin, 0.f, err)));
    PROF(PC_GN, 1,
         st::groupnorm_bwd_kernel<T><<<(RH + 7) / 8, 256, 0, st>>>(
             RH, H, A.y, p->ln_x_w, p->ln_x_b, A.r, A.kf, A.v, p->r_k, A.g, e->gn_mean + sl * Rp * H,
             e->gn_rstd + sl * Rp * H, oin, (T *)e->dy, (T *)e->dbr, (T *)e->dbk, (T *)e->dbv, (T *)e->dg));
    ST_CUDA_CHECK_LAUNCH("groupnorm_bwd_kernel");

    /* WKV7, from the a and b inputs the forward kept */
    const int L = c->n_layer;
    if (e->profile) ST_CUDA_CHECK(cudaEventRecord(e->wkv_ev[0][L + l], st));
    PROF(PC_WKV, 1, RUN(wkv_bwd(B, Tn, H, A.r, A.w, A.kf, A.v, (const T *)A.wa, (const T *)A.wb, A.ckpt, A.sa,
                                (const T *)e->dy, dr, dw, dk, dv, da, db, e->ds0 + l * HNN, st, err)));
    if (e->profile) ST_CUDA_CHECK(cudaEventRecord(e->wkv_ev[1][L + l], st));
    if (e->meth.ks) PROF(PC_METHODS, 1, RUN(methods_bwd<T>(e, l, B, Tn, A.r, A.w, (const T *)e->dy, dr, dw, err)));
    if (l == 0) return ST_OK; /* nothing below layer 0's WKV depends on S0 */
    /* the GroupNorm bonus's shares: into dr here; dk's and dv's are added
     * where timemix_bwd and vmix_bwd read them */
    PROF(PC_RESID, 1, st::add_kernel<T><<<st::grid_for8(RC), EW_THREADS, 0, st>>>(RC, dr, (const T *)e->dbr));
    ST_CUDA_CHECK_LAUNCH("add_kernel");

    /* back to the six lerp outputs. With gemm_batch the dX products of r,
     * k and v wait until all three gradients exist and run as one batched
     * product into lerps 0, 2 and 3 (overwriting), before v's LoRA adds its
     * share to lerp 3; otherwise each runs as soon as its gradient exists
     * (value's then adds to the LoRA's share) */
    const bool rkv_late = e->gemm_batch != 0;
    const bool wav = e->wav != 0; /* the gate's LoRA in there */
    const gate_lora_t gl = {c->d_gate, NULL, A.ghid, NULL, e->dg, e->dghid, dl[5]};
    if (!wav)
        RUN(lora_bwd<T>(e, R, C, c->d_gate, p->g1, p->g2, st::ACT_SIGMOID, A.ghid, e->dg, e->hid, dl[5], 0.f, err));
if (!rkv_late) PROF(PC_GEMM_RKV, 1, RUN(linear_bwd<T>(e, R, C, C, dr, p->receptance, dl[0], 0.f, err)));
    PROF(PC_KK, 1,
         st::timemix_bwd_kernel<T><<<(RH + 7) / 8, 256, 0, st>>>(RH, H, A.wl, p->w0, A.a, A.kk, A.kraw, p->k_k,
                                                                 p->k_a, dw, dk, (const T *)e->dbk, da, db, (T *)e->dwl,
                                                                 (T *)e->dal, (T *)e->dkraw));
    ST_CUDA_CHECK_LAUNCH("timemix_bwd_kernel");
    /* vbatch: v's gradient first, so that its LoRA joins w's and a's */
    auto vmix_bwd = [&]() -> int {
        PROF(PC_VMIX, 1,
             st::vmix_bwd_kernel<T><<<st::grid_for8(RC), EW_THREADS, 0, st>>>(RC, A.vraw, (const T *)e->v_first, A.vs,
                                                                              dv, (const T *)e->dbv, (T *)e->dvraw,
                                                                              (T *)e->dvl));
        ST_CUDA_CHECK_LAUNCH("vmix_bwd_kernel");
        return ST_OK;
    };
    if (e->vbatch) {
        RUN(vmix_bwd());
        RUN(lora_wav_bwd<T>(e, R, C, c->d_decay, p, true, A.whid, dl[1], dl[4], gl, err));
    } else if (wav) {
        RUN(lora_wav_bwd<T>(e, R, C, c->d_decay, p, false, A.whid, dl[1], dl[4], gl, err));
    } else {
        RUN(lora_bwd<T>(e, R, C, c->d_decay, p->w1, p->w2, st::ACT_TANH, A.whid, e->dwl, e->hid, dl[1], 0.f, err));
        RUN(lora_bwd<T>(e, R, C, c->d_aaa, p->a1, p->a2, 0, NULL, e->dal, e->hid, dl[4], 0.f, err));
    }
    if (!rkv_late) PROF(PC_GEMM_RKV, 1, RUN(linear_bwd<T>(e, R, C, C, e->dkraw, p->key, dl[2], 0.f, err)));
    if (!e->vbatch) RUN(vmix_bwd());
    if (rkv_late) {
        const void *gs[3] = {dr, e->dkraw, e->dvraw}, *ws[3] = {p->receptance, p->key, p->value};
        void *dins[3] = {dl[0], dl[2], dl[3]};
        PROF(PC_GEMM_RKV, products_calls(e, 3, gs, ws, dins), RUN(linear_bwd_n<T>(e, 3, R, C, C, gs, ws, dins, err)));
        const int DV = e->vwidth;
        if (e->vbatch) /* v's hidden gradient is in hid0 already (lora_wav_bwd) */
            PROF(PC_GEMM_LORA, 1,
                 RUN(gemm<T>(e, CUBLAS_OP_T, CUBLAS_OP_N, C, R, DV, p->v1, DV, e->hid0, DV, dl[3], C, 1.f, err)));
        else
            RUN(lora_bwd<T>(e, R, C, c->d_mv, p->v1, p->v2, 0, NULL, e->dvl, e->hid, dl[3], 1.f, err));
    } else {
        RUN(lora_bwd<T>(e, R, C, c->d_mv, p->v1, p->v2, 0, NULL, e->dvl, e->hid, dl[3], 0.f, err));
        PROF(PC_GEMM_RKV, 1, RUN(linear_bwd<T>(e, R, C, C, e->dvraw, p->value, dl[3], 1.f, err)));
    }
    PROF(PC_LN, 1,
         st::shift_ln_bwd_kernel<T, 6><<<R, st::ln_threads(C), 0, st>>>(C, Tn, A.xin, p->ln1_w, e->ln1_mean + sl * Rp,
                                                                      e->ln1_rstd + sl * Rp, mix6_of(p), douts,
                                                                      e->dx, dxt_out<T>(e)));
    ST_CUDA_CHECK_LAUNCH("shift_ln_bwd_kernel");
    return ST_OK;
}

/* ---- CUDA graphs (engine_cuda_set_graphs) ----
 * A step is host copies in, the forward + head and the backward queued back
 * to back, the losses out (the host checks them before any gradient reaches
 * its buffers), dS0 out. The two parts between the copies are replayed from
 * graphs: a few thousand launches of small kernels each, whose launch gaps a
 * graph removes. Every pointer and
 * size a captured launch uses is fixed for the engine's life except those in
 * the key: the part, B, T, whether there are targets, the backward, DBP, the
 * address dS0 accumulates into (resident runs pass the caller's) and the
 * teacher-forward switch. The host copies stay outside the graphs (the
 * caller's buffers are pageable and change from run to run). */

void graph_key(uint64_t key[8], int part, const engine_batch_t *bt, bool backward, bool dbp, const engine_cuda_t *e)
{
    key[0] = (uint64_t)part;
    key[1] = (uint64_t)bt->B;
    key[2] = (uint64_t)bt->T;
    key[3] = bt->targets != NULL;
    key[4] = backward;
    key[5] = dbp ? (uint64_t)(uintptr_t)e->dbp_q : 0; /* the address Q accumulates into (resident Q: the caller's) */
    key[6] = (uint64_t)(uintptr_t)e->ds0;
    key[7] = (uint64_t)e->meth.head_input_only;
}

/* Runs body (the launches of one part of a step) through a graph when it
 * may: the first run of a key is eager (lazy module loading and cuBLAS's
 * first calls happen outside any capture), the second is captured and
 * replayed, and so is every later one. A capture that fails (an operation
 * that cannot be captured) turns graphs off for this engine and runs body
 * eagerly, where a real error reports itself. */
template <typename F>
int graphed(engine_cuda_t *e, const uint64_t key[8], bool eligible, F body, char *err)
{
    if (!eligible || !e->graphs) return body();
    engine_cuda::graph_slot_t *s = NULL, *lru = &e->gslot[0];
    for (auto &g : e->gslot) {
        if (g.seen && !memcmp(g.key, key, sizeof g.key)) {
            s = &g;
            break;
        }
        if (g.used < lru->used) lru = &g; /* unused slots (used 0) go first */
    }
    e->gclock++;
    if (!s) {
        if (lru->exec) cudaGraphExecDestroy(lru->exec);
        memset(lru, 0, sizeof *lru);
        memcpy(lru->key, key, sizeof lru->key);
        lru->seen = 1;
        lru->used = e->gclock;
        return body();
    }
    s->used = e->gclock;
    if (!s->exec) {
        cudaGraph_t g = NULL;
        cudaGraphExec_t x = NULL;
        int rc = ST_OK;
        cudaError_t ce = cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal);
        if (ce == cudaSuccess) {
            rc = body();
            cudaError_t ce2 = cudaStreamEndCapture(e->stream, &g); /* always: the stream leaves capture mode */
            ce = ce2;
        }
        if (rc == ST_OK && ce == cudaSuccess) ce = cudaGraphInstantiate(&x, g, 0);
        if (g) cudaGraphDestroy(g);
        if (rc != ST_OK || ce != cudaSuccess) {
            (void)cudaGetLastError(); /* capture errors are not sticky: clear and go on without graphs */
            if (x) cudaGraphExecDestroy(x);
            e->graphs = 0;
            return body();
        }
        s->exec = x;
    }
    ST_CUDA_CHECK(cudaGraphLaunch(s->exec, e->stream));
    e->greplays++;
    return ST_OK;
}

void graphs_free(engine_cuda_t *e)
{
    for (auto &g : e->gslot) {
        if (g.exec) cudaGraphExecDestroy(g.exec);
        memset(&g, 0, sizeof g);
    }
}

/* Embedding, every layer's forward and the head (loss and, with backward,
 * dL/d(head input) in e->dxh): the first graphed part of a step. */
template <typename T>
int run_forward(engine_cuda_t *e, engine_batch_t *bt, bool backward, bool dbp, char *err)
{
    const rwkv_config_t *c = &e->m->cfg;
    const int B = bt->B, Tn = bt->T, C = c->n_embd, L = c->n_layer, V = c->vocab, R = B * Tn;
    cudaStream_t st = e->stream;
    e->prof_phase = 0;
    if (e->profile) ST_CUDA_CHECK(cudaEventRecord(e->mark[0], st));
    PROF(PC_EMBED, 1, st::embed_kernel<T><<<R, 256, 0, st>>>(C, e->tokens, (const T *)e->emb, e->x_res));
    ST_CUDA_CHECK_LAUNCH("embed_kernel");
    PROF(PC_LN, 1,
         st::layernorm_fwd_kernel<float, float><<<R, st::ln_threads(C), 0, st>>>(C, e->x_res, e->L[0].ln0_w,
                                                                               e->L[0].ln0_b, LN_EPS, e->x_res,
                                                                               NULL, NULL));
    ST_CUDA_CHECK_LAUNCH("layernorm_fwd_kernel");
    /* each layer's end makes the next LayerNorm (the last one's ln_out) */
    for (int l = 0; l < L; l++) RUN(layer_fwd<T>(e, l, B, Tn, bt->final_state, dbp, l > 0, true, err));

    e->prof_phase = 1;
    if (e->profile) ST_CUDA_CHECK(cudaEventRecord(e->mark[1], st));
    /* bf16 logits where only the plain cross-entropy reads them */
    const bool lowp = e->bf16_logits && !bt->logits && !e->meth.obs;
    for (int r0 = 0; r0 < R && !e->meth.head_input_only; r0 += e->head_chunk) {
        const int n = R - r0 < e->head_chunk ? R - r0 : e->head_chunk;
        PROF(PC_GEMM_HEAD, 1,
             RUN(linear_fwd<T>(e, n, C, V, (T *)e->lnout + (size_t)r0 * C, e->head,
                               lowp ? e->dlogits : (void *)e->logits, err, !lowp)));
        if (bt->logits)
            ST_CUDA_CHECK(cudaMemcpyAsync(bt->logits + (size_t)r0 * V, e->logits, (size_t)n * V * 4,
                                          cudaMemcpyDeviceToHost, st));
        PROF(e->meth.obs ? PC_METHODS : PC_CE, 1, RUN(methods_head<T>(e, bt, r0, n, backward, lowp, err)));
        if (backward)
            PROF(PC_GEMM_HEAD, 1,
                 RUN(linear_bwd<T>(e, n, C, V, e->dlogits, e->head, (T *)e->dxh + (size_t)r0 * C, 0.f, err)));
    }
    if (e->profile) ST_CUDA_CHECK(cudaEventRecord(e->mark[2], st));
    return ST_OK;
}

/* The head's LayerNorm backward and every layer's backward (recompute mode:
 * each layer's forward again first): the second graphed part. */
template <typename T>
int run_backward(engine_cuda_t *e, int B, int Tn, char *err)
{
    const rwkv_config_t *c = &e->m->cfg;
    const int C = c->n_embd, L = c->n_layer, R = B * Tn;
    const size_t RC = (size_t)R * C, RCp = (size_t)e->maxB * e->maxT * C;
    cudaStream_t st = e->stream;
    float *xL = e->x_res + (size_t)L * RCp;
    e->prof_phase = 2;
    PROF(PC_CONVERT, 1, ST_CUDA_CHECK(cudaMemsetAsync(e->dx, 0, RC * 4, st)));
    PROF(PC_LN, 1,
         st::layernorm_bwd_kernel<T><<<R, st::ln_threads(C), 0, st>>>(C, xL, e->ln_out_w, e->lnout_mean,
                                                                    e->lnout_rstd, (const T *)e->dxh, e->dx,
                                                                    dxt_out<T>(e)));
    ST_CUDA_CHECK_LAUNCH("layernorm_bwd_kernel");
    for (int l = L - 1; l >= 0; l--) {
        /* recompute mode: refill the one slot with layer l's activations
         * (same inputs, same kernels: the same bits as the first forward) */
        if (e->recompute) RUN(layer_fwd<T>(e, l, B, Tn, NULL, false, false, false, err));
        RUN(layer_bwd<T>(e, l, B, Tn, err));
    }
    return ST_OK;
}

/* After the step, with profiling on: the phase marks, the WKV pairs and
 * (level 2) the operation pairs summed by class. */
int profile_collect(engine_cuda_t *e, char *err)
{
    const int L = e->m->cfg.n_layer;
    cudaStream_t st = e->stream;
    ST_CUDA_CHECK(cudaEventRecord(e->mark[3], st));
    ST_CUDA_CHECK(cudaEventSynchronize(e->mark[3]));
    engine_cuda_profile_t *pr = &e->last;
    memset(pr, 0, sizeof *pr);
    ST_CUDA_CHECK(cudaEventElapsedTime(&pr->forward_ms, e->mark[0], e->mark[1]));
    ST_CUDA_CHECK(cudaEventElapsedTime(&pr->head_ms, e->mark[1], e->mark[2]));
    ST_CUDA_CHECK(cudaEventElapsedTime(&pr->backward_ms, e->mark[2], e->mark[3]));
    for (int l = 0; l < 2 * L; l++) {
        float ms = 0;
        ST_CUDA_CHECK(cudaEventElapsedTime(&ms, e->wkv_ev[0][l], e->wkv_ev[1][l]));
        if (l < L) pr->wkv_forward_ms += ms;
        else pr->wkv_backward_ms += ms;
    }
    if (e->profile < 2) return ST_OK;
    for (int i = 0; i < e->prof_n; i++) {
        float ms = 0;
        ST_CUDA_CHECK(cudaEventElapsedTime(&ms, e->prof_ev[2 * i], e->prof_ev[2 * i + 1]));
        pr->class_ms[e->prof_ph[i]][e->prof_cls[i]] += ms;
        pr->class_launches[e->prof_ph[i]][e->prof_cls[i]] += e->prof_nl[i];
    }
    pr->fine_dropped = e->prof_drop;
    return ST_OK;
}

template <typename T>
int run(engine_cuda_t *e, engine_batch_t *bt, char *err)
{
    const rwkv_model_t *m = e->m;
    const rwkv_config_t *c = &m->cfg;
    const int B = bt->B, Tn = bt->T, L = c->n_layer, R = B * Tn;
    const size_t HNN = rwkv_state_layer_size(c);
    cudaStream_t st = e->stream;
    const bool backward = (bt->dstate0 != NULL || e->res_ds0 != NULL) && bt->targets != NULL;
    const bool dbp = (bt->dbp_q != NULL || e->res_q != NULL) && bt->dbp_rows != NULL;

    ST_CUDA_CHECK(cudaMemcpyAsync(e->tokens, bt->tokens, (size_t)R * 4, cudaMemcpyHostToDevice, st));
    if (bt->targets)
        ST_CUDA_CHECK(cudaMemcpyAsync(e->targets, bt->targets, (size_t)R * 4, cudaMemcpyHostToDevice, st));
    if (e->res_state0)
        ST_CUDA_CHECK(cudaMemcpyAsync(e->state0, e->res_state0, (size_t)L * HNN * 4, cudaMemcpyDeviceToDevice, st));
    else
        ST_CUDA_CHECK(cudaMemcpyAsync(e->state0, bt->state0, (size_t)L * HNN * 4, cudaMemcpyHostToDevice, st));
    if (backward && !e->res_ds0) ST_CUDA_CHECK(cudaMemsetAsync(e->ds0, 0, (size_t)L * HNN * 4, st));
    if (dbp) {
        ST_CUDA_CHECK(cudaMemcpyAsync(e->dbp_rows, bt->dbp_rows, (size_t)B, cudaMemcpyHostToDevice, st));
        if (!e->res_q) ST_CUDA_CHECK(cudaMemsetAsync(e->dbp_q, 0, (size_t)L * HNN * 8, st));
    }
    RUN(methods_begin(e, bt, backward, err));
    e->prof_n = 0;
    e->prof_drop = 0;

    /* graphs only for runs whose parts make no host copies or host waits */
    const methods_cuda_t *mt = &e->meth;
    const bool eligible = !e->profile && !bt->logits && !bt->final_state && !mt->obs && !mt->ks && !mt->rec_out;
    uint64_t key[8];
    graph_key(key, 0, bt, backward, dbp, e);
    RUN(graphed(e, key, eligible, [&]() { return run_forward<T>(e, bt, backward, dbp, err); }, err));
    /* the backward is queued behind the forward before the host waits for
     * the losses, so the GPU does not idle between them; a non-finite loss is
     * still refused below before any dS0 reaches the caller's host buffer
     * (a resident dS0 has received the failed step's share by then: callers
     * stop on that error, engine_cuda.h) */
    if (backward) {
        graph_key(key, 1, bt, backward, dbp, e);
        RUN(graphed(e, key, eligible, [&]() { return run_backward<T>(e, B, Tn, err); }, err));
    }
    ST_CUDA_CHECK(cudaMemcpyAsync(e->h_loss, e->row_loss, (size_t)R * 4, cudaMemcpyDeviceToHost, st));
    ST_CUDA_CHECK(cudaMemcpyAsync(e->h_correct, e->row_correct, (size_t)R * 4, cudaMemcpyDeviceToHost, st));
    if (dbp && !e->res_q)
        ST_CUDA_CHECK(cudaMemcpyAsync(e->h_dbp_q, e->dbp_q, (size_t)L * HNN * 8, cudaMemcpyDeviceToHost, st));
    ST_CUDA_CHECK(cudaStreamSynchronize(st));
    if (dbp && !e->res_q)
        for (size_t i = 0; i < (size_t)L * HNN; i++) bt->dbp_q[i] += e->h_dbp_q[i];
    double loss = 0;
    int64_t nt = 0, nc = 0;
    if (bt->targets)
        for (int i = 0; i < R; i++)
            if (bt->targets[i] >= 0) {
                loss += e->h_loss[i];
                nc += e->h_correct[i];
                nt++;
            }
    bt->loss_sum = loss;
    bt->n_targets = nt;
    bt->n_correct = nc;
    methods_sums(e, bt);
    if (!backward) return ST_OK;
    if (!(loss == loss) || loss == INFINITY)
        return st_fail(err, ST_ENUMERIC, "the loss is not finite: the model or the state holds non-finite values");
    if (e->profile) RUN(profile_collect(e, err));
    RUN(methods_end(e, bt, err)); /* dU0 to the host, resident runs included */
    if (e->res_ds0) return ST_OK; /* accumulated on the device (engine_cuda_run_resident) */
    ST_CUDA_CHECK(cudaMemcpyAsync(e->h_ds0, e->ds0, (size_t)L * HNN * 4, cudaMemcpyDeviceToHost, st));
    ST_CUDA_CHECK(cudaStreamSynchronize(st));
    for (size_t i = 0; i < (size_t)L * HNN; i++) bt->dstate0[i] += e->h_ds0[i];
    return ST_OK;
}

int setup(engine_cuda_t *e, const engine_opts_t *opts, int mode, char *err)
{
    const rwkv_config_t *c = &e->m->cfg;
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0)
        return st_fail(err, ST_ECUDA, "no CUDA device is visible (cudaGetDeviceCount found none)");
    if (opts->device < 0 || opts->device >= ndev)
        return st_fail(err, ST_EINVAL, "CUDA device %d does not exist (%d visible)", opts->device, ndev);
    ST_CUDA_CHECK(cudaSetDevice(opts->device));
    ST_CUDA_CHECK(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking));
    ST_CUBLAS_CHECK(cublasCreate(&e->blas));
    ST_CUBLAS_CHECK(cublasSetStream(e->blas, e->stream));
    /* no TF32 in fp32 mode; and bf16 products never reduce split-K partial
     * sums in bf16 */
    ST_CUBLAS_CHECK(cublasSetMathMode(e->blas, (cublasMath_t)(CUBLAS_DEFAULT_MATH |
                                                          CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    /* the product variants (docs/performance.md 2.4): read once here so a
     * whole engine's life uses one; an unset or malformed value keeps the
     * default */
    e->gemm_batch = GEMM_BATCH_DEFAULT;
    e->gemm_lt = e->bf16 ? GEMM_LT_DEFAULT_BF16 : GEMM_LT_DEFAULT_FP32;
    const char *gb = getenv("STATETUNE_GEMM_BATCH"), *gl = getenv("STATETUNE_GEMM_LT");
    if (gb && (gb[0] == '0' || gb[0] == '1') && !gb[1]) e->gemm_batch = gb[0] - '0';
    if (gl && gl[0] >= '0' && gl[0] <= '2' && !gl[1]) e->gemm_lt = gl[0] - '0';
    e->wav = e->gemm_batch && c->d_decay == c->d_aaa;
    e->vbatch = e->wav && c->d_mv > 0 && c->d_mv <= c->d_decay;
    e->vwidth = e->vbatch ? c->d_decay : c->d_mv;
    const char *bl = getenv("STATETUNE_BF16_LOGITS");
    e->bf16_logits = e->bf16 && (bl && (bl[0] == '0' || bl[0] == '1') && !bl[1] ? bl[0] == '1' : BF16_LOGITS_DEFAULT);
    e->lt_device = opts->device;
    ST_CUBLAS_CHECK(cublasLtCreate(&e->lt));
    e->lt_plan = (lt_plan_t *)calloc(LT_PLANS, sizeof *e->lt_plan);
    if (!e->lt_plan) return st_fail(err, ST_ENOMEM, "out of host memory for the CUDA engine's product plans");

    carver_t cw = {NULL, 0}, ca = {NULL, 0};
    plan_weights(e, &cw);
    e->recompute = mode == 1;
    plan_activations(e, &ca);
    size_t freeb = 0, totalb = 0;
    ST_CUDA_CHECK(cudaMemGetInfo(&freeb, &totalb));
    if (mode < 0 && cw.off + ca.off > freeb) {
        /* the full plan does not fit: keep one layer's activations and
         * recompute each layer's forward in the backward (about one more
         * forward per step) */
        e->recompute = 1;
        ca.off = 0;
        plan_activations(e, &ca);
    }
    e->wbytes = cw.off;
    e->abytes = ca.off;
    size_t need = e->wbytes + e->abytes;
    if (need > freeb)
        return st_fail(err, ST_ENOMEM,
                       "the CUDA engine needs %.2f GB for %d x %d tokens of this %d x %d model (%s%s) but the device "
                       "has %.2f GB free",
                       need / 1e9, e->maxB, e->maxT, c->n_layer, c->n_embd, e->bf16 ? "bf16" : "fp32",
                       e->recompute ? ", recomputing each layer's forward" : "", freeb / 1e9);
    ST_CUDA_CHECK(cudaMalloc((void **)&e->wmem, e->wbytes));
    ST_CUDA_CHECK(cudaMalloc((void **)&e->amem, e->abytes));
    ST_CUDA_CHECK(cudaMemset(e->amem, 0, e->abytes));
    cw.base = e->wmem;
    cw.off = 0;
    ca.base = e->amem;
    ca.off = 0;
    plan_weights(e, &cw);
    plan_activations(e, &ca);
    RUN(upload_weights(e, err));
    size_t R = (size_t)e->maxB * e->maxT;
    /* page-locked: the copies out of every step are then plain DMA, not
     * staged by the driver through its own buffer while the GPU idles */
    const size_t ns = (size_t)c->n_layer * rwkv_state_layer_size(c);
    if (cudaMallocHost((void **)&e->h_loss, R * 4) != cudaSuccess ||
        cudaMallocHost((void **)&e->h_correct, R * 4) != cudaSuccess ||
        cudaMallocHost((void **)&e->h_ds0, ns * 4) != cudaSuccess ||
        cudaMallocHost((void **)&e->h_dbp_q, ns * 8) != cudaSuccess)
        return st_fail(err, ST_ENOMEM, "out of page-locked host memory for the CUDA engine's staging buffers");
    return ST_OK;
}

} // namespace

extern "C" engine_cuda_t *engine_cuda_new_mode(const rwkv_model_t *model, const engine_opts_t *opts, int recompute,
                                               char *err)
{
    const rwkv_config_t *c = &model->cfg;
    if (c->head_size != WKV7_CUDA_N || c->n_embd != c->n_head * WKV7_CUDA_N) {
        st_fail(err, ST_EUNSUPPORTED, "the CUDA engine needs head size 64 (model has %d)", c->head_size);
        return NULL;
    }
    if (c->n_embd > 8 * st::LN_MAX_THREADS) { /* the LayerNorms keep 8 channels per thread of one block */
        st_fail(err, ST_EUNSUPPORTED, "the CUDA engine supports widths up to %d (model has %d)",
                8 * st::LN_MAX_THREADS, c->n_embd);
        return NULL;
    }
    if (c->ffn_dim % 8 != 0) { /* the element-wise kernels move 8 values per access */
        st_fail(err, ST_EUNSUPPORTED, "the CUDA engine needs a channel-mix width divisible by 8 (model has %d)",
                c->ffn_dim);
        return NULL;
    }
    engine_cuda_t *e = (engine_cuda_t *)calloc(1, sizeof *e);
    if (!e) {
        st_fail(err, ST_ENOMEM, "out of memory creating the CUDA engine");
        return NULL;
    }
    e->L = (dev_layer_t *)calloc((size_t)c->n_layer, sizeof *e->L);
    if (!e->L) {
        free(e);
        st_fail(err, ST_ENOMEM, "out of memory creating the CUDA engine");
        return NULL;
    }
    e->tag = ENGINE_CUDA_TAG;
    e->m = model;
    e->maxB = opts->max_batch;
    e->maxT = opts->max_ctx;
    e->nck = (opts->max_ctx + WKV7_CUDA_CHUNK - 1) / WKV7_CUDA_CHUNK;
    e->bf16 = opts->precision == ENGINE_BF16;
    e->esz = e->bf16 ? 2 : 4;
    size_t R = (size_t)e->maxB * e->maxT;
    size_t chunk = HEAD_CHUNK_BYTES / ((size_t)c->vocab * 4);
    if (chunk < 1) chunk = 1;
    if (chunk > R) chunk = R;
    e->head_chunk = e->head_chunk_max = (int)chunk;
    e->graphs = 1;
    if (setup(e, opts, recompute, err) != ST_OK) {
        engine_cuda_destroy(&e);
        return NULL;
    }
    return e;
}

extern "C" engine_cuda_t *engine_cuda_new(const rwkv_model_t *model, const engine_opts_t *opts, char *err)
{
    return engine_cuda_new_mode(model, opts, -1, err);
}

extern "C" int engine_cuda_recomputes(const engine_cuda_t *self) { return self->recompute; }

extern "C" void engine_cuda_destroy(engine_cuda_t **self_p)
{
    if (!self_p || !*self_p) return;
    engine_cuda_t *e = *self_p;
    if (e->mark[0]) {
        for (int i = 0; i < 4; i++) cudaEventDestroy(e->mark[i]);
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < 2 * e->m->cfg.n_layer; i++) cudaEventDestroy(e->wkv_ev[j][i]);
    }
    if (e->prof_ev)
        for (int i = 0; i < 2 * e->prof_cap; i++)
            if (e->prof_ev[i]) cudaEventDestroy(e->prof_ev[i]);
    free(e->prof_ev);
    free(e->prof_cls);
    free(e->prof_ph);
    free(e->prof_nl);
    graphs_free(e);
    if (e->blas) cublasDestroy(e->blas);
    if (e->lt_plan)
        for (int i = 0; i < e->lt_n; i++) lt_plan_free(&e->lt_plan[i]);
    free(e->lt_plan);
    if (e->lt) cublasLtDestroy(e->lt);
    if (e->stream) cudaStreamDestroy(e->stream);
    methods_free(e);
    cudaFree(e->wmem);
    cudaFree(e->amem);
    free(e->L);
    cudaFreeHost(e->h_loss); /* NULL is fine */
    cudaFreeHost(e->h_correct);
    cudaFreeHost(e->h_ds0);
    cudaFreeHost(e->h_dbp_q);
    e->tag = 0;
    free(e);
    *self_p = NULL;
}

extern "C" int engine_cuda_run(engine_cuda_t *self, engine_batch_t *batch, char *err)
{
    if (!self || self->tag != ENGINE_CUDA_TAG)
        return st_fail(err, ST_EINVAL, "engine_cuda_run was given something that is not a CUDA engine");
    if (batch->B < 1 || batch->T < 1 || batch->B > self->maxB || batch->T > self->maxT)
        return st_fail(err, ST_EINVAL, "a batch of %d x %d does not fit the CUDA engine's plan of %d x %d", batch->B,
                       batch->T, self->maxB, self->maxT);
    int rc = self->bf16 ? run<__nv_bfloat16>(self, batch, err) : run<float>(self, batch, err);
    if (rc == ST_OK) {
        /* errors raised while kernels ran surface here */
        cudaError_t ce = cudaStreamSynchronize(self->stream);
        if (ce == cudaSuccess) ce = cudaGetLastError();
        if (ce != cudaSuccess)
            return st_fail(err, ST_ECUDA, "%s:%d: the CUDA step failed: %s", __FILE__, __LINE__,
                           cudaGetErrorString(ce));
    }
    return rc;
}

extern "C" int engine_cuda_teacher_forward(engine_cuda_t *self, const int32_t *tokens, int B, int T,
                                           const float *state0, char *err)
{
    engine_batch_t bt;
    memset(&bt, 0, sizeof bt);
    bt.tokens = tokens;
    bt.B = B;
    bt.T = T;
    bt.state0 = state0;
    self->meth.head_input_only = 1;
    int rc = engine_cuda_run(self, &bt, err);
    self->meth.head_input_only = 0;
    if (rc == ST_OK) self->meth.hid_R = B * T; /* after engine_cuda_run, whose begin cleared it */
    return rc;
}

extern "C" int engine_cuda_set_profiling(engine_cuda_t *self, int on, char *err)
{
    const int L = self->m->cfg.n_layer;
    if (on && !self->mark[0]) {
        if (2 * L > 256) return st_fail(err, ST_EUNSUPPORTED, "profiling supports up to 128 layers");
        for (int i = 0; i < 4; i++) ST_CUDA_CHECK(cudaEventCreate(&self->mark[i]));
        for (int j = 0; j < 2; j++)
            for (int i = 0; i < 2 * L; i++) ST_CUDA_CHECK(cudaEventCreate(&self->wkv_ev[j][i]));
    }
    if (on >= 2 && !self->prof_ev) {
        /* about 60 operations per layer and step, twice in recompute mode */
        const int cap = 160 * L + 64;
        self->prof_ev = (cudaEvent_t *)calloc((size_t)2 * cap, sizeof *self->prof_ev);
        self->prof_cls = (uint8_t *)malloc((size_t)cap);
        self->prof_ph = (uint8_t *)malloc((size_t)cap);
        self->prof_nl = (uint16_t *)malloc((size_t)cap * sizeof *self->prof_nl);
        if (!self->prof_ev || !self->prof_cls || !self->prof_ph || !self->prof_nl)
            return st_fail(err, ST_ENOMEM, "out of host memory for the fine profile's events");
        self->prof_cap = cap; /* destroy frees the events created, NULL ones skipped */
        for (int i = 0; i < 2 * cap; i++) ST_CUDA_CHECK(cudaEventCreate(&self->prof_ev[i]));
    }
    self->profile = on < 0 ? 0 : on > 2 ? 2 : on;
    return ST_OK;
}

extern "C" const char *engine_cuda_profile_class(int i) { return i >= 0 && i < PC_COUNT ? PROF_NAMES[i] : NULL; }

extern "C" void engine_cuda_set_graphs(engine_cuda_t *self, int on)
{
    self->graphs = on != 0;
    if (!on) graphs_free(self);
}

extern "C" long engine_cuda_graph_replays(const engine_cuda_t *self) { return self->greplays; }

extern "C" int engine_cuda_set_head_chunk(engine_cuda_t *self, int rows, char *err)
{
    if (rows < 1 || rows > self->head_chunk_max)
        return st_fail(err, ST_EINVAL, "a head chunk of %d rows is outside 1 .. %d (the plan's logits buffer)", rows,
                       self->head_chunk_max);
    if (self->meth.teacher && rows != self->head_chunk)
        return st_fail(err, ST_EINVAL, "the head chunk cannot change once the observer's teacher buffer exists");
    self->head_chunk = rows;
    graphs_free(self); /* the captured head loop has the old chunking */
    return ST_OK;
}

extern "C" int engine_cuda_head_chunk(const engine_cuda_t *self) { return self->head_chunk; }

extern "C" void engine_cuda_last_profile(const engine_cuda_t *self, engine_cuda_profile_t *out)
{
    *out = self->last;
}

extern "C" size_t engine_cuda_peak_mem_bytes(const engine_cuda_t *self)
{
    return self ? self->wbytes + self->abytes + self->meth.ks_bytes + self->meth.obs_bytes : 0;
}

/* ---- resident parameters (engine_cuda.h; engine/cuda/engine_cuda_params.cu) ----
 * The same run with S0 read from device memory and dS0 accumulated into
 * device memory: ds0 points at the caller's buffer for the run, so the WKV
 * backward adds into it directly (it accumulates, wkv7.cuh). */
extern "C" int engine_cuda_run_resident(engine_cuda_t *self, engine_batch_t *batch, const float *state0_dev,
                                        float *ds0_dev, char *err)
{
    return engine_cuda_run_resident_q(self, batch, state0_dev, ds0_dev, NULL, err);
}

extern "C" int engine_cuda_run_resident_q(engine_cuda_t *self, engine_batch_t *batch, const float *state0_dev,
                                          float *ds0_dev, double *q_dev, char *err)
{
    if (!self || self->tag != ENGINE_CUDA_TAG)
        return st_fail(err, ST_EINVAL, "engine_cuda_run_resident was given something that is not a CUDA engine");
    if (!state0_dev || batch->state0 || batch->dstate0)
        return st_fail(err, ST_EINVAL, "engine_cuda_run_resident needs a device S0 and a batch without host state0 "
                       "or dstate0");
    float *ds0_saved = self->ds0;
    double *q_saved = self->dbp_q;
    self->res_state0 = state0_dev;
    self->res_ds0 = ds0_dev;
    if (ds0_dev) self->ds0 = ds0_dev;
    if (q_dev && !batch->dbp_q) { /* a host dbp_q keeps the copying path */
        self->res_q = q_dev;
        self->dbp_q = q_dev;
    }
    int rc = engine_cuda_run(self, batch, err);
    self->ds0 = ds0_saved;
    self->dbp_q = q_saved;
    self->res_state0 = NULL;
    self->res_ds0 = NULL;
    self->res_q = NULL;
    return rc;
}

extern "C" int engine_cuda_device(const engine_cuda_t *self)
{
    /* the device of the engine's allocation: the one setup selected */
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, self->amem) != cudaSuccess) return 0;
    return at.device;
}

extern "C" void *engine_cuda_stream(const engine_cuda_t *self) { return (void *)self->stream; }

extern "C" int engine_cuda_lt_choices(engine_cuda_lt_choice_t *out, int max)
{
    lt_cache_t *c = lt_cache();
    std::lock_guard<std::mutex> lock(c->mu);
    for (int i = 0; i < c->n && i < max; i++) out[i] = c->c[i].info;
    return c->n;
}
