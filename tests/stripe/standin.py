#!/usr/bin/env python3
"""Stripe stand-in for Tally's tests (standard library only).

Serves the two Stripe endpoints tally-reporter uses, with Stripe's wire
format, idempotency and error rules (see docs/STRIPE.md §7 and
tests/stripe/README.md), plus injectable faults and a control API under
/_standin/ (no auth) to configure it and read back the ledger and stats.

    python3 tests/stripe/standin.py --port 0 --api-key sk_test_x \
        --customers cus_a,cus_b --meters api_calls \
        --subscription-items si_1=cus_a --account-version 2025-02-24.acacia

Importable too:

    s = StandIn(api_key="sk_test_x", customers=["cus_a"]); s.start()
    ... s.url, s.configure({...}), s.ledger(), s.events(), s.stats(), s.reset()
    s.stop()
"""

import argparse
import collections
import hashlib
import hmac
import http.server
import itertools
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from email.utils import formatdate

MAX_BODY = 64 * 1024
DRAIN_MAX = 1024 * 1024          # a too-large body up to this size is read and dropped, beyond it we close
MAX_DISTINCT = 64                # cap on the user_agents / stripe_versions lists
PAST_WINDOW_S = 35 * 86400
FUTURE_WINDOW_S = 300
USAGE_RECORDS_REMOVED = "2025-03-31"
DEFAULT_ACCOUNT_VERSION = "2025-02-24.acacia"

PRE_FAULTS = ("429_retry", "429_plain", "429_lock", "409")
PROC_FAULTS = ("500_before", "500_after", "drop_after", "slow")
FAULT_KINDS = PRE_FAULTS + PROC_FAULTS
SEQ_PASS = ("ok", "none")        # a fault_sequence entry meaning "no fault for this request"

METER_PARAMS = ("event_name", "payload[stripe_customer_id]", "payload[value]", "identifier", "timestamp")
USAGE_PARAMS = ("quantity", "timestamp", "action")

RE_UINT = re.compile(r"^[0-9]+$")
RE_INT = re.compile(r"^-?[0-9]+$")
RE_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2})(\.[a-z]+)?$")
RE_USAGE_PATH = re.compile(r"^/v1/subscription_items/([^/]+)/usage_records$")
RE_KEY_PREFIX = re.compile(r"^([a-z]{2,3}_(?:test|live)_)")

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
           429: "Too Many Requests", 500: "Internal Server Error"}

_date_cache = [0, ""]


def _http_date():
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[1] = formatdate(now, usegmt=True)
        _date_cache[0] = now
    return _date_cache[1]


def mask_key(key):
    """Stripe-style masked form of a presented key: prefix, ****, last 4."""
    m = RE_KEY_PREFIX.match(key)
    if len(key) >= 12:
        return (m.group(1) if m else "") + "****" + key[-4:]
    return "****"


def stripe_error(status, etype, message, code=None, param=None, should_retry=None, store=True):
    err = {"type": etype, "message": message}
    if code is not None:
        err["code"] = code
    if param is not None:
        err["param"] = param
    headers = []
    if should_retry is not None:
        headers.append(("Stripe-Should-Retry", "true" if should_retry else "false"))
    return Reply(status, {"error": err}, headers, store)


class Reply:
    __slots__ = ("status", "body", "headers", "store")

    def __init__(self, status, body, headers=None, store=True):
        self.status = status
        self.body = body            # dict (JSON-encoded on send) or bytes
        self.headers = headers or []
        self.store = store          # may be saved under an Idempotency-Key


class _Drop(Exception):
    """Close the connection without answering."""


