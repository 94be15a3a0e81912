"""Unit tests of py-invoice on plain CPython: python3 -m unittest (with the
SDK on PYTHONPATH, as scripts/test runs it)."""

import unittest

import sluice_sdk as sluice
from sluice_sdk.testing import TestHost

import app

ORDER = {"customer": "ann", "lines": [{"sku": "a", "quantity": 2, "unit_cents": 150}]}


class InvoiceTest(unittest.TestCase):
    def test_totals_numbers_and_posts(self):
        host = TestHost(channel="invoice.create")
        self.assertEqual(host.handle(app.Handler, ORDER), sluice.done({"number": 1, "total_cents": 300}))
        self.assertEqual(host.handle(app.Handler, ORDER), sluice.done({"number": 2, "total_cents": 300}))
        self.assertEqual(host.state("last_number"), 2)
        self.assertEqual(host.state("revenue_cents"), 600)
        self.assertEqual([p.channel for p in host.posts], ["invoice.created"] * 2)
        self.assertEqual(host.posts[0].kind, "event")
        self.assertEqual(host.posts[0].json()["total_cents"], 300)

    def test_a_bad_quantity_is_permanent_and_commits_nothing(self):
        host = TestHost()
        bad = {"customer": "ann", "lines": [{"sku": "a", "quantity": 0, "unit_cents": 1}]}
        with self.assertRaises(sluice.Permanent):
            host.handle(app.Handler, bad)
        self.assertEqual(host.posts, [])
        self.assertIsNone(host.state("last_number"))

    def test_a_body_missing_a_field_is_permanent(self):
        with self.assertRaises(sluice.Permanent) as e:
            TestHost().handle(app.Handler, {"customer": "ann", "lines": [{"sku": "a"}]})
        self.assertIn("missing field `lines[0].quantity`", e.exception.message)

    def test_flaky_customers_fail_once_then_succeed(self):
        host = TestHost()
        order = dict(ORDER, customer="flaky")
        with self.assertRaises(sluice.Retryable):
            host.handle(app.Handler, order)
        host.attempt = 2
        self.assertEqual(host.handle(app.Handler, order).result, '{"number":1,"total_cents":300}')


if __name__ == "__main__":
    unittest.main()
