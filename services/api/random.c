/* Ids and key secrets from the kernel's cryptographic random source. */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "api.h"

bool random_base62(const char *prefix, size_t length, char *out, size_t out_size)
{
    static const char alphabet[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    size_t prefix_len = strlen(prefix);
    if (prefix_len + length + 1 > out_size)
        return false;
    memcpy(out, prefix, prefix_len);
    size_t filled = 0;
    while (filled < length) {
        unsigned char bytes[64];
        ssize_t got = getrandom(bytes, sizeof bytes, 0);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        /* Rejection sampling: 248 = 4 * 62, so the characters stay uniform. */
        for (ssize_t i = 0; i < got && filled < length; i++) {
            if (bytes[i] < 248)
                out[prefix_len + filled++] = alphabet[bytes[i] % 62];
        }
    }
    out[prefix_len + length] = '\0';
    return true;
}