class StandIn:
    def __init__(self, api_key, host="127.0.0.1", port=0, customers=(), meters=("api_calls",),
                 subscription_items=None, account_version=DEFAULT_ACCOUNT_VERSION, seed=None,
                 verbose=False):
        if not api_key:
            raise ValueError("api_key is required")
        # Only a digest of the key is kept; it is never stored or printed.
        self._key_digest = hashlib.sha256(api_key.encode()).digest()
        self.host = host
        self.port = port
        self.verbose = verbose
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._initial = {
            "customers": list(customers),
            "meters": list(meters),
            "subscription_items": dict(subscription_items or {}),
            "faults": {"rate": 0.0, "kinds": [], "slow_s": 3.0, "seed": seed},
            "fault_sequence": [],
            "rate_limit_per_s": None,
            "account_version": account_version,
            "latency_s": 0.0,
        }
        self._server = None
        self._thread = None
        self._reqid_prefix = uuid.uuid4().hex[:6]
        self._reqid_counter = itertools.count(1)
        self._apply_config(json.loads(json.dumps(self._initial)), initial=True)
        self._reset_state()

    # ----- config / state ---------------------------------------------
    def _apply_config(self, cfg, initial=False):
        """Validates and applies a (partial) config dict. Caller holds the lock (or initial)."""
        new = {} if initial else self._cfg_view()
        errors = []

        def strlist(name):
            v = cfg[name]
            if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
                errors.append(name + " must be a list of non-empty strings")
                return None
            return list(v)

        if "customers" in cfg:
            new["customers"] = strlist("customers")
        if "meters" in cfg:
            new["meters"] = strlist("meters")
        if "subscription_items" in cfg:
            v = cfg["subscription_items"]
            if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
                errors.append("subscription_items must be an object of si -> customer strings")
            else:
                new["subscription_items"] = dict(v)
        faults = dict(new.get("faults") or {"rate": 0.0, "kinds": [], "slow_s": 3.0, "seed": None})
        reseed = initial
        if "faults" in cfg:
            f = cfg["faults"]
            if not isinstance(f, dict):
                errors.append("faults must be an object")
            else:
                for k in f:
                    if k not in ("rate", "kinds", "slow_s", "seed"):
                        errors.append("unknown faults key: " + k)
                if "rate" in f:
                    if not isinstance(f["rate"], (int, float)) or not 0 <= f["rate"] <= 1:
                        errors.append("faults.rate must be a number in [0, 1]")
                    else:
                        faults["rate"] = float(f["rate"])
                if "kinds" in f:
                    ks = f["kinds"]
                    if not isinstance(ks, list) or any(k not in FAULT_KINDS for k in ks):
                        errors.append("faults.kinds must be a list of: " + ", ".join(FAULT_KINDS))
                    else:
                        faults["kinds"] = list(ks)
                if "slow_s" in f:
                    if not isinstance(f["slow_s"], (int, float)) or f["slow_s"] < 0:
                        errors.append("faults.slow_s must be a number >= 0")
                    else:
                        faults["slow_s"] = float(f["slow_s"])
                if "seed" in f:
                    if f["seed"] is not None and not isinstance(f["seed"], int):
                        errors.append("faults.seed must be an integer or null")
                    else:
                        faults["seed"] = f["seed"]
                        reseed = True
        new["faults"] = faults
        if "fault_sequence" in cfg:
            seq = cfg["fault_sequence"]
            if not isinstance(seq, list) or any(k not in FAULT_KINDS + SEQ_PASS for k in seq):
                errors.append("fault_sequence must be a list of: " + ", ".join(FAULT_KINDS + SEQ_PASS))
            else:
                new["fault_sequence"] = list(seq)
        if "rate_limit_per_s" in cfg:
            v = cfg["rate_limit_per_s"]
            if v is not None and (not isinstance(v, (int, float)) or v <= 0):
                errors.append("rate_limit_per_s must be a positive number or null")
            else:
                new["rate_limit_per_s"] = v
        if "account_version" in cfg:
            v = cfg["account_version"]
            if not isinstance(v, str) or not RE_VERSION.match(v):
                errors.append("account_version must look like 2025-02-24.acacia")
            else:
                new["account_version"] = v
        if "latency_s" in cfg:
            v = cfg["latency_s"]
            if not isinstance(v, (int, float)) or v < 0:
                errors.append("latency_s must be a number >= 0")
            else:
                new["latency_s"] = float(v)
        for k in cfg:
            if k not in self._initial:
                errors.append("unknown config key: " + k)
        if errors:
            raise ValueError("; ".join(errors))
        self.customers = set(new["customers"])
        self.customers_any = "*" in self.customers
        self.meters = set(new["meters"])
        self.subscription_items = new["subscription_items"]
        self.faults = new["faults"]
        self.fault_sequence = collections.deque(new["fault_sequence"])
        self.rate_limit_per_s = new["rate_limit_per_s"]
        self.account_version = new["account_version"]
        self.latency_s = new["latency_s"]
        self._customers_list = new["customers"]
        self._meters_list = new["meters"]
        if reseed:
            self._rng = random.Random(self.faults["seed"])

    def _cfg_view(self):
        return {
            "customers": list(self._customers_list),
            "meters": list(self._meters_list),
            "subscription_items": dict(self.subscription_items),
            "faults": dict(self.faults, kinds=list(self.faults["kinds"])),
            "fault_sequence": list(self.fault_sequence),
            "rate_limit_per_s": self.rate_limit_per_s,
            "account_version": self.account_version,
            "latency_s": self.latency_s,
        }

    def _reset_state(self):
        self._idem = {}                      # key -> dict(state, fp, status, body, headers)
        self._identifiers = set()
        self._meter_ledger = {}              # cus -> meter -> int
        self._usage_ledger = {}              # si -> int
        self._events = []
        self._accepted = 0
        self._inflight = {}                  # ("meter", cus, meter) / ("si", si) -> n
        self._inflight_total = 0
        self._rps_window = collections.deque()
        self._rl_window = collections.deque()
        self._stats = {
            "requests": 0, "by_status": {}, "faults": {}, "replays": 0,
            "duplicate_identifiers": 0, "idempotency_conflicts": 0,
            "idempotency_mismatches": 0, "idempotency_in_progress": 0,
            "auth_failures": 0, "bad_requests": 0, "rate_limited": 0, "dropped": 0,
            "max_rps": 0, "max_concurrent": 0, "max_concurrent_total": 0,
            "concurrency_violations": 0, "concurrency_violation_keys": [],
            "action_set": 0, "user_agents": [], "stripe_versions": [],
        }

    # ----- public control methods (same as the HTTP control API) --------
    def configure(self, cfg):
        with self._lock:
            self._apply_config(cfg)
            return self._cfg_view()

    def config(self):
        with self._lock:
            return self._cfg_view()

    def ledger(self):
        with self._lock:
            return {
                "meter_events": {c: dict(m) for c, m in self._meter_ledger.items()},
                "usage_records": dict(self._usage_ledger),
                "identifiers": len(self._identifiers),
                "accepted": self._accepted,
            }

    def events(self):
        with self._lock:
            return [dict(e) for e in self._events]

    def stats(self):
        with self._lock:
            s = dict(self._stats)
            s["by_status"] = dict(s["by_status"])
            s["faults"] = dict(s["faults"])
            s["user_agents"] = list(s["user_agents"])
            s["stripe_versions"] = list(s["stripe_versions"])
            s["concurrency_violation_keys"] = list(s["concurrency_violation_keys"])
            s["in_flight"] = self._inflight_total
            s["stored_idempotency_keys"] = len(self._idem)
            return s

    def reset(self, config=False):
        with self._lock:
            if config:
                self._apply_config(json.loads(json.dumps(self._initial)), initial=True)
            self._reset_state()
            return {"reset": True, "config": self._cfg_view()}

    # ----- lifecycle -----------------------------------------------------
    def start(self):
        standin = self

        class Handler(_Handler):
            pass
        Handler.standin = standin
        self._server = _Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="stripe-standin", daemon=True)
        self._thread.start()
        return self.host, self.port

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    def stop(self):
        self._stopping.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ----- helpers used by the handler ------------------------------------
    def next_request_id(self):
        return "req_%s%08d" % (self._reqid_prefix, next(self._reqid_counter))

    def key_ok(self, presented):
        return hmac.compare_digest(hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest(),
                                   self._key_digest)

    def customer_known(self, cus):
        return cus in self.customers or (self.customers_any and cus.startswith("cus_"))

    def note_request(self, ua, version):
        """Counts an API request; returns True when the configured rate limit refuses it."""
        now = time.monotonic()
        with self._lock:
            st = self._stats
            st["requests"] += 1
            w = self._rps_window
            w.append(now)
            edge = now - 1.0
            while w and w[0] <= edge:
                w.popleft()
            if len(w) > st["max_rps"]:
                st["max_rps"] = len(w)
            if ua and ua not in st["user_agents"] and len(st["user_agents"]) < MAX_DISTINCT:
                st["user_agents"].append(ua)
            if version and version not in st["stripe_versions"] and len(st["stripe_versions"]) < MAX_DISTINCT:
                st["stripe_versions"].append(version)
            limit = self.rate_limit_per_s
            if limit is not None:
                r = self._rl_window
                while r and r[0] <= edge:
                    r.popleft()
                if len(r) >= limit:
                    st["rate_limited"] += 1
                    return True
                r.append(now)
            return False

    def count(self, name, n=1):
        with self._lock:
            self._stats[name] += n

    def count_status(self, status):
        with self._lock:
            bs = self._stats["by_status"]
            k = str(status)
            bs[k] = bs.get(k, 0) + 1

    def enter(self, key):
        with self._lock:
            n = self._inflight.get(key, 0) + 1
            self._inflight[key] = n
            self._inflight_total += 1
            st = self._stats
            if n > 1:
                st["concurrency_violations"] += 1
                name = "/".join(key[1:])
                if name not in st["concurrency_violation_keys"] and len(st["concurrency_violation_keys"]) < MAX_DISTINCT:
                    st["concurrency_violation_keys"].append(name)
            if n > st["max_concurrent"]:
                st["max_concurrent"] = n
            if self._inflight_total > st["max_concurrent_total"]:
                st["max_concurrent_total"] = self._inflight_total

    def leave(self, key):
        with self._lock:
            n = self._inflight[key] - 1
            if n:
                self._inflight[key] = n
            else:
                del self._inflight[key]
            self._inflight_total -= 1

    def draw_fault(self):
        """Draws this request's fault: from the sequence first, else at random.
        Returns (pre_fault, proc_fault_random, consumed_sequence). Sequence
        entries for processing faults are consumed later by take_proc_fault(),
        by a request that reaches processing."""
        with self._lock:
            seq = self.fault_sequence
            if seq:
                head = seq[0]
                if head in PRE_FAULTS or head in SEQ_PASS:
                    seq.popleft()
                    return (head if head in PRE_FAULTS else None), None, True
                return None, None, False
            f = self.faults
            if f["rate"] > 0 and f["kinds"] and self._rng.random() < f["rate"]:
                kind = self._rng.choice(f["kinds"])
                if kind in PRE_FAULTS:
                    return kind, None, False
                return None, kind, False
            return None, None, False

    def take_proc_fault(self, drawn):
        with self._lock:
            seq = self.fault_sequence
            if seq and seq[0] in PROC_FAULTS:
                return seq.popleft()
            return drawn

    def count_fault(self, kind):
        with self._lock:
            f = self._stats["faults"]
            f[kind] = f.get(kind, 0) + 1

    # idempotency
    def idem_begin(self, key, fp):
        """Returns ("new", None) after marking the key in progress, or
        ("replay", entry), ("mismatch", None), ("busy", None)."""
        with self._lock:
            e = self._idem.get(key)
            if e is None:
                self._idem[key] = {"state": "busy", "fp": fp}
                return "new", None
            if e["fp"] != fp:
                self._stats["idempotency_mismatches"] += 1
                self._stats["idempotency_conflicts"] += 1
                return "mismatch", None
            if e["state"] == "busy":
                self._stats["idempotency_in_progress"] += 1
                self._stats["idempotency_conflicts"] += 1
                return "busy", None
            self._stats["replays"] += 1
            return "replay", e

    def idem_finish(self, key, reply, body_bytes, headers):
        with self._lock:
            e = self._idem.get(key)
            if e is None:
                return
            if reply is None or not reply.store:
                del self._idem[key]
            else:
                e.update(state="done", status=reply.status, body=body_bytes, headers=headers)

    # ledger
    def accept_meter_event(self, ev):
        with self._lock:
            ident = ev["identifier"]
            if ident in self._identifiers:
                self._stats["duplicate_identifiers"] += 1
                return False
            self._identifiers.add(ident)
            per = self._meter_ledger.setdefault(ev["customer"], {})
            per[ev["event_name"]] = per.get(ev["event_name"], 0) + ev["value"]
            self._events.append(ev)
            self._accepted += 1
            return True

    def accept_usage_record(self, rec):
        with self._lock:
            si = rec["subscription_item"]
            if rec["action"] == "set":
                self._usage_ledger[si] = rec["value"]
                self._stats["action_set"] += 1
            else:
                self._usage_ledger[si] = self._usage_ledger.get(si, 0) + rec["value"]
            self._events.append(rec)
            self._accepted += 1


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def _fingerprint(method, path, params, raw):
    if params is not None:
        return (method, path, tuple(sorted(params)))
    return (method, path, raw)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "stripe-standin"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = 120
    standin = None  # set on the subclass
    _track = None

    # -- plumbing --------------------------------------------------------
    def log_message(self, fmt, *args):
        if self.standin.verbose:
            sys.stderr.write("stripe-standin: %s %s\n" % (self.address_string(), fmt % args))

    def handle_expect_100(self):
        # Do not invite a body we are going to refuse.
        try:
            if int(self.headers.get("Content-Length", "0")) > MAX_BODY:
                return True
        except ValueError:
            pass
        return super().handle_expect_100()

    def _release(self):
        """Ends this request's in-flight tracking (before the answer is written,
        so a client's next request cannot race the bookkeeping)."""
        t = self._track
        if t is not None:
            self._track = None
            self.standin.leave(t)

    def _send(self, status, body, headers=(), request_id=None):
        """Writes one whole response with one write. body: bytes."""
        self._release()
        lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Unknown")),
                 "Server: stripe-standin", "Date: " + _http_date(),
                 "Content-Type: application/json", "Content-Length: %d" % len(body)]
        seen_rid = False
        for k, v in headers:
            if k == "Request-Id":
                seen_rid = True
            lines.append("%s: %s" % (k, v))
        if not seen_rid:
            lines.append("Request-Id: " + (request_id or self.standin.next_request_id()))
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            data += body
        if self.standin.verbose:
            self.log_message('"%s" %d %d', self.requestline, status, len(body))
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _read_body(self):
        """Returns the body bytes, or None when too large (413 to answer)."""
        te = self.headers.get("Transfer-Encoding", "").lower()
        if "chunked" in te:
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise _Drop()
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise _Drop()
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    self.close_connection = True
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            return b"".join(chunks)
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        try:
            n = int(cl)
            if n < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return b"\x00bad-length"
        if n > MAX_BODY:
            if n <= DRAIN_MAX and self.headers.get("Expect", "").lower() != "100-continue":
                left = n
                while left > 0:
                    got = self.rfile.read(min(left, 65536))
                    if not got:
                        break
                    left -= len(got)
            else:
                self.close_connection = True
            return None
        return self.rfile.read(n) if n else b""

    def _json(self, status, obj, headers=()):
        self._send(status, json.dumps(obj).encode(), headers)

    # -- dispatch --------------------------------------------------------
    def _dispatch(self):
        try:
            self._dispatch_inner()
        except _Drop:
            self.close_connection = True
        except (ConnectionError, socket.timeout):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _dispatch_inner(self):
        path, _, _query = self.path.partition("?")
        if path.startswith("/_standin/") or path == "/_standin":
            return self._control(path)
        s = self.standin
        body = self._read_body()
        if body is None:
            r = stripe_error(413, "invalid_request_error",
                             "Request body too large: the limit is %d bytes." % MAX_BODY)
            s.note_request(self.headers.get("User-Agent"), self.headers.get("Stripe-Version"))
            s.count("bad_requests")
            return self._finish(r)
        if body == b"\x00bad-length":
            s.note_request(self.headers.get("User-Agent"), self.headers.get("Stripe-Version"))
            s.count("bad_requests")
            return self._finish(stripe_error(400, "invalid_request_error", "Invalid Content-Length header."))
        hdr = self.headers
        version = hdr.get("Stripe-Version")
        limited = s.note_request(hdr.get("User-Agent"), version)

        # 1. auth
        auth = hdr.get("Authorization")
        if not auth:
            s.count("auth_failures")
            return self._finish(stripe_error(
                401, "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the Authorization "
                "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
                "https://stripe.com/docs/api#authentication for details, or we can help at "
                "https://support.stripe.com/."))
        scheme, _, presented = auth.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            s.count("auth_failures")
            return self._finish(stripe_error(
                401, "invalid_request_error",
                "Invalid Authorization header: use Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."))
        if not s.key_ok(presented):
            s.count("auth_failures")
            return self._finish(stripe_error(
                401, "invalid_request_error", "Invalid API Key provided: " + mask_key(presented)))

        # 2. routing
        si = None
        if path == "/v1/billing/meter_events":
            endpoint = "meter"
        else:
            m = RE_USAGE_PATH.match(path)
            if m:
                endpoint, si = "usage", urllib.parse.unquote(m.group(1))
            else:
                endpoint = None
        if endpoint is None or self.command != "POST":
            s.count("bad_requests")
            return self._finish(stripe_error(
                404, "invalid_request_error",
                "Unrecognized request URL (%s: %s). Please see https://stripe.com/docs or we can help at "
                "https://support.stripe.com/." % (self.command, path)))

        if version is not None and not RE_VERSION.match(version):
            s.count("bad_requests")
            return self._finish(stripe_error(
                400, "invalid_request_error", "Invalid Stripe API version: %s" % version))

        # 3. rate limit (never stored, nothing processed)
        if limited:
            return self._finish(stripe_error(
                429, "invalid_request_error",
                "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
                code="rate_limit"))

        # parse the form (errors answered after the idempotency/fault steps as validation errors)
        params, perr = self._parse_form(body)
        track = None
        if params is not None:
            d = dict(params)
            if endpoint == "meter":
                if "payload[stripe_customer_id]" in d and "event_name" in d:
                    track = ("meter", d["payload[stripe_customer_id]"], d["event_name"])
            else:
                track = ("si", si)
        if track:
            s.enter(track)
            self._track = track
        try:
            return self._api(endpoint, si, path, body, params, perr, version)
        finally:
            self._release()

    def _parse_form(self, body):
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            return None, stripe_error(
                400, "invalid_request_error",
                "Invalid request: Content-Type must be application/x-www-form-urlencoded (got %r)." % ctype[:100],
                store=False)
        try:
            text = body.decode("utf-8")
            params = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=True,
                                            encoding="utf-8", errors="strict") if text else []
        except ValueError as e:
            return None, stripe_error(400, "invalid_request_error",
                                      "Invalid request: could not parse the form body (%s)." % str(e)[:200],
                                      store=False)
        return params, None

    def _api(self, endpoint, si, path, body, params, perr, version):
        s = self.standin
        hdr = self.headers
        pre, drawn, consumed = s.draw_fault()
        if pre:
            s.count_fault(pre)
            if pre == "409":
                return self._finish(stripe_error(
                    409, "idempotency_error",
                    "There is currently another in-progress request using this Idempotency Key (that probably "
                    "means you submitted twice, and the other request is still going through). Please try "
                    "again later.", code="idempotency_key_in_use"))
            if pre == "429_lock":
                return self._finish(stripe_error(
                    429, "invalid_request_error",
                    "This object cannot be accessed right now because another API request or Stripe process "
                    "is currently accessing it. If you see this error intermittently, retry the request.",
                    code="lock_timeout"))
            return self._finish(stripe_error(
                429, "invalid_request_error",
                "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
                code="rate_limit", should_retry=True if pre == "429_retry" else None))

        key = hdr.get("Idempotency-Key")
        if key is not None:
            if not key or len(key) > 255:
                s.count("bad_requests")
                return self._finish(stripe_error(
                    400, "invalid_request_error",
                    "Invalid Idempotency-Key: it must be 1 to 255 characters long (got %d)." % len(key)))
            fp = _fingerprint(self.command, path, params, body)
            state, entry = s.idem_begin(key, fp)
            if state == "replay":
                return self._finish_raw(entry["status"], entry["body"],
                                        entry["headers"] + [("Idempotent-Replayed", "true")])
            if state == "mismatch":
                return self._finish(stripe_error(
                    400, "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters they were first "
                    "used with. Try using a key other than '%s' if you meant to execute a different request."
                    % key))
            if state == "busy":
                return self._finish(stripe_error(
                    409, "idempotency_error",
                    "There is currently another in-progress request using this Idempotency Key (that probably "
                    "means you submitted twice, and the other request is still going through). Please try "
                    "again later.", code="idempotency_key_in_use"))

        reply = None
        try:
            fault = drawn if consumed else s.take_proc_fault(drawn)
            if fault:
                s.count_fault(fault)
            if fault == "500_before":
                reply = self._err500()
            else:
                if s.latency_s:
                    time.sleep(s.latency_s)
                if perr is not None:
                    reply = perr
                elif endpoint == "meter":
                    reply = self._meter_event(params, key)
                else:
                    reply = self._usage_record(si, params, key, version)
                if reply.status == 400 and reply.store is False:
                    s.count("bad_requests")
                if fault == "500_after":
                    reply = self._err500()
            rid = s.next_request_id()
            body_bytes = json.dumps(reply.body).encode()
            headers = reply.headers + [("Request-Id", rid)]
            if fault == "drop_after":
                if key is not None:
                    s.idem_finish(key, reply, body_bytes, headers)
                    key = None
                s.count("dropped")
                raise _Drop()
            if fault == "slow":
                self._release()
                s._stopping.wait(s.faults["slow_s"])
            if key is not None:
                s.idem_finish(key, reply, body_bytes, headers)
                key = None
            s.count_status(reply.status)
            self._send(reply.status, body_bytes, headers)
        finally:
            if key is not None:  # an exception before finishing: forget the key
                s.idem_finish(key, None, None, None)

    def _err500(self):
        return stripe_error(500, "api_error",
                            "Sorry, something went wrong. We've already been notified of the problem, but if you "
                            "need any help, you can reach us at support.stripe.com/contact.")

    def _finish(self, reply):
        """Answers a reply that is not stored under an idempotency key."""
        self.standin.count_status(reply.status)
        self._send(reply.status, json.dumps(reply.body).encode(), reply.headers)

    def _finish_raw(self, status, body, headers):
        self.standin.count_status(status)
        self._send(status, body, headers)

    # -- endpoints ---------------------------------------------------------
    @staticmethod
    def _check_params(params, allowed):
        seen = {}
        for k, v in params:
            if k not in allowed:
                return None, stripe_error(400, "invalid_request_error", "Received unknown parameter: %s" % k,
                                          code="parameter_unknown", param=k, store=False)
            if k in seen:
                return None, stripe_error(400, "invalid_request_error", "Received duplicate parameter: %s" % k,
                                          param=k, store=False)
            if v == "":
                return None, stripe_error(
                    400, "invalid_request_error",
                    "You passed an empty string for '%s'. We assume empty values are an attempt to unset a "
                    "parameter; however '%s' cannot be unset. You should remove '%s' from your request or "
                    "supply a non-empty value." % (k, k, k), code="parameter_invalid_empty", param=k, store=False)
            seen[k] = v
        return seen, None

    @staticmethod
    def _missing(name):
        return stripe_error(400, "invalid_request_error", "Missing required param: %s." % name,
                            code="parameter_missing", param=name, store=False)

    @staticmethod
    def _timestamp(p, now, allow_now=False):
        ts = p.get("timestamp")
        if ts is None or (allow_now and ts == "now"):
            return now, None
        if not RE_INT.match(ts) or len(ts) > 18:
            return None, stripe_error(400, "invalid_request_error", "Invalid integer: %s" % ts[:50],
                                      code="parameter_invalid_integer", param="timestamp", store=False)
        t = int(ts)
        if t < now - PAST_WINDOW_S:
            return None, stripe_error(
                400, "invalid_request_error",
                "The timestamp %d is too far in the past: it must be within the past 35 days." % t,
                code="timestamp_too_far_in_past", param="timestamp", store=False)
        if t > now + FUTURE_WINDOW_S:
            return None, stripe_error(
                400, "invalid_request_error",
                "The timestamp %d is in the future: it can be at most 5 minutes in the future." % t,
                code="timestamp_in_future", param="timestamp", store=False)
        return t, None

    def _meter_event(self, params, idem_key):
        s = self.standin
        p, err = self._check_params(params, METER_PARAMS)
        if err:
            return err
        for name in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
            if name not in p:
                return self._missing(name)
        name = p["event_name"]
        if len(name) > 100:
            return stripe_error(400, "invalid_request_error",
                                "Invalid string: %s...; must be at most 100 characters" % name[:20],
                                param="event_name", store=False)
        ident = p.get("identifier")
        if ident is not None and len(ident) > 100:
            return stripe_error(400, "invalid_request_error",
                                "Invalid string: %s...; must be at most 100 characters" % ident[:20],
                                param="identifier", store=False)
        value = p["payload[value]"]
        if not RE_UINT.match(value):
            return stripe_error(400, "invalid_request_error",
                                "Invalid payload[value]: must be a whole number, got %r." % value[:50],
                                param="payload[value]", store=False)
        now = int(time.time())
        ts, err = self._timestamp(p, now)
        if err:
            return err
        if name not in s.meters:
            return stripe_error(400, "invalid_request_error",
                                "No active meter was found for event_name '%s'." % name, param="event_name",
                                store=False)
        cus = p["payload[stripe_customer_id]"]
        if not s.customer_known(cus):
            return stripe_error(400, "invalid_request_error", "No such customer: '%s'" % cus,
                                code="resource_missing", param="payload[stripe_customer_id]")
        if ident is None:
            ident = uuid.uuid4().hex
        ev = {"kind": "meter_event", "identifier": ident, "customer": cus, "event_name": name,
              "value": int(value), "timestamp": ts, "created": now, "idempotency_key": idem_key}
        if not s.accept_meter_event(ev):
            return stripe_error(400, "invalid_request_error",
                                "An event already exists with identifier %s." % ident,
                                param="identifier", should_retry=False)
        return Reply(200, {"object": "billing.meter_event", "created": now, "event_name": name,
                           "identifier": ident, "livemode": False,
                           "payload": {"stripe_customer_id": cus, "value": value}, "timestamp": ts})

    def _usage_record(self, si, params, idem_key, version):
        s = self.standin
        eff = version or s.account_version
        if eff[:10] >= USAGE_RECORDS_REMOVED:
            return stripe_error(
                400, "invalid_request_error",
                "Usage records were removed in Stripe API version 2025-03-31.basil; this request uses API "
                "version %s. Report usage with billing meter events (POST /v1/billing/meter_events) instead."
                % eff, store=False)
        p, err = self._check_params(params, USAGE_PARAMS)
        if err:
            return err
        if "quantity" not in p:
            return self._missing("quantity")
        q = p["quantity"]
        if not RE_UINT.match(q) or len(q) > 18:
            return stripe_error(400, "invalid_request_error", "Invalid integer: %s" % q[:50],
                                code="parameter_invalid_integer", param="quantity", store=False)
        action = p.get("action", "increment")
        if action not in ("increment", "set"):
            return stripe_error(400, "invalid_request_error",
                                "Invalid action: must be one of increment or set", param="action", store=False)
        now = int(time.time())
        ts, err = self._timestamp(p, now, allow_now=True)
        if err:
            return err
        cus = s.subscription_items.get(si)
        if cus is None:
            return stripe_error(404, "invalid_request_error", "No such subscription item: '%s'" % si,
                                code="resource_missing", param="subscription_item")
        rid = "mbur_" + uuid.uuid4().hex[:24]
        rec = {"kind": "usage_record", "id": rid, "subscription_item": si, "customer": cus,
               "value": int(q), "action": action, "timestamp": ts, "created": now,
               "idempotency_key": idem_key}
        s.accept_usage_record(rec)
        return Reply(200, {"id": rid, "object": "usage_record", "livemode": False, "quantity": int(q),
                           "subscription_item": si, "timestamp": ts})

    # -- control API ---------------------------------------------------------
    def _control(self, path):
        s = self.standin
        body = self._read_body()
        if body is None:
            return self._json(413, {"error": "body too large"})
        route = path[len("/_standin/"):].rstrip("/")
        m = self.command
        try:
            data = json.loads(body) if body.strip() else {}
        except ValueError as e:
            return self._json(400, {"error": "invalid JSON: %s" % e})
        if m == "POST" and not isinstance(data, dict):
            return self._json(400, {"error": "expected a JSON object"})
        try:
            if route == "config" and m == "POST":
                return self._json(200, s.configure(data))
            if route == "config" and m == "GET":
                return self._json(200, s.config())
            if route == "ledger" and m == "GET":
                return self._json(200, s.ledger())
            if route == "events" and m == "GET":
                return self._json(200, s.events())
            if route == "stats" and m == "GET":
                return self._json(200, s.stats())
            if route == "reset" and m == "POST":
                return self._json(200, s.reset(config=bool(data.get("config"))))
            if route == "health" and m == "GET":
                return self._json(200, {"ok": True})
        except ValueError as e:
            return self._json(400, {"error": str(e)})
        return self._json(404, {"error": "unknown control route %s %s" % (m, path)})


