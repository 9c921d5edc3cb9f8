/* Address classes for the webhook deliveries' connect-time check. */
#include "hookaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* True when `address` is in prefix/bits (host order). */
static bool in_v4(unsigned long address, unsigned long prefix, int bits)
{
    unsigned long mask = bits == 0 ? 0 : (0xffffffffUL << (32 - bits)) & 0xffffffffUL;
    return (address & mask) == (prefix & mask);
}

#define V4(a, b, c, d) (((unsigned long)(a) << 24) | ((unsigned long)(b) << 16) | \
                        ((unsigned long)(c) << 8) | (unsigned long)(d))

hookaddr_class hookaddr_classify_v4(unsigned long a)
{
    /* The metadata services first: each sits inside a wider class. */
    if (a == V4(169, 254, 169, 254) || a == V4(169, 254, 170, 2) ||
        a == V4(100, 100, 100, 200) || a == V4(192, 0, 0, 192))
        return HOOKADDR_METADATA;
    if (in_v4(a, V4(127, 0, 0, 0), 8))
        return HOOKADDR_LOOPBACK;
    if (in_v4(a, V4(169, 254, 0, 0), 16))
        return HOOKADDR_LINK_LOCAL;
    if (in_v4(a, V4(10, 0, 0, 0), 8) || in_v4(a, V4(172, 16, 0, 0), 12) ||
        in_v4(a, V4(192, 168, 0, 0), 16) || in_v4(a, V4(100, 64, 0, 0), 10))
        return HOOKADDR_PRIVATE;
    if (in_v4(a, V4(0, 0, 0, 0), 8) || in_v4(a, V4(224, 0, 0, 0), 4) ||
        in_v4(a, V4(240, 0, 0, 0), 4) || in_v4(a, V4(192, 0, 0, 0), 24) ||
        in_v4(a, V4(192, 0, 2, 0), 24) || in_v4(a, V4(198, 18, 0, 0), 15) ||
        in_v4(a, V4(198, 51, 100, 0), 24) || in_v4(a, V4(203, 0, 113, 0), 24))
        return HOOKADDR_RESERVED;
    return HOOKADDR_PUBLIC;
}

static unsigned long embedded_v4(const unsigned char a[16])
{
    return V4(a[12], a[13], a[14], a[15]);
}

hookaddr_class hookaddr_classify_v6(const unsigned char a[16])
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b};
    static const unsigned char zero[15] = {0};
    static const unsigned char ec2_metadata[16] = {0xfd, 0, 0x0e, 0xc2, 0, 0, 0,    0,
                                                   0,    0, 0,    0,    0, 0, 0x02, 0x54};
    /* ::ffff:a.b.c.d and 64:ff9b::a.b.c.d reach an IPv4 address: judge that. */
    if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
        return hookaddr_classify_v4(embedded_v4(a));
    /* 6to4 (2002:V4ADDR::/48) routes to its embedded IPv4 address. */
    if (a[0] == 0x20 && a[1] == 0x02)
        return hookaddr_classify_v4(V4(a[2], a[3], a[4], a[5]));
    /* Teredo (2001::/32) and local-use NAT64 (64:ff9b:1::/48) tunnel to IPv4
     * addresses that cannot be judged from here: refused. */
    if ((a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0) ||
        (a[0] == 0 && a[1] == 0x64 && a[2] == 0xff && a[3] == 0x9b && a[4] == 0 && a[5] == 1))
        return HOOKADDR_RESERVED;
    if (memcmp(a, ec2_metadata, 16) == 0)
        return HOOKADDR_METADATA;
    if (memcmp(a, zero, 15) == 0)
        return a[15] == 1 ? HOOKADDR_LOOPBACK : HOOKADDR_RESERVED; /* ::1, :: */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
        return HOOKADDR_LINK_LOCAL; /* fe80::/10 */
    if ((a[0] & 0xfe) == 0xfc || (a[0] == 0xfe && (a[1] & 0xc0) == 0xc0))
        return HOOKADDR_PRIVATE; /* fc00::/7, and fec0::/10 (site-local, deprecated) */
    if (a[0] == 0xff || a[0] == 0 || (a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0d &&
                                      a[3] == 0xb8))
        return HOOKADDR_RESERVED; /* multicast, ::/8 (IPv4-compatible etc.), 2001:db8::/32 */
    return HOOKADDR_PUBLIC;
}

hookaddr_class hookaddr_classify(const struct sockaddr *address, size_t len)
{
    if (address->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)(const void *)address;
        return hookaddr_classify_v4(ntohl(v4->sin_addr.s_addr));
    }
    if (address->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)(const void *)address;
        return hookaddr_classify_v6(v6->sin6_addr.s6_addr);
    }
    return HOOKADDR_RESERVED;
}

static const char *const class_names[HOOKADDR_CLASS_COUNT] = {
    [HOOKADDR_PUBLIC] = "public",         [HOOKADDR_LOOPBACK] = "loopback",
    [HOOKADDR_PRIVATE] = "private",       [HOOKADDR_LINK_LOCAL] = "link-local",
    [HOOKADDR_METADATA] = "metadata",     [HOOKADDR_RESERVED] = "reserved",
};

const char *hookaddr_class_name(hookaddr_class c)
{
    return c < HOOKADDR_CLASS_COUNT ? class_names[c] : "reserved";
}

bool hookaddr_parse_allow(const char *text, hookaddr_allow *out, char *err, size_t err_size)
{
    hookaddr_allow allow = 0;
    const char *p = text;
    while (*p) {
        size_t n = strcspn(p, ",");
        bool known = false;
        for (int c = HOOKADDR_LOOPBACK; c <= HOOKADDR_METADATA; c++)
            if (strlen(class_names[c]) == n && strncmp(p, class_names[c], n) == 0) {
                allow |= 1u << c;
                known = true;
            }
        if (!known) {
            snprintf(err, err_size,
                     "TALLY_WEBHOOK_ALLOW_NETWORKS: \"%.*s\" is none of loopback, private, "
                     "link-local, metadata",
                     (int)(n > 40 ? 40 : n), p);
            return false;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    *out = allow;
    return true;
}

bool hookaddr_allowed(hookaddr_allow allow, hookaddr_class c)
{
    if (c == HOOKADDR_PUBLIC)
        return true;
    if (c >= HOOKADDR_RESERVED)
        return false;
    return (allow & (1u << c)) != 0;
}

void hookaddr_format(const struct sockaddr *address, size_t len, char *out, size_t size)
{
    out[0] = '\0';
    if (address->sa_family == AF_INET && len >= sizeof(struct sockaddr_in))
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)address)->sin_addr, out,
                  (socklen_t)size);
    else if (address->sa_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)address)->sin6_addr,
                  out, (socklen_t)size);
}
