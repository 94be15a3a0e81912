"""Unit tests, on plain CPython: python3 -m unittest"""

import unittest

import sluice_sdk as sluice

import app


def message(body: bytes) -> sluice.Message:
    return sluice.Message("m1", "{{channel}}", "command", [("content-type", "application/json")], body, 1)


class MapperTest(unittest.TestCase):
    def test_maps_a_wire_message_to_a_named_request(self):
        request = app.{{Type}}().to_request(message(b'{"name": "Ann"}'))
        self.assertEqual(request.name, "{{Type}}")
        self.assertEqual(request.parse(), {"name": "Ann"})

    def test_rejects_what_is_not_its_wire_format(self):
        for body in (b"not json", b'{"name": ""}', b'{"nom": "x"}'):
            with self.assertRaises(sluice.Rejected):
                app.{{Type}}().to_request(message(body))

    def test_round_trips_a_posted_request(self):
        out = app.{{Type}}().to_message(sluice.Request.json("{{Type}}", {"name": "Bo"}))
        self.assertEqual(out.body, b'{"name":"Bo"}')


if __name__ == "__main__":
    unittest.main()
