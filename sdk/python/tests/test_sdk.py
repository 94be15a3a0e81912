"""Unit tests of the Python SDK on plain CPython (no component, no host):
python3 -m unittest discover -s sdk/python/tests (scripts/test runs it)."""

import os
import sys
import unittest
from dataclasses import dataclass, field
from typing import Dict, List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import sluice_sdk as sluice  # noqa: E402
from sluice_sdk import Describe, Permanent, Retryable  # noqa: E402
from sluice_sdk.testing import TestHost  # noqa: E402


@dataclass
class Item:
    sku: str
    qty: int = 1


@dataclass
class Order:
    id: int
    items: List[Item]
    note: Optional[str] = None
    meta: Dict[str, float] = field(default_factory=dict)


class DecodeTest(unittest.TestCase):
    def test_nested_dataclasses_defaults_and_unknown_fields(self):
        o = sluice.decode(Order, {"id": 1, "items": [{"sku": "a"}], "extra": True, "meta": {"w": 2}})
        self.assertEqual(o, Order(1, [Item("a", 1)], None, {"w": 2.0}))

    def test_errors_name_the_path_and_the_value(self):
        cases = [
            ({"items": []}, "missing field `id`"),
            ({"id": "1", "items": []}, "expected an integer at id, got string '1'"),
            ({"id": True, "items": []}, "expected an integer at id, got boolean `true`"),
            ({"id": 1, "items": [{"sku": 5}]}, "expected a string at items[0].sku, got number `5`"),
            ({"id": 1, "items": {}}, "expected a list at items, got an object"),
            ([], "expected an object, got a list"),
        ]
        for value, message in cases:
            with self.assertRaises(ValueError) as e:
                sluice.decode(Order, value)
            self.assertIn(message, str(e.exception), value)

    def test_long_strings_are_cut_in_errors(self):
        with self.assertRaises(ValueError) as e:
            sluice.decode(int, "x" * 10_000)
        self.assertLess(len(str(e.exception)), 100)


def echo(ctx: sluice.Context, req: Order):
    ctx.progress(150, "over the top")
    ctx.state.set("last", req.id)
    ctx.post("orders.seen", {"id": req.id}, name="Seen", event=True, headers=[("k", "v")], delay_ms=5)
    if req.note == "fail":
        raise Retryable("asked to")
    if req.note == "boom":
        raise KeyError("no such thing")
    if req.note == "continue":
        return sluice.continue_at("2", delay_ms=10)
    if req.note == "nan":
        return {"x": float("nan")}
    return {"id": req.id}


Echo = sluice.export_handler(echo, Describe.handler("echo", "1.0.0").channel("orders"))


