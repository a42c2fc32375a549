/* Holds ARGV[1] MiB in 256 KiB blocks from eight allocation sites, prints one JSON line,
 * then waits until stdin closes: bench_native samples and dumps it meanwhile. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK (256 * 1024)
#define SITE(n) __attribute__((noinline)) void *hold_site_##n(void) { \
        void *p = malloc(BLOCK); memset(p, n + 1, BLOCK); return p; }
SITE(0) SITE(1) SITE(2) SITE(3) SITE(4) SITE(5) SITE(6) SITE(7)
static void *(*const sites[8])(void) = {hold_site_0, hold_site_1, hold_site_2, hold_site_3,
                                        hold_site_4, hold_site_5, hold_site_6, hold_site_7};

int main(int argc, char **argv) {
    long mib = argc > 1 ? atol(argv[1]) : 30;
    long blocks = mib * 4;
    void **held = malloc(sizeof(void *) * (size_t)blocks);
    for (long i = 0; i < blocks; i++) held[i] = sites[i % 8]();
    printf("{\"held_mib\":%ld}\n", mib);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}
