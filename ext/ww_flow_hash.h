/* SHA-1 (FIPS 180-4) and base64 (RFC 4648) for the Community ID of a flow.
 *
 * Community ID hashes at most 2 + 16 + 16 + 1 + 1 + 2 + 2 = 40 bytes, so
 * ww_sha1_short() takes a single message of at most 55 bytes, which pads
 * to one 64-byte block. SHA-1 is not used here for security: the Community
 * ID specification fixes it.
 */
#ifndef WW_FLOW_HASH_H
#define WW_FLOW_HASH_H

#include <stdint.h>
#include <string.h>

#define WW_SHA1_MAX_SHORT 55

static inline uint32_t ww_rotl32(uint32_t value, int bits)
{
    return (value << bits) | (value >> (32 - bits));
}

/* Hash `length` (<= 55) bytes into `digest` (20 bytes). Returns -1 and
 * writes nothing when the message does not fit one block. */
static int ww_sha1_short(const uint8_t *message, size_t length, uint8_t digest[20])
{
    uint8_t block[64];
    uint32_t w[80];
    uint32_t h0 = 0x67452301u, h1 = 0xEFCDAB89u, h2 = 0x98BADCFEu,
             h3 = 0x10325476u, h4 = 0xC3D2E1F0u;
    uint64_t bit_length = (uint64_t)length * 8u;
    int t;

    if (length > WW_SHA1_MAX_SHORT)
        return -1;

    /* Padding: the message, a 1 bit, zeros, then the length in bits as a
     * 64-bit big-endian integer in the last 8 bytes of the block. */
    memset(block, 0, sizeof(block));
    memcpy(block, message, length);
    block[length] = 0x80;
    for (t = 0; t < 8; t++)
        block[63 - t] = (uint8_t)(bit_length >> (8 * t));

    for (t = 0; t < 16; t++)
        w[t] = ((uint32_t)block[4 * t] << 24) | ((uint32_t)block[4 * t + 1] << 16) |
               ((uint32_t)block[4 * t + 2] << 8) | (uint32_t)block[4 * t + 3];
    for (t = 16; t < 80; t++)
        w[t] = ww_rotl32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);

    {
        uint32_t a = h0, b = h1, c = h2, d = h3, e = h4, f, k, temp;
        for (t = 0; t < 80; t++) {
            if (t < 20) {
                f = (b & c) | (~b & d);
                k = 0x5A827999u;
            } else if (t < 40) {
                f = b ^ c ^ d;
                k = 0x6ED9EBA1u;
            } else if (t < 60) {
                f = (b & c) | (b & d) | (c & d);
                k = 0x8F1BBCDCu;
            } else {
                f = b ^ c ^ d;
                k = 0xCA62C1D6u;
            }
            temp = ww_rotl32(a, 5) + f + e + k + w[t];
            e = d;
            d = c;
            c = ww_rotl32(b, 30);
            b = a;
            a = temp;
        }
        h0 += a;
        h1 += b;
        h2 += c;
        h3 += d;
        h4 += e;
    }

    {
        uint32_t words[5] = {h0, h1, h2, h3, h4};
        for (t = 0; t < 5; t++) {
            digest[4 * t] = (uint8_t)(words[t] >> 24);
            digest[4 * t + 1] = (uint8_t)(words[t] >> 16);
            digest[4 * t + 2] = (uint8_t)(words[t] >> 8);
            digest[4 * t + 3] = (uint8_t)words[t];
        }
    }
    return 0;
}

/* Encode `length` bytes as padded base64 into `text`, which needs
 * 4 * ceil(length / 3) + 1 bytes; the result is NUL-terminated. */
static void ww_base64_encode(const uint8_t *data, size_t length, char *text)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0, out = 0;

    while (i + 3 <= length) {
        uint32_t group = ((uint32_t)data[i] << 16) | ((uint32_t)data[i + 1] << 8) | data[i + 2];
        text[out++] = alphabet[(group >> 18) & 63];
        text[out++] = alphabet[(group >> 12) & 63];
        text[out++] = alphabet[(group >> 6) & 63];
        text[out++] = alphabet[group & 63];
        i += 3;
    }
    if (length - i == 1) {
        uint32_t group = (uint32_t)data[i] << 16;
        text[out++] = alphabet[(group >> 18) & 63];
        text[out++] = alphabet[(group >> 12) & 63];
        text[out++] = '=';
        text[out++] = '=';
    } else if (length - i == 2) {
        uint32_t group = ((uint32_t)data[i] << 16) | ((uint32_t)data[i + 1] << 8);
        text[out++] = alphabet[(group >> 18) & 63];
        text[out++] = alphabet[(group >> 12) & 63];
        text[out++] = alphabet[(group >> 6) & 63];
        text[out++] = '=';
    }
    text[out] = '\0';
}

#endif /* WW_FLOW_HASH_H */
