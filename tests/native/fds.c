/* A program that treats its descriptor table as its own, as real programs do, run under
 * the native probe by tests/tests/native_fds.rs (the test plays the agent). Modes:
 *   dup       every number 3..20 but 4 (the inherited channel) becomes a file of ours,
 *             like a wrapper's `exec 5>file`; "check" prints the file's size.
 *   closefrom closefrom(3), then four socketpairs of ours; "check" waits up to 1 s and
 *             prints how many bytes arrived on them.
 *   fork      "check" forks; the child prints how many sockets it holds above stderr.
 * Protocol on stdin/stdout: the program prints "ready" once it did its part, then waits
 * for a line "check" and prints "result N".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void wait_line(const char *want) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, want, strlen(want)) == 0) return;
    }
    exit(3);
}

static int sockets_above_stderr(void) {
    int count = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return -1;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        int fd = atoi(entry->d_name);
        if (fd <= 2 || fd == dirfd(dir)) continue;
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) count++;
    }
    closedir(dir);
    return count;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    setvbuf(stdout, NULL, _IOLBF, 0);
    wait_line("go");
    long result = -1;
    if (strcmp(mode, "dup") == 0) {
        const char *path = argv[2];
        int file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        for (int fd = 3; fd <= 20; fd++) {
            if (fd != 4 && fd != file) dup2(file, fd);
        }
        printf("ready\n");
        wait_line("check");
        struct stat st;
        result = stat(path, &st) == 0 ? (long)st.st_size : -1;
    } else if (strcmp(mode, "closefrom") == 0) {
        closefrom(3);
        int pairs[4][2];
        for (int i = 0; i < 4; i++) socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, pairs[i]);
        printf("ready\n");
        wait_line("check");
        /* The probe's answer to a request it was in the middle of would be written now:
         * give it a second to arrive before counting. */
        struct pollfd ends[8];
        for (int i = 0; i < 8; i++) ends[i] = (struct pollfd){.fd = pairs[i / 2][i % 2], .events = POLLIN};
        poll(ends, 8, 1000);
        result = 0;
        char buf[4096];
        for (int i = 0; i < 4; i++) {
            for (int end = 0; end < 2; end++) {
                ssize_t n;
                while ((n = read(pairs[i][end], buf, sizeof buf)) > 0) result += n;
            }
        }
    } else if (strcmp(mode, "fork") == 0) {
        printf("ready\n");
        wait_line("check");
        int out[2];
        if (pipe(out) != 0) return 2;
        pid_t child = fork();
        if (child == 0) {
            close(out[0]);
            int count = sockets_above_stderr();
            if (write(out[1], &count, sizeof count) != sizeof count) _exit(2);
            _exit(0);
        }
        close(out[1]);
        int count = -1;
        if (read(out[0], &count, sizeof count) != sizeof count) count = -1;
        waitpid(child, NULL, 0);
        result = count;
    } else {
        return 2;
    }
    printf("result %ld\n", result);
    return 0;
}
