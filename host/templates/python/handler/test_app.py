"""Unit tests, on plain CPython: python3 -m unittest"""

import unittest

import sluice_sdk as sluice
from sluice_sdk.testing import TestHost

import app


class HandlerTest(unittest.TestCase):
    def test_greets_counts_and_posts(self):
        host = TestHost()
        outcome = host.handle(app.Handler, {"name": "Ann"})
        self.assertEqual(outcome, sluice.done({"greeting": "hello Ann", "seen": 1}))
        self.assertEqual(host.state("seen"), 1)
        self.assertEqual(host.posts[0].channel, "{{channel}}.done")

    def test_an_empty_name_is_permanent_and_commits_nothing(self):
        host = TestHost()
        with self.assertRaises(sluice.Permanent):
            host.handle(app.Handler, {"name": " "})
        self.assertIsNone(host.state("seen"))
        self.assertEqual(host.posts, [])


if __name__ == "__main__":
    unittest.main()
