/* Spoofed-source TCP SYN generator for the SYN-defence bench (IPv4 and IPv6; hping3 has no IPv6).
 *
 * usage: synflood_gen IFNAME DSTMAC DSTIP DPORT SECONDS [PPS]
 *   Sends Ethernet frames on IFNAME (AF_PACKET, sendmmsg batches of 64) to DSTMAC/DSTIP:DPORT with a
 *   fresh random source address and port per packet (IPv4: any address; IPv6: 2001:db8::/32 + random
 *   96 bits, so every packet comes from a different /64). PPS 0 or absent = as fast as possible.
 *   Stops by itself after SECONDS and prints "sent N" on stdout. Only for namespaces the bench built.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/ip6.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
static uint64_t s[2] = {0x9E3779B97F4A7C15ull, 0xD1B54A32D192ED03ull};
static uint64_t rnd(void) { uint64_t a = s[0], b = s[1]; s[0] = b; a ^= a << 23; s[1] = a ^ b ^ (a >> 17) ^ (b >> 26); return s[1] + b; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static uint32_t sum16(const void *p, size_t n, uint32_t acc) {
    const uint8_t *b = p; for (size_t i = 0; i + 1 < n; i += 2) acc += (b[i] << 8) | b[i + 1];
    if (n & 1) acc += b[n - 1] << 8;
    return acc; }
static uint16_t fold(uint32_t acc) { while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16); return htons(~acc & 0xffff); }

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: %s IFNAME DSTMAC DSTIP DPORT SECONDS [PPS]\n", argv[0]); return 2; }
    int v6 = strchr(argv[3], ':') != NULL;
    double seconds = atof(argv[5]), pps = argc > 6 ? atof(argv[6]) : 0;
    s[0] ^= (uint64_t)getpid() << 17 ^ (uint64_t)(now() * 1e6);
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("socket"); return 1; }
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(argv[1]), .sll_halen = 6};
    if (!ll.sll_ifindex) { perror("if_nametoindex"); return 1; }
    struct ifreq ifr = {0}; strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
    uint8_t dmac[6]; sscanf(argv[2], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &dmac[0], &dmac[1], &dmac[2], &dmac[3], &dmac[4], &dmac[5]);
    memcpy(ll.sll_addr, dmac, 6);
    uint8_t dst[16]; if (inet_pton(v6 ? AF_INET6 : AF_INET, argv[3], dst) != 1) { fprintf(stderr, "bad DSTIP\n"); return 2; }
    uint16_t dport = atoi(argv[4]);
    static uint8_t frames[BATCH][128]; struct iovec iov[BATCH]; struct mmsghdr msgs[BATCH];
    size_t l3 = v6 ? 40 : 20, len = 14 + l3 + 20;
    for (int i = 0; i < BATCH; i++) {
        uint8_t *f = frames[i]; memcpy(f, dmac, 6); memcpy(f + 6, ifr.ifr_hwaddr.sa_data, 6);
        f[12] = v6 ? 0x86 : 0x08; f[13] = v6 ? 0xdd : 0x00;
        iov[i].iov_base = f; iov[i].iov_len = len;
        memset(&msgs[i], 0, sizeof msgs[i]); msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &ll; msgs[i].msg_hdr.msg_namelen = sizeof ll;
    }
    uint64_t sent = 0; double start = now(), end = start + seconds;
    while (1) {
        double t = now(); if (t >= end) break;
        if (pps > 0 && sent > (t - start) * pps) { struct timespec ts = {0, 50000}; nanosleep(&ts, NULL); continue; }
        for (int i = 0; i < BATCH; i++) {
            uint8_t *f = frames[i], *ip = f + 14, *tcp = ip + l3; uint64_t r = rnd(), r2 = rnd();
            memset(ip, 0, l3 + 20);
            uint8_t src[16];
            if (v6) { src[0] = 0x20; src[1] = 0x01; src[2] = 0x0d; src[3] = 0xb8; memcpy(src + 4, &r, 8); memcpy(src + 12, &r2, 4);
                ip[0] = 0x60; ip[4] = 0; ip[5] = 20; ip[6] = IPPROTO_TCP; ip[7] = 64; memcpy(ip + 8, src, 16); memcpy(ip + 24, dst, 16);
            } else { memcpy(src, &r, 4);
                ip[0] = 0x45; ip[2] = 0; ip[3] = 40; ip[4] = r2 >> 8; ip[5] = r2; ip[8] = 64; ip[9] = IPPROTO_TCP;
                memcpy(ip + 12, src, 4); memcpy(ip + 16, dst, 4);
                uint16_t c = fold(sum16(ip, 20, 0)); memcpy(ip + 10, &c, 2); }
            uint16_t sport = htons(1024 + (r2 >> 16) % 64000), dp = htons(dport); uint32_t seq = r2 >> 32;
            memcpy(tcp, &sport, 2); memcpy(tcp + 2, &dp, 2); memcpy(tcp + 4, &seq, 4);
            tcp[12] = 5 << 4; tcp[13] = 0x02; tcp[14] = 0xff; tcp[15] = 0xff;  /* SYN, window 65535 */
            uint32_t acc = 0; uint8_t ph[4] = {0, 0, 0, 20};
            acc = sum16(src, v6 ? 16 : 4, acc); acc = sum16(dst, v6 ? 16 : 4, acc);
            uint8_t proto[2] = {0, IPPROTO_TCP}; acc = sum16(proto, 2, acc); acc = sum16(ph + 2, 2, acc);
            acc = sum16(tcp, 20, acc); uint16_t c = fold(acc); memcpy(tcp + 16, &c, 2);
        }
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0) sent += n;
    }
    printf("sent %llu\n", (unsigned long long)sent);
    return 0;
}
