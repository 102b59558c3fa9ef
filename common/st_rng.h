/*
 * st_rng.h - splitmix64, the one seedable generator step that the model's
 * random weights, the batcher's shuffle, the held-out split, DBP's row
 * sampling, the tune loop's RNG seed and the kernel-expanded state all build
 * on. Header-only and the same on every platform, so a seed names the same
 * numbers everywhere (tests compare tuned states byte for byte).
 */
#ifndef ST_RNG_H
#define ST_RNG_H

#include <stdint.h>

/* Advances *state by the golden-ratio increment and returns the mixed value
 * (Steele, Lea and Flood's splitmix64). */
static inline uint64_t st_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* splitmix64's output for the state x, leaving nothing behind: a good 64-bit
 * hash of x (combine several inputs as mix(mix(a) ^ b)). */
static inline uint64_t st_mix64(uint64_t x)
{
    return st_splitmix64(&x);
}

#endif