def _parse_items(text):
    out = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        si, sep, cus = part.partition("=")
        if not sep or not si or not cus:
            raise argparse.ArgumentTypeError("expected si_1=cus_a,si_2=cus_b, got %r" % part)
        out[si] = cus
    return out


def _csv(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv=None):
    ap = argparse.ArgumentParser(description="Stripe stand-in for Tally's tests.")
    ap.add_argument("--port", type=int, required=True, help="0 picks a free port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--api-key", default=None,
                    help="the secret key clients must present (default: $STRIPE_STANDIN_API_KEY)")
    ap.add_argument("--customers", type=_csv, default=[], help="cus_a,cus_b ('*' accepts any cus_...)")
    ap.add_argument("--meters", type=_csv, default=["api_calls"], help="meter event names (default api_calls)")
    ap.add_argument("--subscription-items", type=_parse_items, default={}, help="si_1=cus_a,si_2=cus_b")
    ap.add_argument("--account-version", default=DEFAULT_ACCOUNT_VERSION,
                    help="account's pinned API version (default %s)" % DEFAULT_ACCOUNT_VERSION)
    ap.add_argument("--seed", type=int, default=None, help="seed of the fault RNG")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args(argv)
    key = args.api_key or os.environ.get("STRIPE_STANDIN_API_KEY")
    if not key:
        ap.error("--api-key (or $STRIPE_STANDIN_API_KEY) is required")
    if not RE_VERSION.match(args.account_version):
        ap.error("--account-version must look like 2025-02-24.acacia")
    s = StandIn(api_key=key, host=args.host, port=args.port, customers=args.customers, meters=args.meters,
                subscription_items=args.subscription_items, account_version=args.account_version,
                seed=args.seed, verbose=args.verbose)
    del key
    args.api_key = None
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    host, port = s.start()
    sys.stdout.write("stripe-standin listening on http://%s:%d\n" % (host, port))
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
