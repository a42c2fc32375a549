/* malloc-heavy loop for bench_native: `malloc_loop ITERATIONS` frees and reallocates
 * random slots of a 4096-slot working set (16 B – 4 KiB, skewed small like most C
 * programs) and prints malloc+free pairs per second as one JSON line. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SLOTS 4096

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 10000000;
    static void *slots[SLOTS];
    uint64_t x = 0x9E3779B97F4A7C15ull;
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < iterations; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        size_t at = x % SLOTS;
        size_t size = 16u << ((x >> 20) % 5);          /* 16, 32, 64, 128, 256 */
        if ((x >> 40) % 8 == 0) size = 256 + (x >> 44) % 3840; /* 1 in 8 up to 4 KiB */
        free(slots[at]);
        char *p = malloc(size);
        p[0] = (char)i;
        slots[at] = p;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    printf("{\"pairs_per_second\":%.0f}\n", iterations / seconds);
    return 0;
}
