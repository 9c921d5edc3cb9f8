/* Unit tests for services/collector/keyplans: the collector's map of known
 * key ids to plan ids. */
#include <stdio.h>

#include "keyplans.h"
#include "suites.h"

START_TEST(unknown_key_is_null)
{
    keyplans *cache = keyplans_new();
    ck_assert_ptr_nonnull(cache);
    ck_assert_ptr_null(keyplans_lookup(cache, "k1"));
    ck_assert_uint_eq(keyplans_size(cache), 0);
    keyplans_free(cache);
}
END_TEST

START_TEST(put_then_lookup_and_replace)
{
    keyplans *cache = keyplans_new();
    ck_assert_ptr_nonnull(cache);
    ck_assert(keyplans_put(cache, "k1", "gold"));
    ck_assert(keyplans_put(cache, "k2", ""));
    ck_assert_str_eq(keyplans_lookup(cache, "k1"), "gold");
    ck_assert_str_eq(keyplans_lookup(cache, "k2"), ""); /* known, no plan */
    ck_assert(keyplans_put(cache, "k1", "silver"));
    ck_assert_str_eq(keyplans_lookup(cache, "k1"), "silver");
    ck_assert_uint_eq(keyplans_size(cache), 2); /* a replacement adds nothing */
    keyplans_free(cache);
}
END_TEST

/* Far more keys than the first table holds: every one is still found after
 * the table grows, and a key never put is not. */
START_TEST(keys_survive_growth)
{
    enum { KEYS = 5000 };
    keyplans *cache = keyplans_new();
    ck_assert_ptr_nonnull(cache);
    char key[32], plan[32];
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        snprintf(plan, sizeof plan, "plan-%d", i % 7);
        ck_assert(keyplans_put(cache, key, plan));
    }
    ck_assert_uint_eq(keyplans_size(cache), KEYS);
    for (int i = 0; i < KEYS; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        snprintf(plan, sizeof plan, "plan-%d", i % 7);
        const char *got = keyplans_lookup(cache, key);
        ck_assert_ptr_nonnull(got);
        ck_assert_str_eq(got, plan);
    }
    ck_assert_ptr_null(keyplans_lookup(cache, "key-5000"));
    keyplans_free(cache);
}
END_TEST

Suite *keyplans_suite(void)
{
    Suite *s = suite_create("collector_keyplans");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, unknown_key_is_null);
    tcase_add_test(tc, put_then_lookup_and_replace);
    tcase_add_test(tc, keys_survive_growth);
    suite_add_tcase(s, tc);
    return s;
}