class HandlerTest(unittest.TestCase):
    def test_success_commits_every_effect(self):
        host = TestHost()
        out = host.handle(Echo, {"id": 7, "items": []})
        self.assertEqual(out, sluice.done({"id": 7}))
        self.assertEqual(out.result, '{"id":7}')
        self.assertEqual(host.state("last"), 7)
        self.assertEqual(host.progress.percent, 100, "clamped")
        p = host.posts[0]
        self.assertEqual((p.channel, p.name, p.kind, p.headers, p.delay_ms), ("orders.seen", "Seen", "event", [("k", "v")], 5))

    def test_a_failed_call_commits_nothing(self):
        host = TestHost()
        host.set_state("last", 1)
        with self.assertRaises(Retryable):
            host.handle(Echo, {"id": 2, "items": [], "note": "fail"})
        self.assertEqual(host.state("last"), 1)
        self.assertEqual(host.posts, [])
        self.assertIsNone(host.progress)

    def test_an_unexpected_exception_is_retryable_with_its_type_and_traceback(self):
        with self.assertRaises(Retryable) as e:
            TestHost().handle(Echo, {"id": 2, "items": [], "note": "boom"})
        self.assertTrue(e.exception.message.startswith("unhandled KeyError: 'no such thing'"))
        self.assertIn("Traceback", e.exception.message)

    def test_bad_bodies_are_permanent(self):
        with self.assertRaises(Permanent) as e:
            TestHost().handle_json(Echo, "{not json")
        self.assertIn("request is not valid JSON", e.exception.message)
        with self.assertRaises(Permanent) as e:
            TestHost().handle(Echo, {"id": 1})
        self.assertEqual(e.exception.message, "request is not a valid Order: missing field `items`")

    def test_results_that_are_not_json_are_permanent(self):
        with self.assertRaises(Permanent) as e:
            TestHost().handle(Echo, {"id": 1, "items": [], "note": "nan"})
        self.assertIn("JSON error", e.exception.message)

    def test_continue_and_cursor(self):
        host = TestHost()
        out = host.handle(Echo, {"id": 1, "items": [], "note": "continue"})
        self.assertEqual(out, sluice.Continue("2", 10))

    def test_state_reads_see_the_calls_own_writes_and_deletes(self):
        def h(ctx, req):
            ctx.state.set("a", {"n": 1})
            assert ctx.state.get("a") == {"n": 1}
            ctx.state.delete("b")
            assert ctx.state.get("b", "gone") == "gone"
            ctx.state.set_raw("raw", b"\xff")
            assert ctx.state.get_raw("raw") == b"\xff"

        H = sluice.export_handler(h, Describe.handler("s", "1").channel("s"))
        host = TestHost().set_state("b", 2)
        self.assertEqual(host.handle(H, {}), sluice.Done(None))
        self.assertEqual(host.state("a"), {"n": 1})
        self.assertIsNone(host.state("b"))

    def test_adds_sum_into_a_json_integer_and_a_bad_add_is_permanent(self):
        def h(ctx, delta):
            ctx.state.add("hits", delta)
            ctx.state.add("hits", delta)
            ctx.post("out", delta)

        H = sluice.export_handler(h, Describe.handler("t", "1").channel("t"))
        host = TestHost()
        host.handle(H, 3)
        self.assertEqual(host.state("hits"), 6)
        host.handle(H, -10)
        self.assertEqual(host.committed["hits"], b"-14")
        for start, delta in [(2**63 - 1, 1), ("7", 1), (1.5, 1)]:
            host = TestHost().set_state("hits", start)
            with self.assertRaises(Permanent) as e:
                host.handle(H, delta)
            self.assertIn("state-add on key 'hits'", str(e.exception))
            self.assertEqual(host.state("hits"), start)
            self.assertEqual(host.posts, [])
        with self.assertRaises(Permanent):
            TestHost().handle(H, 2**63)
        with self.assertRaises(Permanent):  # a bug a retry would repeat
            TestHost().handle(sluice.export_handler(
                lambda ctx, req: ctx.state.add("k", "1"), Describe.handler("t", "1").channel("t")
            ), {})

    def test_state_that_is_not_json_is_permanent(self):
        def h(ctx, req):
            return ctx.state.get("raw")

        H = sluice.export_handler(h, Describe.handler("s", "1").channel("s"))
        host = TestHost()
        host.committed["raw"] = b"\xff\xfe"
        with self.assertRaises(Permanent):
            host.handle(H, {})

    def test_a_class_handler_with_a_request_attribute(self):
        class Count:
            describe = Describe.handler("count", "2.0.0").channel("c")
            Request = Item

            def handle(self, ctx, req):
                return {"sku": req.sku, "attempt": ctx.attempt, "h": ctx.header("X-Key")}

        host = TestHost(attempt=3)
        host.headers = [("x-key", "v")]
        H = sluice.export_handler(Count)
        self.assertEqual(host.handle(H, {"sku": "z"}).result, '{"sku":"z","attempt":3,"h":"v"}')
        # TestHost also takes the class itself.
        self.assertEqual(host.handle(Count, {"sku": "y"}).result, '{"sku":"y","attempt":3,"h":"v"}')

    def test_export_errors_are_clear(self):
        with self.assertRaises(TypeError) as e:
            sluice.export_handler(echo)
        self.assertIn("has no Describe", str(e.exception))
        with self.assertRaises(TypeError):
            sluice.export_handler(echo, Describe.mapper("m", "1"))
        with self.assertRaises(ValueError):
            Describe.handler("x", "1").timeout_ms(-1)

    def test_effects_outside_a_call_say_where_they_work(self):
        ctx = sluice.Context("j", "m", "c", 1, [], None, "c")
        with self.assertRaises(RuntimeError) as e:
            ctx.post("x", {})
        self.assertIn("TestHost", str(e.exception))


class MapperDataTest(unittest.TestCase):
    def test_message_json_rejects_with_a_reason(self):
        m = sluice.Message("id", "c", "command", [("Content-Type", "x")], b"{bad", 1)
        with self.assertRaises(sluice.Rejected) as e:
            m.json()
        self.assertIn("body is not valid JSON", e.exception.reason)
        self.assertEqual(m.header("content-type"), "x")
        m.body = b'{"sku": 1}'
        with self.assertRaises(sluice.Rejected) as e:
            m.json(Item)
        self.assertIn("body is not a valid Item", e.exception.reason)

    def test_outgoing_json(self):
        o = sluice.Outgoing.json({"a": "é"}).header("k", "v")
        self.assertEqual(o.body, '{"a":"é"}'.encode())
        self.assertEqual(o.headers, [("content-type", "application/json"), ("k", "v")])


if __name__ == "__main__":
    unittest.main()
