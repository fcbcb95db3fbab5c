/* Tiny TCP load tool for bench/hotpath.py (no netperf on the test machine).
 *
 *   nettx server ADDR PORT          echo 64-byte messages until EOF, one connection at a time
 *   nettx sink   ADDR PORT          read and discard until EOF
 *   nettx crr  DST PORT SECONDS SRC_BASE NSRC   connect/request/response/close, sources
 *                                    SRC_BASE+0 .. SRC_BASE+NSRC-1 in turn (per-source SYN limits)
 *   nettx rr   DST PORT SECONDS SRC  one connection, 64-byte ping-pong
 *   nettx stream DST PORT SECONDS SRC  send 128 KiB writes
 * Clients print one line: "<transactions or bytes> <seconds>".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int full_io(int fd, char *buf, int n, int wr) {
    int done = 0;
    while (done < n) {
        int r = wr ? (int)write(fd, buf + done, n - done) : (int)read(fd, buf + done, n - done);
        if (r <= 0) return r < 0 ? -1 : done;
        done += r;
    }
    return done;
}

static struct sockaddr_in sin_of(const char *a, int port) {
    struct sockaddr_in s = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, a, &s.sin_addr) != 1) { fprintf(stderr, "bad address %s\n", a); exit(2); }
    return s;
}

static int serve(const char *addr, int port, int echo) {
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in s = sin_of(addr, port);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (void *)&s, sizeof s) || listen(l, 4096)) { perror("listen"); return 1; }
    printf("ready\n");
    fflush(stdout);
    static char buf[1 << 17];
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (echo) {
            while (full_io(c, buf, 64, 0) == 64 && full_io(c, buf, 64, 1) == 64) {}
        } else {
            while (read(c, buf, sizeof buf) > 0) {}
        }
        close(c);
    }
}

static int connect_from(struct sockaddr_in *src, struct sockaddr_in *dst) {
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (bind(fd, (void *)src, sizeof *src) || connect(fd, (void *)dst, sizeof *dst)) { close(fd); return -1; }
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: see source\n"); return 2; }
    const char *mode = argv[1];
    if (!strcmp(mode, "server")) return serve(argv[2], atoi(argv[3]), 1);
    if (!strcmp(mode, "sink")) return serve(argv[2], atoi(argv[3]), 0);
    if (argc < 6) return 2;
    struct sockaddr_in dst = sin_of(argv[2], atoi(argv[3]));
    double secs = atof(argv[4]);
    struct sockaddr_in src = sin_of(argv[5], 0);
    char buf[1 << 17];
    memset(buf, 'x', sizeof buf);
    double t0 = now(), t;
    long long count = 0;
    if (!strcmp(mode, "crr")) {
        int nsrc = argc > 6 ? atoi(argv[6]) : 1;
        uint32_t base = ntohl(src.sin_addr.s_addr);
        while ((t = now()) - t0 < secs) {
            src.sin_addr.s_addr = htonl(base + (uint32_t)(count % nsrc));
            int fd = connect_from(&src, &dst);
            if (fd < 0) { perror("connect"); return 1; }
            if (full_io(fd, buf, 64, 1) != 64 || full_io(fd, buf, 64, 0) != 64) { perror("io"); return 1; }
            close(fd);
            count++;
        }
    } else if (!strcmp(mode, "rr")) {
        int fd = connect_from(&src, &dst);
        if (fd < 0) { perror("connect"); return 1; }
        while ((t = now()) - t0 < secs) {
            for (int i = 0; i < 64; i++)
                if (full_io(fd, buf, 64, 1) != 64 || full_io(fd, buf, 64, 0) != 64) { perror("io"); return 1; }
            count += 64;
        }
        close(fd);
    } else if (!strcmp(mode, "stream")) {
        int fd = connect_from(&src, &dst);
        if (fd < 0) { perror("connect"); return 1; }
        while ((t = now()) - t0 < secs) {
            int r = (int)write(fd, buf, sizeof buf);
            if (r < 0) { perror("write"); return 1; }
            count += r;
        }
        close(fd);
    } else {
        return 2;
    }
    printf("%lld %.6f\n", count, t - t0);
    return 0;
}
