/* Which addresses a webhook may connect to: every address a delivery's
 * socket is about to connect to is classified here (hooks.c calls it from
 * libcurl's open-socket callback, so it is the address actually dialled,
 * whatever the name resolved to, not the URL's name) and refused unless
 * its class is public or allowed by TALLY_WEBHOOK_ALLOW_NETWORKS. Pure. */
#ifndef TALLY_REPORTER_HOOKADDR_H
#define TALLY_REPORTER_HOOKADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

typedef enum {
    HOOKADDR_PUBLIC,
    HOOKADDR_LOOPBACK,   /* 127.0.0.0/8, ::1 */
    HOOKADDR_PRIVATE,    /* 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT), fc00::/7 */
    HOOKADDR_LINK_LOCAL, /* 169.254.0.0/16, fe80::/10 */
    HOOKADDR_METADATA,   /* cloud metadata services: 169.254.169.254, 169.254.170.2,
                          * fd00:ec2::254, 100.100.100.200, 192.0.0.192 */
    HOOKADDR_RESERVED,   /* never: 0/8, 224/4 multicast, 240/4, ::, ff00::/8, other
                          * special-purpose blocks (192.0.0/24, 198.18/15, 2001:db8::/32...) */
    HOOKADDR_CLASS_COUNT
} hookaddr_class;

/* A set of allowed classes, bit (1 << class). Public is always allowed,
 * reserved never. */
typedef unsigned hookaddr_allow;

/* The class of an IPv4 address (host order) or IPv6 address (16 bytes,
 * network order; IPv4-mapped and NAT64 addresses are judged by their IPv4
 * address). */
hookaddr_class hookaddr_classify_v4(unsigned long address);
hookaddr_class hookaddr_classify_v6(const unsigned char address[16]);
/* The class of a socket address; HOOKADDR_RESERVED for another family. */
hookaddr_class hookaddr_classify(const struct sockaddr *address, size_t len);

/* "loopback", "private", "link-local", "metadata", "public", "reserved". */
const char *hookaddr_class_name(hookaddr_class c);

/* Parses TALLY_WEBHOOK_ALLOW_NETWORKS: "" or a comma-separated list of
 * loopback, private, link-local, metadata. False with err filled for
 * anything else. */
bool hookaddr_parse_allow(const char *text, hookaddr_allow *out, char *err, size_t err_size);

bool hookaddr_allowed(hookaddr_allow allow, hookaddr_class c);

/* The numeric text of a socket address into out ("" when unknown). */
void hookaddr_format(const struct sockaddr *address, size_t len, char *out, size_t size);

#endif
