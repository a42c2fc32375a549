/* glibc's allocator query calls under the native preload (tests/tests/native_glibc_api.rs):
 * holds 20 MiB in 1 KiB blocks, then prints what mallinfo2, mallinfo, malloc_trim and
 * mallopt answer, one "name value" per line. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    enum { BLOCKS = 20 * 1024 };
    static void *held[BLOCKS];
    for (int i = 0; i < BLOCKS; i++) {
        held[i] = malloc(1024);
        memset(held[i], 1, 1024);
    }
    struct mallinfo2 wide = mallinfo2();
    printf("mallinfo2.uordblks %zu\n", wide.uordblks);
    printf("mallinfo2.arena %zu\n", wide.arena);
    struct mallinfo narrow = mallinfo();
    printf("mallinfo.uordblks %d\n", narrow.uordblks);
    for (int i = 0; i < BLOCKS; i++) free(held[i]);
    printf("malloc_trim %d\n", malloc_trim(0));
    printf("mallopt %d\n", mallopt(M_ARENA_MAX, 2));
    malloc_stats();
    return 0;
}
