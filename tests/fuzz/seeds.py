#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/),
one small file per seed, named by its content's digest so rerunning changes
nothing. The seeds are the README's example event and the edge cases the
unit tests pin; libFuzzer mutates from them. Run: python3 tests/fuzz/seeds.py"""
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

README_EVENT = (
    '{"specversion":"1.0","id":"9b2f6c1e-...","source":"gw-eu-1","type":"api.request",\n'
    ' "subject":"key_pro_acme","time":"2026-11-23T12:00:00.123Z",\n'
    ' "data":{"method":"GET","endpoint":"/items","status":200,"units":1,"bytes":512}}')


def event(**changes):
    base = {"specversion": "1.0", "id": "e1", "source": "gw-eu-1", "type": "api.request",
            "subject": "key_1", "time": "2026-11-23T11:59:00Z",
            "data": {"method": "GET", "endpoint": "/items", "status": 200, "units": 1,
                     "bytes": 512}}
    for name, value in changes.items():
        if value is DROP:
            base.pop(name, None)
        else:
            base[name] = value
    return json.dumps(base, separators=(",", ":"), ensure_ascii=False).encode()


DROP = object()


def event_seeds():
    seeds = [README_EVENT.encode(), event()]
    for name in ("specversion", "id", "source", "type", "subject", "time", "data"):
        seeds.append(event(**{name: DROP}))
    seeds += [
        event(specversion="0.3"), event(specversion=1.0), event(id=""), event(id="x" * 256),
        event(id="x" * 257), event(subject="k" * 129), event(source="é✓𝄞"),
        event(time="2026-11-23T13:00:00+01:00"), event(time="2026-11-23t11:59:59.999999999z"),
        event(time="2026-11-23T11:59:60Z"), event(time="2026-10-19T12:00:00Z"),
        event(time="2026-11-23T12:05:01Z"), event(time="2026-02-29T00:00:00Z"),
        event(time="not a time"), event(time=1795435200),
        event(data=None), event(data=[]), event(data={"units": 0}),
        event(data={"units": 1000000000}), event(data={"units": 1000000001}),
        event(data={"units": -1}), event(data={"units": 1.5}),
        event(data={"units": 9223372036854775807}), event(data={"bytes": 10 ** 12}),
        event(data={"status": 99}), event(data={"status": 599}),
        event(data={"method": "get"}), event(data={"method": "G3T"}),
        event(data={"method": "M" * 17}), event(data={"endpoint": "/" + "e" * 256}),
        event(extra={"nested": [1, 2, {"a": None}]}),
        b'{"specversion":"1.0","specversion":"1.0"}', b"[]", b"null", b"{", b"\"1.0\"",
        b"\xff\xfe{}", b'{"id":"\xc3"}', b'{"id":"\\u0000"}', b" \t\n{}",
    ]
    return seeds


def eventdiff_seeds():
    # The event seeds, and the inputs where a one-pass scanner could part
    # from jansson: numbers at their edges, literals run into other text,
    # whitespace, repeated names at any depth, escapes, deep nesting.
    texts = [
        '{"specversion":"1.0","id":"a","source":"s","type":"t","subject":"k",'
        '"time":"2026-11-23T11:59:00Z","data":{"units":%s}}' % n
        for n in ("0", "-0", "01", "1.0", "1e0", "1E+2", "-", "999999999999999999",
                  "1000000000000000000", "9223372036854775808", "-9223372036854775809",
                  "1 ", "1x", "+1", ".5", "0x10", "true", "truex", "nul", "null1", "[]",
                  "[1,]", "{}", '{"a":1,"a":2}', '""', '"\\u0031"')
    ]
    texts += [
        '{"a":{"b":1,"b":2}}', '{"a":[{"x":1},{"x":1,"x":2}]}', '{"data":{},"data":{}}',
        '{"id":"x\\/y"}', '{"id":"\\u00e9"}', '{"id":"tab\there"}', '{"id":"\x7f"}',
        '{\r\n"id"\t:\t"x"\r\n}', '{"id":"x"}\x00', '{"id":"x"} ,', '{"id":"x",}',
        '{,"id":"x"}', '{"id" "x"}', '{"id":"x"}{}', '\ufeff{}',
        "[" * 20 + "]" * 20, '{"a":' * 20 + "1" + "}" * 20,
        "{" + ",".join(f'"m{i}":{i}' for i in range(40)) + "}",
    ]
    return event_seeds() + [t.encode("utf-8") for t in texts]


def timeutil_seeds():
    texts = [
        "2026-11-23T12:00:00.123Z", "2026-11-23T12:00:00Z", "2026-11-23t12:00:00z",
        "2026-11-23T12:00:00+01:00", "2026-11-23T12:00:00-23:59", "2026-11-23T23:59:60Z",
        "2026-11-23T12:00:00.123456789Z", "2026-11-23T12:00:00.1234567890Z",
        "2026-11-23T12:00:00.Z", "0000-01-01T00:00:00Z", "0000-01-01T00:00:00+23:59",
        "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59-23:59", "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z", "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
        "2026-11-31T00:00:00Z", "2026-11-23T24:00:00Z", "2026-11-23T12:60:00Z",
        "2026-11-23T12:00:00+24:00", "2026-11-23 12:00:00Z", "2026-11-23", "2024-02-29",
        "0000-01-01", "9999-12-31", "2026-1-23", "+2026-11-23", "",
    ]
    return [t.encode() for t in texts]


def apimodel_seeds():
    plan = {"name": "Pro", "description": "line\nbreak",
            "quota": {"limit": 1000, "period": "WEEK", "offset": 10},
            "throttle": {"rateLimit": 5.5, "burstLimit": 10},
            "methodThrottles": {"/items/GET": {"rateLimit": 1, "burstLimit": 2},
                                "/c/*": {"rateLimit": 0, "burstLimit": 0}},
            "stripeMeterEventName": "calls", "stripeSubscriptionItemId": "si_1"}
    key = {"name": "k", "description": "d", "customerId": "c", "stripeCustomerId": "cus_1",
           "stripeSubscriptionItemId": "si_1", "enabled": False,
           "value": "0123456789abcdefghij", "planId": "pln_1"}
    plan_bodies = [
        plan, {"name": "Basic"}, {"name": ""}, {"name": "n" * 257}, {"name": "tab\there"},
        {"quota": {"limit": 7}, "throttle": None, "description": None},
        {"quota": {"limit": 10 ** 15 + 1, "period": "MONTH"}},
        {"quota": {"limit": 1, "period": "YEAR"}}, {"throttle": {"rateLimit": 1e9}},
        {"throttle": {"rateLimit": 1e10, "burstLimit": 1}},
        {"throttle": {"rateLimit": -0.0, "burstLimit": 2147483648}},
        {"methodThrottles": {"/GET": {"rateLimit": 1, "burstLimit": 1}}},
        {"methodThrottles": {"/é" * 120 + "/GET": {"rateLimit": 1, "burstLimit": 1}}},
        {"methodThrottles": None}, {"stripeMeterEventName": None, "stripeSubscriptionItemId": None},
        {"id": "p"}, {"unknown": 1}, [], "text",
    ]
    key_bodies = [
        key, {"name": ""}, {"customerId": None}, {"value": "short"},
        {"value": "0123456789 abcdefghij"}, {"planId": "bad id"}, {"planId": None},
        {"enabled": "yes"}, {"stripeCustomerId": "c" * 257}, {"createdAt": "x"},
    ]
    # Control byte: bit 0 key, bit 1 creating, bit 2 patching a fully set model.
    seeds = [bytes([2]) + json.dumps(plan).encode(), bytes([3]) + json.dumps(key).encode()]
    for i, body in enumerate(plan_bodies):
        seeds.append(bytes([(2, 4, 0)[i % 3]]) + json.dumps(body, ensure_ascii=False).encode())
    for i, body in enumerate(key_bodies):
        seeds.append(bytes([(3, 5, 1)[i % 3]]) + json.dumps(body, ensure_ascii=False).encode())
    return seeds


def query_seed(now_seconds_after_2000, **values):
    order = ("from", "to", "granularity", "groupBy", "limit", "position")
    present = 0
    parts = []
    for i, name in enumerate(order):
        if name in values:
            present |= 1 << i
            parts.append(values[name].encode())
    return bytes([present]) + struct.pack(">I", now_seconds_after_2000) + b"\0".join(parts)


def query_seeds():
    now = 848750400  # 2026-11-23T12:00:00Z
    return [
        query_seed(now), query_seed(now, granularity="hour"), query_seed(now, granularity="month"),
        query_seed(now, granularity="week"), query_seed(now, groupBy="endpoint"),
        query_seed(now, groupBy="method"), query_seed(now, **{"from": "2026-11-01", "to": "2026-11-23"}),
        query_seed(now, **{"from": "2026-11-23T00:00:00Z", "to": "2026-11-23T00:00:00Z"}),
        query_seed(now, **{"from": "2026-11-24", "to": "2026-11-23"}),
        query_seed(now, **{"from": "2024-01-01", "to": "2026-11-23", "granularity": "day"}),
        query_seed(now, **{"from": "0001-01-01", "granularity": "month"}),
        query_seed(now, **{"from": "0000-12-31", "granularity": "month"}),
        query_seed(now, **{"to": "0001-01-05", "granularity": "month"}),
        query_seed(now, **{"to": "9998-12-31", "granularity": "month"}),
        query_seed(now, **{"to": "2026-11-23T12:30:00+14:00", "granularity": "hour"}),
        query_seed(now, **{"from": "2026-11-23T12:00:00.5Z", "granularity": "hour"}),
        query_seed(now, **{"from": "yesterday"}), query_seed(now, **{"to": ""}),
        query_seed(0), query_seed(0xFFFFFFFF, granularity="month"),
        query_seed(now, limit="100"), query_seed(now, limit="500"), query_seed(now, limit="501"),
        query_seed(now, limit="0"), query_seed(now, limit="-1"), query_seed(now, limit=" 5"),
        query_seed(now, limit="99999999999999999999"),
        query_seed(now, position="cGxuXzE"), query_seed(now, position="pln_1"),
        query_seed(now, position="cGxuXzE="), query_seed(now, position="A"),
        query_seed(now, position="AAAA"), query_seed(now, position="a" * 181),
        # Raw values, as the query string carries them before unescaping.
        query_seed(now, to="2026-11-23T12%3A00%3A00%2B01%3A00", granularity="h%6Fur"),
        query_seed(now, **{"from": "2026-11-01%00", "to": "2026%2F11%2F23"}),
        query_seed(now, position="cGxu%5FzE", limit="1%30"),
    ]


def canonpath_seeds():
    # Targets as gateways send them in X-Original-URI, methods, and
    # methodThrottles keys ("/path/METHOD"); the same bytes feed all three.
    texts = [
        "/", "", "/items", "/items/", "//items//42//", "/ITEMS/Abc", "/items/./42/../43",
        "/../../etc", "/a/b/c/../../..", "/items;jsessionid=1/42;v=2", "/items?x=1#f",
        "/items#frag", "http://gw.example:8080/items/42?q", "HTTPS://h", "h://", "//host/x",
        "/items%2F42", "/items%2f..%2F43", "/%2e%2E/x", "/a%252F", "/a%zz/%4", "/a%00b",
        "\\items\\42", "/items./42..", "/items /42\t", "  /items  ", "/items/...",
        "/caf\u00e9/\u2603", "/a/b/c/d/e/f/g/h/i/j", "/items/GET", "/items/*", "/items/HEAD",
        "//GET", "/ITEMS/%2e/get", " head ", "Post", "*",
    ]
    return [t.encode("utf-8") for t in texts]


def sigv4_seeds():
    # Authorization, method, path, query, then headers: the AWS suite's
    # get-vanilla and header-value-trim requests, and what the aws CLI sends.
    auth = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=%s, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
    texts = [
        "\n".join([auth % "host;x-amz-date", "GET", "", "", "Host:example.amazonaws.com",
                   "X-Amz-Date:20150830T123600Z"]),
        "\n".join([auth % "host;my-header1;my-header2;x-amz-date", "GET", "", "Param2=value2&Param1=value1",
                   "Host:example.amazonaws.com", "My-Header1: value1", "My-Header2: \"a   b   c\"",
                   "X-Amz-Date:20150830T123600Z"]),
        "\n".join([auth % "content-type;host;x-amz-date", "PATCH", "usageplans/pln_1/keys/key_1/usage",
                   "position=cGxu%5FzE&limit=2&a&=b&%E1%88%B4=bar", "Host:127.0.0.1:8080",
                   "Content-Type:application/json", "X-Amz-Date:20261128T120000Z"]),
        "\n".join([auth % "host", "GET", "example space/%2F%zz", "x=%41%", "host:a", "host:b"]),
    ]
    return [t.encode("utf-8") for t in texts]


def batch_seeds():
    # POST /v1/events batch bodies (tally-ingest): arrays of events as
    # gateways send them, with the whitespace, nesting and strings that
    # must not split an event, and the broken shapes refused whole.
    one = event().decode()
    texts = [
        "[]", " [ ] ", "[" + one + "]", "[" + one + "," + one + "]",
        "[\n  " + one + " ,\n  " + event(id="e2").decode() + "\n]\n",
        '[{"a":"],}\\"{["},{"b":[[],{}]}]', '[1,"x",null,true,[1,[2]],{"k":{}}]',
        "[" + one, "[1,,2]", "[1,]", "[,1]", "[1] x", "[][]", "{}", "", "[{]}", '["\\"]',
        "[" + ",".join([one] * 70) + "]",
    ]
    return [t.encode("utf-8") for t in texts]


def write(target, seeds):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    for seed in seeds:
        name = hashlib.sha1(seed).hexdigest()[:16]
        with open(os.path.join(folder, name), "wb") as f:
            f.write(seed)


if __name__ == "__main__":
    write("event", event_seeds())
    write("eventdiff", eventdiff_seeds())
    write("timeutil", timeutil_seeds())
    write("apimodel", apimodel_seeds())
    write("query", query_seeds())
    write("canonpath", canonpath_seeds())
    write("batch", batch_seeds())
    write("sigv4", sigv4_seeds())
