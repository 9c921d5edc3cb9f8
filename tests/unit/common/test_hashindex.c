/* Unit tests for common/hashindex: the open-addressing index behind the
 * services' in-memory maps. Keys here are small integers stored in the
 * caller's array; the hash is deliberately poor (key % 4) so probing,
 * collisions and growth are exercised. */
#include <check.h>
#include <stdint.h>

#include "hashindex.h"
#include "suites.h"

static bool holds(const void *entries, uint32_t index, const void *key)
{
    return ((const int *)entries)[index] == *(const int *)key;
}

static uint64_t poor_hash_of(int key)
{
    return (uint64_t)(key % 4);
}

static uint64_t hash_of_entry(const void *entries, uint32_t index)
{
    return poor_hash_of(((const int *)entries)[index]);
}

static long find(const hashindex *ix, const int *entries, int key)
{
    return hashindex_find(ix, poor_hash_of(key), holds, entries, &key);
}

START_TEST(finds_what_was_added_and_nothing_else)
{
    int entries[8] = {10, 14, 18, 3};
    hashindex ix;
    ck_assert(hashindex_init(&ix, 8));
    for (uint32_t i = 0; i < 4; i++)
        ck_assert(hashindex_add(&ix, poor_hash_of(entries[i]), i));
    for (long i = 0; i < 4; i++)
        ck_assert_int_eq(find(&ix, entries, entries[i]), i);
    ck_assert_int_eq(find(&ix, entries, 22), -1); /* same hash as 10, absent */
    ck_assert_int_eq(find(&ix, entries, 5), -1);
    hashindex_clear(&ix);
    ck_assert_int_eq(find(&ix, entries, 10), -1);
    hashindex_free(&ix);
}
END_TEST

START_TEST(refuses_past_half_full_until_grown)
{
    enum { COUNT = 100 };
    int entries[COUNT];
    hashindex ix;
    ck_assert(hashindex_init(&ix, 8)); /* 16 slots: 8 entries before it must grow */
    uint32_t added = 0;
    for (; added < COUNT; added++) {
        entries[added] = (int)added * 7;
        if (hashindex_full(&ix)) {
            ck_assert(!hashindex_add(&ix, poor_hash_of(entries[added]), added));
            ck_assert(hashindex_grow(&ix, hash_of_entry, entries));
        }
        ck_assert(hashindex_add(&ix, poor_hash_of(entries[added]), added));
    }
    ck_assert_uint_ge(ix.slot_count, 2 * COUNT);
    for (long i = 0; i < COUNT; i++)
        ck_assert_int_eq(find(&ix, entries, entries[i]), i);
    ck_assert_int_eq(find(&ix, entries, 1), -1);
    hashindex_free(&ix);
}
END_TEST

START_TEST(an_empty_index_finds_nothing)
{
    hashindex ix = {0};
    int entries[1] = {1};
    ck_assert_int_eq(find(&ix, entries, 1), -1);
    hashindex_free(&ix);
}
END_TEST

Suite *hashindex_suite(void)
{
    Suite *s = suite_create("hashindex");
    TCase *tc = tcase_create("index");
    tcase_add_test(tc, finds_what_was_added_and_nothing_else);
    tcase_add_test(tc, refuses_past_half_full_until_grown);
    tcase_add_test(tc, an_empty_index_finds_nothing);
    suite_add_tcase(s, tc);
    return s;
}
